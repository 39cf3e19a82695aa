//! What the Supervisor holds for one Project: the user's wish, the policy's state, the process
//! (as an enum whose variants carry what is valid in them), the last observations, and the
//! commands waiting for a transition to finish; and the [`ProjectView`] it publishes.
//!
//! Pure: no IO, no clock (time is an argument), no channel but the reply senders it carries.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Command, Lease, Started};
use crate::error::OpError;
use crate::instance::confine::Isolation;
use crate::lifecycle::{Instance, Progress};
use crate::policy::{Phase, Supervised};
use crate::project_env::ProjectEnv;
use crate::snapshot::{InstanceState, ProjectView, ProviderView};
use crate::state::{Desired, InstanceRecord, ProjectRecord};

/// A caller waiting for a launch.
pub(super) enum Waiter {
    Start(oneshot::Sender<Result<Started, OpError>>),
    /// A Gateway call for a parked Project.
    Call(oneshot::Sender<Result<Lease, String>>),
}

/// How a launch came about, and who waits for it.
pub(super) struct LaunchPlan {
    /// The `.env` to launch with; `None` takes the cached one.
    pub env: Option<Arc<ProjectEnv>>,
    pub progress: Progress,
    pub waiters: Vec<Waiter>,
    /// A user asked for it (a failure is then reported, not retried).
    pub by_user: bool,
}

/// What follows an Instance's end.
pub(super) enum Then {
    /// A user's stop: nothing.
    Nothing,
    /// A restart or a recycle.
    Relaunch(LaunchPlan),
    /// Parked: started again on demand.
    Park,
    /// The Supervisor gave up.
    GiveUp(String),
}

/// The Project's process, as the Supervisor knows it.
pub(super) enum Process {
    None,
    /// Waiting for memory: the Projects it waits for (parked for it, or starting or stopping)
    /// must finish their transition first.
    Queued {
        plan: LaunchPlan,
        waiting_for: Vec<String>,
    },
    Launching {
        id: String,
        /// When the launch began (for the start-duration metric).
        since: std::time::Instant,
        plan: LaunchPlan,
    },
    Up {
        instance: Instance,
        /// A probe is under way.
        probing: bool,
    },
    Ending {
        instance: Instance,
        then: Then,
        /// Stops waiting to hear whether an Instance was running.
        stops: Vec<oneshot::Sender<bool>>,
    },
}

impl Observed {
    /// Takes a CPU sample made at `at`; the share since the previous one becomes `cpu_percent`.
    pub(super) fn cpu_sample(&mut self, at: std::time::Instant, used: std::time::Duration) {
        if let Some((before, previous)) = self.cpu {
            let elapsed = at.saturating_duration_since(before).as_secs_f64();
            if elapsed > 0.0 && used >= previous {
                self.cpu_percent = Some((used - previous).as_secs_f64() / elapsed * 100.0);
            }
        }
        self.cpu = Some((at, used));
    }
}

/// The last observations of a running Instance.
#[derive(Debug, Clone, Default)]
pub(super) struct Observed {
    pub memory: Option<u64>,
    /// CPU time used, at the last probe, and when that was.
    pub cpu: Option<(std::time::Instant, std::time::Duration)>,
    /// Share of one CPU used between the last two probes, in percent.
    pub cpu_percent: Option<f64>,
    pub busy: Vec<String>,
    pub permissions: usize,
    pub last_health_check: Option<String>,
    /// Sessions busy when the Instance last crashed or was recycled.
    pub interrupted: Vec<String>,
}

pub(super) struct Tracked {
    pub desired: Desired,
    pub supervised: Supervised,
    pub process: Process,
    pub port: Option<u16>,
    pub started_at: Option<String>,
    pub last_exit: Option<String>,
    /// Why the last start failed (while the user has not started it again).
    pub failed: Option<String>,
    pub observed: Observed,
    /// Gateway calls under way on the Instance (their leases live): it is not parked for them.
    pub calls: usize,
    pub isolation: Option<Isolation>,
    /// The agent kind, from the record.
    pub agent: crate::agent::AgentKind,
    /// Which model provider the Instance launched with `launched_env` uses, as it said.
    pub provider: Option<ProviderView>,
    /// The `.env` the last Instance was launched with (the cache swaps in new values when a
    /// `.env` changes, so the same value means the same file).
    pub launched_env: Option<Arc<ProjectEnv>>,
    pub created_at: String,
    pub git_url: String,
    pub sandbox_dir: PathBuf,
    /// Commands that came while a launch or an end was under way, in order.
    pub queued: VecDeque<Command>,
    /// Callers waiting for the next launch the policy asks for (a Gateway call for a parked
    /// Project).
    pub pending: Vec<Waiter>,
}

impl Tracked {
    /// A Project as its record describes it at `now`; its supervision starts from there.
    pub(super) fn from_record(record: &ProjectRecord, now: std::time::Instant) -> Tracked {
        let supervised = match &record.instance {
            InstanceRecord::Idle { .. } => Supervised {
                phase: Phase::Idle { since: now },
                ..Supervised::starting()
            },
            InstanceRecord::Failed { error, .. } => Supervised {
                phase: Phase::Failed {
                    reason: error.clone(),
                },
                ..Supervised::starting()
            },
            _ => Supervised::starting(),
        };
        let (last_exit, failed) = match &record.instance {
            InstanceRecord::Stopped { last_exit } => (last_exit.clone(), None),
            InstanceRecord::Failed { error, .. } => (None, Some(error.clone())),
            _ => (None, None),
        };
        Tracked {
            desired: record.desired,
            supervised,
            process: Process::None,
            port: record.port,
            started_at: None,
            last_exit,
            failed,
            observed: Observed::default(),
            calls: 0,
            isolation: record.isolation.as_deref().map(Isolation::parse),
            agent: record.agent,
            provider: None,
            launched_env: None,
            created_at: record.created_at.clone(),
            git_url: record.git_url.clone(),
            sandbox_dir: record.sandbox_dir.clone(),
            queued: VecDeque::new(),
            pending: Vec::new(),
        }
    }

    /// Whether a launch or an end is under way (commands wait for it).
    pub(super) fn in_transition(&self) -> bool {
        matches!(
            self.process,
            Process::Queued { .. } | Process::Launching { .. } | Process::Ending { .. }
        )
    }

    /// The Instance, while its process lives.
    pub(super) fn instance(&self) -> Option<&Instance> {
        match &self.process {
            Process::Up { instance, .. } | Process::Ending { instance, .. } => Some(instance),
            Process::None | Process::Queued { .. } | Process::Launching { .. } => None,
        }
    }

    /// The published view.
    pub(super) fn view(&self) -> ProjectView {
        let instance = self.instance();
        ProjectView {
            desired: self.desired,
            state: self.state(),
            pid: instance.map(|i| i.proc.pid),
            port: self.port,
            started_at: instance.and(self.started_at.clone()),
            restarts: self.supervised.restarts,
            last_exit: self.last_exit.clone(),
            last_error: self.last_error(),
            memory_bytes: instance.and(self.observed.memory),
            memory_limit: instance.and_then(|i| i.memory_limit),
            cpu_seconds: instance.and(self.observed.cpu.map(|(_, used)| used.as_secs_f64())),
            cpu_percent: instance.and(self.observed.cpu_percent),
            busy_sessions: if instance.is_some() {
                self.observed.busy.clone()
            } else {
                Vec::new()
            },
            pending_permissions: if instance.is_some() {
                self.observed.permissions
            } else {
                0
            },
            interrupted_sessions: self.observed.interrupted.clone(),
            isolation: self.isolation.as_ref().map(Isolation::describe),
            agent: self.agent,
            provider: instance.and(self.provider.clone()),
            last_health_check: instance.and(self.observed.last_health_check.clone()),
            created_at: self.created_at.clone(),
            git_url: self.git_url.clone(),
            sandbox_dir: self.sandbox_dir.clone(),
        }
    }

    /// Launching or ending, or serving Gateway calls: what it holds may change soon.
    pub(super) fn unsettled(&self) -> bool {
        self.calls > 0
            || matches!(
                self.process,
                Process::Launching { .. } | Process::Ending { .. }
            )
    }

    fn last_error(&self) -> Option<String> {
        match (&self.supervised.phase, self.desired) {
            (Phase::Failed { reason }, Desired::Running) => Some(reason.clone()),
            _ => self.failed.clone(),
        }
    }

    fn state(&self) -> InstanceState {
        match &self.process {
            Process::Queued { .. } | Process::Launching { .. } => InstanceState::Starting,
            Process::Ending {
                then: Then::Relaunch(_),
                ..
            } => InstanceState::Starting,
            Process::Up { .. } | Process::Ending { .. } => match &self.supervised.phase {
                Phase::Running { failed_probes, .. }
                    if *failed_probes > 0 && self.desired == Desired::Running =>
                {
                    InstanceState::Unhealthy
                }
                _ => InstanceState::Running,
            },
            Process::None => match (self.desired, &self.supervised.phase) {
                (Desired::Running, Phase::Backoff { .. }) => InstanceState::Backoff,
                (Desired::Running, Phase::Idle { .. }) => InstanceState::Idle,
                (Desired::Running, Phase::Failed { .. }) => InstanceState::Failed,
                (Desired::Running, Phase::Starting) => InstanceState::Starting,
                _ if self.failed.is_some() => InstanceState::Failed,
                _ => InstanceState::Stopped,
            },
        }
    }
}
