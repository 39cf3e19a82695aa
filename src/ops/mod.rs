//! The application API: one file per operation, shared by every transport (CLI, MCP, dashboard).
//!
//! [`Manager`] is a cheap handle to the daemon's single owner of state and Instances. Operations on
//! one Project are serialised by a per-Project lock; different Projects proceed in parallel, and a
//! second `start` of a Project whose start is in flight joins it instead of racing it. Operations
//! return a [`reply::Reply`]; they never print.

pub mod destroy;
pub mod doctor;
pub mod launch;
pub mod list;
pub mod logs;
pub mod mcp_restart;
pub mod mcp_status;
pub mod reconcile;
pub mod restart;
pub mod start;
pub mod status;
pub mod stop;
pub mod stop_mcp_tool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::error::ErrorCode;
use crate::project::ProjectName;
use crate::project_env::Mode;
use crate::reply::Reply;
use crate::state::store::{Store, StoreError};

/// Settings that travel with each request: those of the process the user started, not the daemon's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallerSettings {
    /// The caller's `ENVIRONMENT` (`development`/`dev` selects dev mode).
    pub environment: Option<String>,
    /// Daemon-wide settings the caller has set (`OPENCODE_BIN`, `GLOBAL_MCP_TOOL_PORT`), so a
    /// daemon started with other values can say so instead of silently ignoring them.
    #[serde(default)]
    pub opencode_bin: Option<String>,
    #[serde(default)]
    pub gateway_port: Option<u16>,
}

impl CallerSettings {
    /// The settings of the current process.
    pub fn from_env() -> CallerSettings {
        let set = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        CallerSettings {
            environment: set("ENVIRONMENT"),
            opencode_bin: set("OPENCODE_BIN"),
            gateway_port: set("GLOBAL_MCP_TOOL_PORT").and_then(|p| p.parse().ok()),
        }
    }

    /// Warnings for daemon-wide settings that differ between this caller and the running daemon.
    pub fn differences(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(bin) = &self.opencode_bin
            && config.opencode_bin.as_deref() != Some(std::path::Path::new(bin))
        {
            out.push(format!(
                "OPENCODE_BIN={bin} is ignored: the running daemon uses {}; stop the daemon (kill the pid in opencode-manager.lock) to change it",
                config.opencode_bin.as_ref().map_or("PATH or the managed copy".into(), |p| p.display().to_string())
            ));
        }
        if let Some(port) = self.gateway_port
            && port != config.gateway_port
        {
            out.push(format!(
                "GLOBAL_MCP_TOOL_PORT={port} is ignored: the running daemon uses {}",
                config.gateway_port
            ));
        }
        out
    }

    pub fn mode(&self) -> Mode {
        Mode::from_environment_var(self.environment.as_deref())
    }
}

/// Where an operation reports its steps (MCP progress notifications, CLI stderr lines).
#[derive(Clone, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    pub fn to(sender: mpsc::UnboundedSender<String>) -> Progress {
        Progress(Some(sender))
    }

    pub fn step(&self, message: impl Into<String>) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(message.into());
        }
    }
}

/// The daemon's handle on everything it owns.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    /// Told once, to the next `list` or `status` (a migrated or corrupt state file).
    notices: Mutex<Vec<String>>,
    // std mutexes: held only to look up or insert an entry, never across an `.await`.
    project_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    starts_in_flight: Mutex<HashMap<String, watch::Receiver<Option<Reply>>>>,
    /// Serialises the one-time npm install of the managed OpenCode.
    install_lock: tokio::sync::Mutex<()>,
    /// Serialises choosing and recording ports, so two starts never pick the same one.
    port_lock: tokio::sync::Mutex<()>,
    gateway: crate::gateway::Gateway,
    restarts_in_flight: std::sync::atomic::AtomicUsize,
    supervision: crate::supervisor::Shared,
    /// Launches whose process is this daemon's child, watched for its exit status.
    watched: Mutex<std::collections::HashSet<String>>,
    /// Which limit mechanism this machine offers, found on first need (it may run a probe).
    limit_mechanism: tokio::sync::OnceCell<crate::instance::enforce::Detection>,
    /// What Landlock this kernel offers, asked once at open.
    isolation_support: crate::instance::confine::Support,
    /// `--version` of each agent program, keyed by its path and modification time, so each
    /// binary is asked once (an upgrade in place is asked again).
    versions: Mutex<HashMap<(std::path::PathBuf, i64), String>>,
    /// The limits each running Instance got, with the cgroup that enforces them (if any).
    enforced: Mutex<HashMap<String, Enforcement>>,
}

impl Manager {
    /// Opens the state file; `notices` from migration or a corrupt file are kept for replies.
    pub fn open(config: Config) -> Result<Manager, StoreError> {
        let (store, report) = Store::open(&config.paths)?;
        for notice in &report.notices {
            tracing::warn!("{notice}");
        }
        Ok(Manager {
            inner: Arc::new(Inner {
                config,
                store,
                notices: Mutex::new(report.notices),
                project_locks: Mutex::default(),
                starts_in_flight: Mutex::default(),
                install_lock: tokio::sync::Mutex::new(()),
                port_lock: tokio::sync::Mutex::new(()),
                gateway: crate::gateway::Gateway::default(),
                restarts_in_flight: std::sync::atomic::AtomicUsize::new(0),
                supervision: crate::supervisor::Shared::default(),
                watched: Mutex::default(),
                limit_mechanism: tokio::sync::OnceCell::new(),
                isolation_support: crate::instance::confine::detect(),
                versions: Mutex::default(),
                enforced: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Takes the pending notices; each is reported once.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for exclusive use of one Project.
    pub async fn lock_project(&self, project: &ProjectName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .inner
                .project_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks
                .entry(project.as_str().to_owned())
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }

    pub(crate) fn install_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.install_lock
    }

    pub(crate) fn port_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.port_lock
    }

    /// How many restarts are between their stop and their start.
    pub fn restarts_in_flight(&self) -> usize {
        self.inner
            .restarts_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks a restart in progress until the guard drops.
    pub(crate) fn restart_guard(&self) -> RestartGuard {
        self.inner
            .restarts_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RestartGuard(self.clone())
    }

    /// The limit mechanism in force (probed once, off the async threads).
    pub async fn limit_mechanism(&self) -> &crate::instance::enforce::Detection {
        self.inner
            .limit_mechanism
            .get_or_init(|| async {
                tokio::task::spawn_blocking(crate::instance::enforce::detect)
                    .await
                    .unwrap_or_else(|_| crate::instance::enforce::Detection {
                        mechanism: crate::instance::enforce::Mechanism::Rlimit,
                        reason: "the probe failed".into(),
                    })
            })
            .await
    }

    /// What Landlock the kernel offers this daemon.
    pub fn isolation_support(&self) -> &crate::instance::confine::Support {
        &self.inner.isolation_support
    }

    /// A program's version, asked once per binary (path and modification time).
    pub(crate) async fn program_version(
        &self,
        program: &std::path::Path,
    ) -> Result<String, String> {
        use std::os::unix::fs::MetadataExt as _;
        let key = (
            program.to_owned(),
            std::fs::metadata(program).map_or(0, |m| m.mtime()),
        );
        if let Some(version) = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(version.clone());
        }
        let version = crate::instance::binary::version(program).await?;
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, version.clone());
        Ok(version)
    }

    /// Remembers the limits (and cgroup) of a Project's current Instance.
    pub(crate) fn set_enforcement(&self, project: &str, enforcement: Option<Enforcement>) {
        let previous = {
            let mut map = self
                .inner
                .enforced
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match enforcement {
                Some(e) => map.insert(project.to_owned(), e),
                None => map.remove(project),
            }
        };
        if let Some(Enforcement {
            cgroup: Some(cgroup),
            ..
        }) = previous
        {
            cgroup.remove();
        }
    }

    /// Whether the kernel OOM-killed something in the Project's cgroup, and its memory limit.
    pub(crate) fn enforcement_facts(&self, project: &str) -> (bool, Option<u64>) {
        let map = self
            .inner
            .enforced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(project) {
            Some(e) => (
                e.cgroup.as_ref().is_some_and(|c| c.oom_killed()),
                e.limits.memory_bytes,
            ),
            None => (false, None),
        }
    }

    /// The memory limit the RSS watchdog must guard: set, but enforced by no cgroup.
    pub(crate) fn watchdog_limit(&self, project: &str) -> Option<u64> {
        let map = self
            .inner
            .enforced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(project)
            .filter(|e| e.cgroup.is_none())
            .and_then(|e| e.limits.memory_bytes)
    }

    /// Marks a launch as watched (or no longer) by an exit watcher, which records its exit status.
    pub(crate) fn set_watched(&self, launch_id: &str, watched: bool) {
        let mut set = self.inner.watched.lock().unwrap_or_else(|p| p.into_inner());
        if watched {
            set.insert(launch_id.to_owned());
        } else {
            set.remove(launch_id);
        }
    }

    /// Whether an exit watcher owns the outcome of this launch.
    pub(crate) fn is_watched(&self, launch_id: &str) -> bool {
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(launch_id)
    }

    /// A client for a Project's Instance (its recorded port and the password in its `.env`).
    pub(crate) fn instance_api(
        &self,
        project: &ProjectName,
    ) -> Option<crate::instance::api::InstanceApi> {
        let port = self
            .store()
            .snapshot()
            .projects
            .get(project.as_str())?
            .port?;
        let env = crate::project_env::load(&self.config().paths.env_file(project)).ok()?;
        Some(crate::instance::api::InstanceApi::new(port, env.password))
    }

    pub fn supervision(&self) -> &crate::supervisor::Shared {
        &self.inner.supervision
    }

    /// Projects the user wants running that are parked or between a crash and their restart;
    /// like running ones, they keep the daemon and the gateway open.
    pub fn parked_projects(&self) -> usize {
        self.store()
            .snapshot()
            .projects
            .values()
            .filter(|r| r.desired == crate::state::Desired::Running)
            .filter(|r| {
                matches!(
                    r.instance,
                    crate::state::InstanceRecord::Idle { .. }
                        | crate::state::InstanceRecord::Stopped { .. }
                )
            })
            .count()
    }

    pub fn gateway(&self) -> &crate::gateway::Gateway {
        &self.inner.gateway
    }

    /// Brings the gateway in line with the running Projects; a failure to listen becomes a warning.
    pub(crate) fn sync_gateway(&self, reply: Reply, trigger: crate::gateway::Trigger) -> Reply {
        crate::gateway::servers_file::update(self);
        match self.gateway().sync(self, trigger) {
            Ok(()) => reply,
            Err(message) => reply.warn(message),
        }
    }

    /// Names of all known Projects, for "not found" hints.
    pub fn known_projects(&self) -> Vec<String> {
        self.store().snapshot().projects.into_keys().collect()
    }

    /// Whether any Instance is running or starting (the daemon lingers while none is).
    pub fn any_instance_alive(&self) -> bool {
        self.running_projects() > 0 || self.parked_projects() > 0
    }

    /// How many Projects have a living Instance, counted from the processes themselves.
    pub fn running_projects(&self) -> usize {
        self.store()
            .snapshot()
            .projects
            .values()
            .filter_map(|record| record.instance.proc())
            .filter(|(proc, _)| crate::instance::process::is_alive(*proc))
            .count()
    }

    /// Turns a state write failure into a reply.
    pub(crate) fn store_failure(err: StoreError) -> Reply {
        let code = err.code();
        tracing::error!("{err}");
        Reply::error(
            code,
            err.to_string(),
            "check the manager home's permissions and free space; see manager.log",
        )
    }

    /// Turns a `.env` problem into a reply (`invalid_config`, or `env_too_large`).
    pub(crate) fn env_failure(err: crate::project_env::EnvError) -> Reply {
        let code = match err.kind {
            crate::project_env::EnvErrorKind::Invalid => ErrorCode::InvalidConfig,
            crate::project_env::EnvErrorKind::TooLarge => ErrorCode::EnvTooLarge,
        };
        Reply::error(code, err.message, err.hint)
    }

    pub(crate) fn sandbox_display(&self, project: &ProjectName) -> String {
        self.config().paths.sandbox(project).display().to_string()
    }

    pub(crate) fn gateway_url(&self) -> (String, u16) {
        let port = self.config().gateway_port;
        (format!("http://127.0.0.1:{port}/mcp"), port)
    }
}

/// The limits an Instance was started with, and the cgroup enforcing them (none with rlimits).
pub(crate) struct Enforcement {
    pub limits: crate::limits::Limits,
    pub cgroup: Option<crate::instance::enforce::Enforced>,
}

/// Ends a restart's "in progress" mark when dropped.
pub(crate) struct RestartGuard(Manager);

impl Drop for RestartGuard {
    fn drop(&mut self) {
        self.0
            .inner
            .restarts_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Joins or starts the one in-flight `start` of a Project. Every caller gets the same reply.
pub(crate) async fn join_in_flight<F>(manager: &Manager, project: &ProjectName, run: F) -> Reply
where
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let key = project.as_str().to_owned();
    let (mut receiver, sender) = {
        let mut in_flight = manager
            .inner
            .starts_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match in_flight.get(&key) {
            Some(receiver) => (receiver.clone(), None),
            None => {
                let (sender, receiver) = watch::channel(None);
                in_flight.insert(key.clone(), receiver.clone());
                (receiver, Some(sender))
            }
        }
    };
    if let Some(sender) = sender {
        // The start runs as its own task, so a client that disconnects or cancels never leaves a
        // half-done start behind: the task finishes and records its outcome.
        let manager = manager.clone();
        tokio::spawn(async move {
            let reply = run.await;
            manager
                .inner
                .starts_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let _ = sender.send(Some(reply));
        });
    }
    match receiver.wait_for(Option::is_some).await {
        Ok(reply) => reply.clone().unwrap_or_else(|| {
            Reply::error(
                ErrorCode::Internal,
                "the start task gave no reply",
                "see manager.log",
            )
        }),
        Err(_) => Reply::error(
            ErrorCode::Internal,
            "the start task ended without a reply",
            "see manager.log",
        ),
    }
}
