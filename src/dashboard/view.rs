//! What the dashboard shows, as data: the header (daemon, Gateway, limits, isolation, memory
//! budget) and one row per Project, built from the snapshot. The page renders it as HTML and the
//! live stream sends it as JSON, so the table with JavaScript off and the live one agree.
//!
//! Pure: the clock's readings are arguments.

use serde::Serialize;

use crate::snapshot::{GatewayView, InstanceState, ProjectView, Snapshot};

/// Facts about the daemon that the snapshot does not carry.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Daemon {
    pub version: String,
    pub started_at: String,
    /// `systemd`, `cgroup` or `rlimit`.
    pub limits: String,
    /// Why that mechanism (one sentence).
    pub limits_reason: String,
    /// `landlock ABI 7`, or `none (…)`.
    pub isolation: String,
    pub memory_budget: Option<u64>,
}

/// The whole board at one moment.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Board {
    pub daemon: Daemon,
    pub daemon_uptime_secs: u64,
    pub gateway: Gateway,
    /// Memory of every living Instance, against the budget.
    pub memory_used: u64,
    pub projects: Vec<Row>,
    /// When this board was built (milliseconds since the epoch), so a page can tell how long an
    /// update took to reach the screen.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Gateway {
    pub open: bool,
    pub port: Option<u16>,
    /// `open`, `closed`, `closed by a user`, or why it cannot listen.
    pub state: String,
}

/// One Project.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    pub name: String,
    pub agent: String,
    /// `running`, `starting`, `unhealthy`, `backoff`, `idle`, `stopped`, `failed`.
    pub state: &'static str,
    pub port: Option<u16>,
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub busy_sessions: usize,
    pub pending_permissions: usize,
    pub model: Option<String>,
    pub isolation: Option<String>,
    /// Whether a user wants it running (Start or Stop is offered accordingly).
    pub wanted: bool,
}

/// The board for `snapshot`; `uptime` reads an RFC 3339 start time as seconds until now.
pub(super) fn board(
    snapshot: &Snapshot,
    daemon: &Daemon,
    daemon_uptime_secs: u64,
    at_ms: u64,
    uptime: impl Fn(&str) -> Option<u64>,
) -> Board {
    let projects: Vec<Row> = snapshot
        .projects
        .iter()
        .map(|(name, view)| row(name, view, &uptime))
        .collect();
    let memory_used = snapshot
        .projects
        .values()
        .filter(|v| v.pid.is_some())
        .filter_map(|v| v.memory_bytes)
        .sum();
    Board {
        daemon: daemon.clone(),
        daemon_uptime_secs,
        gateway: gateway(&snapshot.gateway, snapshot.running_count()),
        memory_used,
        projects,
        at_ms,
    }
}

fn gateway(view: &GatewayView, running: usize) -> Gateway {
    let (open, port, state) = match view {
        GatewayView::Running { port, .. } => {
            (true, Some(*port), format!("open, {running} running"))
        }
        GatewayView::Stopped {
            error: Some(error), ..
        } => (false, None, error.clone()),
        GatewayView::Stopped { by_user: true, .. } => (false, None, "closed by a user".into()),
        GatewayView::Stopped { .. } | GatewayView::NotStarted => (false, None, "closed".into()),
    };
    Gateway { open, port, state }
}

pub(super) fn row(name: &str, view: &ProjectView, uptime: impl Fn(&str) -> Option<u64>) -> Row {
    let alive = view.pid.is_some();
    Row {
        name: name.to_owned(),
        agent: view.agent.to_string(),
        state: view.state.word(),
        port: view.port,
        pid: view.pid,
        started_at: view.started_at.clone(),
        uptime_secs: view
            .started_at
            .as_deref()
            .filter(|_| alive)
            .and_then(uptime),
        restarts: view.restarts,
        last_exit: view.last_exit.clone(),
        last_error: view
            .last_error
            .clone()
            .filter(|_| view.state == InstanceState::Failed),
        memory_bytes: view.memory_bytes,
        memory_limit: view.memory_limit,
        cpu_percent: view.cpu_percent,
        busy_sessions: view.busy_sessions.len(),
        pending_permissions: view.pending_permissions,
        model: view.provider.as_ref().and_then(|p| p.model.clone()),
        isolation: view.isolation.clone(),
        wanted: view.desired == crate::state::Desired::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Desired;

    fn daemon() -> Daemon {
        Daemon {
            version: "0.1.0".into(),
            started_at: "2026-11-30T10:00:00Z".into(),
            limits: "cgroup".into(),
            limits_reason: "cgroup v1 is writable".into(),
            isolation: "landlock ABI 7".into(),
            memory_budget: Some(1 << 30),
        }
    }

    #[test]
    fn a_board_has_one_row_per_project_and_counts_living_memory() {
        let mut snapshot = Snapshot::default();
        let mut a = ProjectView::example(Desired::Running, InstanceState::Running, Some(7));
        a.memory_bytes = Some(100);
        a.started_at = Some("2026-11-30T10:00:00Z".into());
        let mut b = ProjectView::example(Desired::Running, InstanceState::Failed, None);
        b.memory_bytes = Some(50);
        b.last_error = Some("5 failures".into());
        snapshot.projects.insert("a".into(), a);
        snapshot.projects.insert("b".into(), b);
        snapshot.gateway = GatewayView::Stopped {
            by_user: true,
            error: None,
        };
        let board = board(&snapshot, &daemon(), 60, 1, |_| Some(42));
        assert_eq!(board.memory_used, 100, "only living instances count");
        assert_eq!(board.gateway.state, "closed by a user");
        let names: Vec<&str> = board.projects.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(board.projects[0].uptime_secs, Some(42));
        assert_eq!(board.projects[0].state, "running");
        assert_eq!(board.projects[1].uptime_secs, None, "not alive");
        assert_eq!(board.projects[1].last_error.as_deref(), Some("5 failures"));
    }
}
