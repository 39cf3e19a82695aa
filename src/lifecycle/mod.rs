//! What happens to one Instance, as steps: launch it, watch for its exit, probe it, end it, and
//! adopt the ones an earlier daemon left running. Below both `ops` and the `supervisor`, which
//! imports it; it imports neither.
//!
//! [`Launcher`] is the seam between the Supervisor's decisions and where Instances run: today
//! [`LocalLauncher`] (detached, confined processes on this machine); a launcher for other
//! agents or other machines implements the same trait. [`Host`] holds what every step needs from the
//! daemon: the config, the state store, the `.env` cache, and what this machine offers (isolation,
//! limits, program versions). The steps write launch identity to the store; they keep nothing.

pub(crate) mod adopt;
pub(crate) mod end;
pub(crate) mod launch;
pub(crate) mod probe;
mod program;
mod ready;
mod timeline;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::env_cache::EnvCache;
use crate::error::OpError;
use crate::instance::confine::{Isolation, Support};
use crate::instance::enforce::{Detection, Enforced};
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::snapshot::ProviderView;
use crate::state::ProcIdentity;
use crate::state::store::Store;

/// What every lifecycle step needs from the daemon.
pub(crate) struct Host {
    pub config: Config,
    pub store: Store,
    pub envs: Arc<EnvCache>,
    /// What the daemon measures as it happens (start durations, Gateway calls).
    pub metrics: crate::metrics::Metrics,
    isolation: Support,
    /// Which limit mechanism this machine offers, found on first need (it runs a probe).
    limits: tokio::sync::OnceCell<Detection>,
    /// `--version` of each agent program, by path and modification time: each binary is asked
    /// once (an upgrade in place is asked again). A std mutex: held for one map access.
    versions: Mutex<HashMap<(PathBuf, i64), String>>,
    /// Serialises choosing and recording ports, so two launches never pick the same one.
    port_lock: tokio::sync::Mutex<()>,
    /// Serialises the one-time npm install of the managed OpenCode.
    install_lock: tokio::sync::Mutex<()>,
    /// Start slots (`max_parallel_starts`): launches beyond them wait their turn, so that many
    /// simultaneous starts do not all run into the ready timeout.
    start_slots: tokio::sync::Semaphore,
}

impl Host {
    pub(crate) fn new(config: Config, store: Store, envs: Arc<EnvCache>) -> Host {
        Host {
            store,
            envs,
            metrics: crate::metrics::Metrics::default(),
            isolation: crate::instance::confine::detect(),
            limits: tokio::sync::OnceCell::new(),
            versions: Mutex::default(),
            port_lock: tokio::sync::Mutex::new(()),
            install_lock: tokio::sync::Mutex::new(()),
            start_slots: tokio::sync::Semaphore::new(config.max_parallel_starts),
            config,
        }
    }

    /// What Landlock this kernel offers.
    pub(crate) fn isolation_support(&self) -> &Support {
        &self.isolation
    }

    /// The limit mechanism in force (probed once).
    pub(crate) async fn limit_mechanism(&self) -> &Detection {
        self.limits
            .get_or_init(crate::instance::enforce::detect)
            .await
    }

    /// A program's version, asked once per binary (path and modification time).
    pub(crate) async fn program_version(&self, program: &Path) -> Result<String, String> {
        use std::os::unix::fs::MetadataExt as _;
        let path = program.to_owned();
        let mtime =
            tokio::task::spawn_blocking(move || std::fs::metadata(path).map_or(0, |m| m.mtime()))
                .await
                .unwrap_or(0);
        let key = (program.to_owned(), mtime);
        if let Some(version) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(version.clone());
        }
        let version = crate::instance::binary::version(program).await?;
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, version.clone());
        Ok(version)
    }

    pub(crate) fn port_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.port_lock
    }

    pub(crate) fn install_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.install_lock
    }

    /// A start slot, said to be waited for when none is free.
    pub(crate) async fn start_slot(&self, progress: &Progress) -> tokio::sync::SemaphorePermit<'_> {
        if let Ok(permit) = self.start_slots.try_acquire() {
            return permit;
        }
        progress.step(format!(
            "waiting for a start slot ({} starts under way; max_parallel_starts)",
            self.config.max_parallel_starts
        ));
        match self.start_slots.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the start semaphore is never closed"),
        }
    }
}

/// Where an operation reports its steps (MCP progress notifications, CLI stderr lines).
#[derive(Clone, Default)]
pub(crate) struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    pub(crate) fn to(sender: mpsc::UnboundedSender<String>) -> Progress {
        Progress(Some(sender))
    }

    pub(crate) fn step(&self, message: impl Into<String>) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(message.into());
        }
    }
}

/// A launch to make.
pub(crate) struct LaunchRequest {
    pub project: ProjectName,
    /// The launch's id, in its marker and in every event about it.
    pub id: String,
    pub env: Arc<ProjectEnv>,
    pub progress: Progress,
    /// Ask the ready Instance which model provider it uses before reporting it ready (a user's
    /// start, whose reply warns about a missing provider). Otherwise `Launched::provider` is
    /// `None` and the call that waits is answered as soon as the Instance is healthy.
    pub ask_provider: bool,
}

/// A running Instance, as the Supervisor refers to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    pub project: ProjectName,
    pub id: String,
    pub proc: ProcIdentity,
    pub port: u16,
    /// Its cgroups, when a cgroup enforces its limits.
    pub enforced: Option<Enforced>,
    pub memory_limit: Option<u64>,
}

/// Resolves when an Instance's process ends, with how it ended ("exit code 3", "killed by signal
/// 9, killed by the kernel's OOM killer: …").
pub(crate) type ExitWatch = Pin<Box<dyn Future<Output = String> + Send>>;

/// A ready Instance.
pub(crate) struct Launched {
    pub instance: Instance,
    pub started_at: String,
    pub isolation: Isolation,
    pub provider: Option<ProviderView>,
    /// Its memory when it became ready (later ones come with each probe).
    pub memory: Option<u64>,
    pub exit: ExitWatch,
}

/// What one probe of a running Instance saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Probed {
    /// Whether it answered its health check; `None` when it could not be asked (its `.env` is
    /// unreadable just now), which says nothing about its health.
    pub ok: Option<bool>,
    /// Sessions working now (from the last good answer).
    pub busy: Vec<String>,
    /// Permission requests waiting for an answer.
    pub permissions: usize,
    /// Someone has a connection open to its port.
    pub connected: bool,
    /// Its process tree's (or cgroup's) memory.
    pub memory: Option<u64>,
    /// The CPU time its living processes have used.
    pub cpu: Option<std::time::Duration>,
    /// Which model provider it uses, when it was asked.
    pub provider: Option<ProviderView>,
}

/// Why an Instance is ended, for its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A user's stop (or a destroy); the reason is recorded as its last exit.
    Stop(String),
    /// The Supervisor restarts it.
    Recycle(String),
    /// Parked for lack of activity.
    Park,
    /// The Supervisor gave up on it.
    GiveUp(String),
}

impl Ending {
    /// How this ending reads as the Instance's last exit, for the endings that record one.
    pub(crate) fn last_exit(&self) -> Option<String> {
        match self {
            Ending::Stop(reason) => Some(reason.clone()),
            Ending::Recycle(reason) => Some(format!("recycled by the supervisor ({reason})")),
            Ending::Park | Ending::GiveUp(_) => None,
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Stop(reason) => write!(f, "{reason}"),
            Ending::Recycle(reason) => write!(f, "recycled by the supervisor ({reason})"),
            Ending::Park => write!(f, "parked for lack of activity"),
            Ending::GiveUp(reason) => write!(f, "the supervisor gave up: {reason}"),
        }
    }
}

/// Where Instances run. Each method is one step; none keeps state between calls.
pub(crate) trait Launcher: Send + Sync + 'static {
    /// Launches an Instance and waits until it is ready; records its launch identity.
    fn launch(
        &self,
        request: LaunchRequest,
    ) -> impl Future<Output = Result<Launched, OpError>> + Send;

    /// Ends an Instance and everything it started; waits until they are gone.
    fn end(&self, instance: Instance, why: Ending) -> impl Future<Output = ()> + Send;

    /// Probes a running Instance: health, busy sessions, permissions, connections, memory, and
    /// its model provider when `ask_provider`.
    fn probe(&self, instance: Instance, ask_provider: bool) -> impl Future<Output = Probed> + Send;

    /// Kills what a crashed Instance left behind (its tools' processes) and removes its cgroups.
    fn clean_up(&self, instance: Instance) -> impl Future<Output = ()> + Send;

    /// Finds the Instances an earlier daemon left running and takes them over; records those
    /// that died meanwhile and kills unrecorded leftovers.
    fn adopt(&self) -> impl Future<Output = Vec<Launched>> + Send;
}

/// Instances as detached, confined processes on this machine.
#[derive(Clone)]
pub(crate) struct LocalLauncher {
    pub host: Arc<Host>,
}

impl Launcher for LocalLauncher {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, OpError> {
        launch::launch(&self.host, request).await
    }

    async fn end(&self, instance: Instance, why: Ending) {
        end::end(&self.host, instance, why).await;
    }

    async fn probe(&self, instance: Instance, ask_provider: bool) -> Probed {
        probe::probe(&self.host, instance, ask_provider).await
    }

    async fn clean_up(&self, instance: Instance) {
        if let Some(enforced) = instance.enforced {
            enforced.remove().await;
        }
        end::clean_up(&self.host, &instance.project).await;
    }

    async fn adopt(&self) -> Vec<Launched> {
        adopt::adopt(&self.host).await
    }
}
