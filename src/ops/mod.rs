//! The application API: one file per operation, shared by every door (CLI and MCP through the
//! daemon socket, the Gateway, the dashboard).
//!
//! [`Manager`] is a cheap handle on what operations use: the [`Host`] (config, state store, `.env`
//! cache), the Supervisor's [`Handle`], the published [`Snapshot`], and the Gateway's control
//! channel, which `ops` owns and the Gateway task receives. Operations on one Project are
//! serialised by a per-Project lock; a second `start` of a Project whose start is in flight joins
//! it. Operations return domain outcomes or an [`OpError`] (or [`Failure::NotFound`]); the reply
//! a client sees is built at the door. They never print, and import nothing from `gateway`.

pub(crate) mod audit;
pub(crate) mod dashboard_login;
pub(crate) mod destroy;
pub(crate) mod doctor;
pub(crate) mod list;
pub(crate) mod logs;
pub(crate) mod mcp_restart;
pub(crate) mod mcp_status;
pub(crate) mod permission;
pub(crate) mod restart;
pub(crate) mod resume;
pub(crate) mod start;
pub(crate) mod status;
pub(crate) mod stop;
pub(crate) mod stop_mcp_tool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit::{AuditLog, Door};
use crate::config::Config;
use crate::env_cache::EnvCache;
use crate::error::{ErrorCode, OpError};
use crate::lifecycle::Host;
use crate::project::ProjectName;
use crate::project_env::Mode;
use crate::snapshot::Snapshot;
use crate::supervisor::Handle;

/// Settings that travel with each request: those of the process the user started, not the daemon's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CallerSettings {
    /// The caller's `ENVIRONMENT` (`development`/`dev` selects dev mode).
    pub environment: Option<String>,
    /// Daemon-wide settings the caller has set (`OPENCODE_BIN`, `GLOBAL_MCP_TOOL_PORT`), so a
    /// daemon started with other values can say so instead of silently ignoring them.
    #[serde(default)]
    pub opencode_bin: Option<String>,
    #[serde(default)]
    pub gateway_port: Option<u16>,
    /// The door the request came through (the CLI, or the MCP server `serve`).
    #[serde(default)]
    pub door: Door,
}

impl CallerSettings {
    /// The settings of the current process.
    pub(crate) fn from_env() -> CallerSettings {
        let set = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        CallerSettings {
            environment: set("ENVIRONMENT"),
            opencode_bin: set("OPENCODE_BIN"),
            gateway_port: set("GLOBAL_MCP_TOOL_PORT").and_then(|p| p.parse().ok()),
            door: Door::Cli,
        }
    }

    /// Warnings for daemon-wide settings that differ between this caller and the running daemon.
    pub(crate) fn differences(&self, config: &Config) -> Vec<String> {
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

    pub(crate) fn mode(&self) -> Mode {
        Mode::from_environment_var(self.environment.as_deref())
    }
}

/// Why an operation about one Project has no result: the Project does not exist (a status of
/// its own, `not_found`, not an error), or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    NotFound { project: String, known: Vec<String> },
    Error(OpError),
}

impl From<OpError> for Failure {
    fn from(err: OpError) -> Failure {
        Failure::Error(err)
    }
}

/// What the Gateway task is asked by `mcp_restart` and `stop_mcp_tool`.
pub(crate) enum GatewayRequest {
    /// Close and reopen; the reply is why it could not listen, if it could not.
    Restart(oneshot::Sender<Result<(), String>>),
    /// Close until a user starts a Project (or `mcp_restart`); the reply says whether it was open.
    Stop(oneshot::Sender<bool>),
}

/// The daemon's handle on what operations use.
#[derive(Clone)]
pub(crate) struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    host: Arc<Host>,
    supervisor: Handle,
    snapshot: watch::Receiver<Snapshot>,
    gateway: mpsc::UnboundedSender<GatewayRequest>,
    audit: AuditLog,
    logins: dashboard_login::LoginCodes,
    /// Told once, to the next `list` or `status` (a migrated state file).
    notices: Mutex<Vec<String>>,
    // std mutexes: held only to look up or insert an entry, never across an `.await`.
    project_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    starts_in_flight: Mutex<HashMap<String, watch::Receiver<Option<StartResult>>>>,
}

type StartResult = Result<start::StartReply, OpError>;

impl Manager {
    pub(crate) fn new(
        host: Arc<Host>,
        supervisor: Handle,
        snapshot: watch::Receiver<Snapshot>,
        gateway: mpsc::UnboundedSender<GatewayRequest>,
        audit: AuditLog,
        notices: Vec<String>,
    ) -> Manager {
        Manager {
            inner: Arc::new(Inner {
                host,
                supervisor,
                snapshot,
                gateway,
                audit,
                logins: dashboard_login::LoginCodes::default(),
                notices: Mutex::new(notices),
                project_locks: Mutex::default(),
                starts_in_flight: Mutex::default(),
            }),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.host.config
    }

    /// Where every door records the state-changing calls it serves.
    pub(crate) fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// The dashboard's login codes and address.
    pub(crate) fn logins(&self) -> &dashboard_login::LoginCodes {
        &self.inner.logins
    }

    pub(crate) fn host(&self) -> &Arc<Host> {
        &self.inner.host
    }

    pub(crate) fn envs(&self) -> &EnvCache {
        &self.inner.host.envs
    }

    pub(crate) fn supervisor(&self) -> &Handle {
        &self.inner.supervisor
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.inner.snapshot.borrow().clone()
    }

    /// A receiver that sees every change of the snapshot.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.inner.snapshot.clone()
    }

    /// Takes the pending notices; each is reported once.
    pub(crate) fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for exclusive use of one Project.
    pub(crate) async fn lock_project(
        &self,
        project: &ProjectName,
    ) -> tokio::sync::OwnedMutexGuard<()> {
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

    /// Names of all known Projects, for "not found" hints.
    pub(crate) fn known_projects(&self) -> Vec<String> {
        self.inner
            .snapshot
            .borrow()
            .projects
            .keys()
            .cloned()
            .collect()
    }

    /// `NotFound` for `project`, naming the known ones.
    pub(crate) fn not_found(&self, project: &ProjectName) -> Failure {
        Failure::NotFound {
            project: project.to_string(),
            known: self.known_projects(),
        }
    }

    /// Asks the Gateway task; `None` if it is not running (the daemon is shutting down).
    pub(crate) async fn ask_gateway<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> GatewayRequest,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.inner.gateway.send(request(reply)).ok()?;
        answer.await.ok()
    }

    /// Waits (up to 5 s) until the Gateway has caught up with the snapshot: open while a Project
    /// is wanted (unless a user closed it, or it cannot listen), closed otherwise. So a start's
    /// reply comes with the Gateway ready to route to it.
    pub(crate) async fn gateway_settled(&self) -> Snapshot {
        let mut snapshot = self.subscribe();
        let settled = tokio::time::timeout(
            Duration::from_secs(5),
            snapshot.wait_for(Snapshot::gateway_settled),
        )
        .await;
        match settled {
            Ok(Ok(snapshot)) => snapshot.clone(),
            _ => self.snapshot(),
        }
    }

    /// The Gateway's URL and port.
    pub(crate) fn gateway_url(&self) -> (String, u16) {
        let port = self.config().gateway_port;
        (format!("http://127.0.0.1:{port}/mcp"), port)
    }

    pub(crate) fn sandbox_display(&self, project: &ProjectName) -> String {
        self.config().paths.sandbox(project).display().to_string()
    }

    /// Turns a `.env` problem into an error (`invalid_config`, or `env_too_large`).
    pub(crate) fn env_failure(err: crate::project_env::EnvError) -> OpError {
        let code = match err.kind {
            crate::project_env::EnvErrorKind::Invalid => ErrorCode::InvalidConfig,
            crate::project_env::EnvErrorKind::TooLarge => ErrorCode::EnvTooLarge,
        };
        OpError::new(code, err.message, err.hint)
    }

    /// Reads and validates a Project's `.env`, off the async threads.
    pub(crate) async fn load_env(
        &self,
        project: &ProjectName,
    ) -> Result<crate::project_env::ProjectEnv, OpError> {
        let path = self.config().paths.env_file(project);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || crate::project_env::load(&path))
            .await
            .map_err(|err| OpError::internal(format!("reading {shown}: {err}")))?
            .map_err(|err| Manager::env_failure(err).with_env_path(shown))
    }
}

/// Joins or starts the one in-flight `start` of a Project. Every caller gets the same result.
pub(crate) async fn join_in_flight<F>(
    manager: &Manager,
    project: &ProjectName,
    run: F,
) -> StartResult
where
    F: std::future::Future<Output = StartResult> + Send + 'static,
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
            let result = run.await;
            manager
                .inner
                .starts_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let _ = sender.send(Some(result));
        });
    }
    match receiver.wait_for(Option::is_some).await {
        Ok(result) => result
            .clone()
            .unwrap_or_else(|| Err(OpError::internal("the start task gave no result"))),
        Err(_) => Err(OpError::internal("the start task ended without a result")),
    }
}
