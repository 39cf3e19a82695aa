//! The one published view of everything the daemon runs: every Project's wish, Instance state,
//! process, port, supervision counters and last observations, and the Gateway's state.
//!
//! The Supervisor publishes the Projects and the Gateway task publishes its own part, each on the
//! same `tokio::sync::watch` channel, and nobody else writes it. `status`, `list`, `mcp-status`,
//! the Gateway's routing and the dashboard read it (and can stream every change) without touching
//! the state file or `/proc`. Pure data: no IO, no clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::state::Desired;

/// Everything, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub projects: BTreeMap<String, ProjectView>,
    pub gateway: GatewayView,
    /// Counts the starts and restarts users asked for: the Gateway reopens after a user closed it
    /// when this grows.
    pub user_starts: u64,
    /// Grows with every change the Supervisor publishes.
    pub revision: u64,
    /// The `revision` the Gateway has acted on (its servers file written, opened or closed).
    pub gateway_seen: u64,
}

impl Snapshot {
    /// Whether the Gateway has something to serve: a Project the user wants running that has not
    /// failed for good (running, starting, restarting, parked, or between a crash and its restart),
    /// or any living Instance.
    pub(crate) fn gateway_wanted(&self) -> bool {
        self.projects.values().any(|p| {
            p.pid.is_some() || (p.desired == Desired::Running && p.state != InstanceState::Failed)
        })
    }

    /// Whether the Gateway has caught up with the Projects: it has seen every user start, and it
    /// is open while wanted (unless a user closed it or it cannot listen), closed otherwise.
    pub(crate) fn gateway_settled(&self) -> bool {
        if self.gateway_seen != self.revision {
            return false;
        }
        let wanted = self.gateway_wanted();
        match &self.gateway {
            GatewayView::Running { .. } => wanted,
            GatewayView::Stopped { by_user: true, .. }
            | GatewayView::Stopped { error: Some(_), .. } => true,
            GatewayView::Stopped { .. } | GatewayView::NotStarted => !wanted,
        }
    }

    /// How many Projects have a living Instance process.
    pub(crate) fn running_count(&self) -> usize {
        self.projects.values().filter(|p| p.pid.is_some()).count()
    }
}

/// What the Supervisor knows of one Project.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectView {
    pub desired: Desired,
    pub state: InstanceState,
    /// The Instance's process while it is alive.
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// When the current Instance became ready (RFC 3339).
    pub started_at: Option<String>,
    pub restarts: u32,
    /// How the previous Instance ended, when known.
    pub last_exit: Option<String>,
    /// Why the last start failed, or why the Supervisor gave up.
    pub last_error: Option<String>,
    /// Memory of the Instance's process tree (or cgroup) at the last sample.
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    /// CPU time the Instance's living processes have used, at the last probe.
    pub cpu_seconds: Option<f64>,
    /// Share of one CPU used between the last two probes, in percent.
    pub cpu_percent: Option<f64>,
    /// Sessions the last good probe found working.
    pub busy_sessions: Vec<String>,
    /// Permission requests waiting for an answer, at the last probe.
    pub pending_permissions: usize,
    /// Sessions that were busy when the Instance last crashed or was recycled.
    pub interrupted_sessions: Vec<String>,
    /// `landlock ABI 7`, or `none (<reason>)`.
    pub isolation: Option<String>,
    /// The agent kind it runs.
    pub agent: crate::agent::AgentKind,
    pub provider: Option<ProviderView>,
    /// The last health probe that passed (RFC 3339).
    pub last_health_check: Option<String>,
    pub created_at: String,
    pub git_url: String,
    pub sandbox_dir: PathBuf,
}

/// Which model provider an Instance uses, as it said when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderView {
    pub providers: Vec<String>,
    pub model: Option<String>,
}

/// The state word of a Project's Instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceState {
    Stopped,
    Starting,
    Running,
    /// Running, but its health probes go unanswered.
    Unhealthy,
    /// Crashed; waiting to be started again.
    Backoff,
    /// Parked for lack of activity; a Gateway call starts it again.
    Idle,
    Failed,
}

impl InstanceState {
    /// The word replies and the dashboard show.
    pub(crate) fn word(self) -> &'static str {
        match self {
            InstanceState::Stopped => "stopped",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Backoff => "backoff",
            InstanceState::Idle => "idle",
            InstanceState::Failed => "failed",
        }
    }
}

/// The Gateway's listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum GatewayView {
    #[default]
    NotStarted,
    Running {
        port: u16,
        since: Instant,
        started_at: String,
    },
    Stopped {
        /// Closed by `stop-mcp-tool`: it stays closed until a user starts a Project or restarts it.
        by_user: bool,
        /// Why it could not listen, when that is why it is closed.
        error: Option<String>,
    },
}

#[cfg(test)]
impl ProjectView {
    /// A view with these parts and nothing else, for tests.
    pub(crate) fn example(desired: Desired, state: InstanceState, pid: Option<i32>) -> ProjectView {
        ProjectView {
            desired,
            state,
            pid,
            port: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            memory_bytes: None,
            memory_limit: None,
            cpu_seconds: None,
            cpu_percent: None,
            busy_sessions: Vec::new(),
            pending_permissions: 0,
            interrupted_sessions: Vec::new(),
            isolation: None,
            agent: crate::agent::AgentKind::Opencode,
            provider: None,
            last_health_check: None,
            created_at: String::new(),
            git_url: String::new(),
            sandbox_dir: PathBuf::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_wanted_while_a_project_is_wanted_and_not_failed() {
        let mut snapshot = Snapshot::default();
        assert!(!snapshot.gateway_wanted());
        for (desired, state, pid, wanted) in [
            (Desired::Stopped, InstanceState::Stopped, None, false),
            (Desired::Running, InstanceState::Running, Some(7), true),
            (Desired::Running, InstanceState::Idle, None, true),
            (Desired::Running, InstanceState::Backoff, None, true),
            (Desired::Running, InstanceState::Failed, None, false),
            (Desired::Stopped, InstanceState::Running, Some(7), true),
        ] {
            snapshot
                .projects
                .insert("p".into(), ProjectView::example(desired, state, pid));
            assert_eq!(snapshot.gateway_wanted(), wanted, "{desired:?} {state:?}");
        }
    }
}
