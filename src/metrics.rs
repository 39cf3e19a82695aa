//! The daemon's Prometheus metrics: what is measured as it happens (Instance start durations,
//! Gateway tool calls by outcome and their latency) lives here; what the snapshot already knows
//! (up, restarts, memory, CPU, busy sessions, pending permissions) is read from it at each scrape.
//!
//! Uses `prometheus-client` for the exposition format. Recording is a few atomic operations and
//! never blocks; [`Metrics::encode`] builds the text for one scrape. No IO here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::snapshot::{InstanceState, Snapshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabel {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 50 ms to about 27 minutes.
fn start_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Seconds, from 0.1 ms to about 24 minutes.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 3.0, 16))
}

/// The measurements the daemon takes as things happen. Cheap to clone (shared counters).
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    starts: Histograms<ProjectLabel>,
    tool_calls: Family<ToolLabels, Counter>,
    tool_seconds: Histograms<ToolLabel>,
    session_lists: Family<AnswerLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            starts: Family::new_with_constructor(start_buckets),
            tool_calls: Family::default(),
            tool_seconds: Family::new_with_constructor(call_buckets),
            session_lists: Family::default(),
        }
    }
}

impl Metrics {
    /// A launch of `project` became ready after `seconds`.
    pub(crate) fn started(&self, project: &str, seconds: f64) {
        self.starts
            .get_or_create(&ProjectLabel {
                project: project.to_owned(),
            })
            .observe(seconds);
    }

    /// A Gateway tool call ended with `outcome` (`ok` or `error`) after `seconds`.
    pub(crate) fn tool_call(&self, tool: &str, outcome: &str, seconds: f64) {
        self.tool_calls
            .get_or_create(&ToolLabels {
                tool: tool.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.tool_seconds
            .get_or_create(&ToolLabel {
                tool: tool.to_owned(),
            })
            .observe(seconds);
    }

    /// A Gateway session list was answered: `kept` (the Instance's last answer, still current by
    /// its event stream) or `asked` (from the Instance).
    pub(crate) fn session_list(&self, answer: &str) {
        self.session_lists
            .get_or_create(&AnswerLabel {
                answer: answer.to_owned(),
            })
            .inc();
    }

    /// The text exposition of everything, with the per-Project values from `snapshot`.
    pub(crate) fn encode(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("opencode_manager");
        let up = Family::<ProjectLabel, Gauge>::default();
        let restarts = Family::<ProjectLabel, Counter>::default();
        let memory = Family::<ProjectLabel, Gauge>::default();
        let cpu = Family::<ProjectLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let busy = Family::<ProjectLabel, Gauge>::default();
        let permissions = Family::<ProjectLabel, Gauge>::default();
        for (name, view) in &snapshot.projects {
            let label = ProjectLabel {
                project: name.clone(),
            };
            let alive = view.pid.is_some()
                && matches!(
                    view.state,
                    InstanceState::Running | InstanceState::Unhealthy
                );
            up.get_or_create(&label).set(i64::from(alive));
            restarts
                .get_or_create(&label)
                .inc_by(u64::from(view.restarts));
            if let Some(bytes) = view.memory_bytes {
                memory
                    .get_or_create(&label)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            if let Some(seconds) = view.cpu_seconds {
                cpu.get_or_create(&label).inc_by(seconds);
            }
            busy.get_or_create(&label)
                .set(i64::try_from(view.busy_sessions.len()).unwrap_or(i64::MAX));
            permissions
                .get_or_create(&label)
                .set(i64::try_from(view.pending_permissions).unwrap_or(i64::MAX));
        }
        registry.register(
            "instance_up",
            "Whether the Project's Instance is running (1) or not (0)",
            up,
        );
        registry.register(
            "restarts",
            "Restarts the Supervisor made since the user last started the Project",
            restarts,
        );
        registry.register(
            "memory_bytes",
            "Memory of the Instance (its cgroup, or its process tree's RSS) at the last probe",
            memory,
        );
        registry.register(
            "cpu_seconds",
            "CPU time the Instance's processes have used, at the last probe",
            cpu,
        );
        registry.register("sessions_busy", "Sessions working at the last probe", busy);
        registry.register(
            "permissions_pending",
            "Permission requests waiting for an answer at the last probe",
            permissions,
        );
        registry.register(
            "start_duration_seconds",
            "Time from a launch's start to its Instance answering its health check",
            self.starts.clone(),
        );
        registry.register(
            "gateway_tool_calls",
            "Gateway tool calls, by tool and outcome",
            self.tool_calls.clone(),
        );
        registry.register(
            "gateway_tool_call_seconds",
            "Gateway tool call latency, by tool",
            self.tool_seconds.clone(),
        );
        registry.register(
            "gateway_session_lists",
            "Gateway session lists, by answer: kept (current by the Instance's event stream) or asked",
            self.session_lists.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ProjectView;
    use crate::state::Desired;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let metrics = Metrics::default();
        metrics.started("a", 1.5);
        metrics.tool_call("opencode-session-list", "ok", 0.002);
        metrics.tool_call("opencode-session-list", "error", 0.004);
        metrics.session_list("kept");
        let mut snapshot = Snapshot::default();
        let mut view = ProjectView::example(Desired::Running, InstanceState::Running, Some(7));
        view.restarts = 2;
        view.memory_bytes = Some(1024);
        view.cpu_seconds = Some(3.5);
        view.busy_sessions = vec!["ses_1".into()];
        view.pending_permissions = 1;
        snapshot.projects.insert("a".into(), view);
        let text = metrics.encode(&snapshot);
        for line in [
            "opencode_manager_instance_up{project=\"a\"} 1",
            "opencode_manager_restarts_total{project=\"a\"} 2",
            "opencode_manager_memory_bytes{project=\"a\"} 1024",
            "opencode_manager_cpu_seconds_total{project=\"a\"} 3.5",
            "opencode_manager_sessions_busy{project=\"a\"} 1",
            "opencode_manager_permissions_pending{project=\"a\"} 1",
            "opencode_manager_start_duration_seconds_count{project=\"a\"} 1",
            "opencode_manager_gateway_tool_calls_total{tool=\"opencode-session-list\",outcome=\"ok\"} 1",
            "opencode_manager_gateway_tool_calls_total{tool=\"opencode-session-list\",outcome=\"error\"} 1",
            "opencode_manager_gateway_tool_call_seconds_count{tool=\"opencode-session-list\"} 2",
            "opencode_manager_gateway_session_lists_total{answer=\"kept\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
