//! The daemon: the single owner of the state file and of every Instance process in one home.
//!
//! [`run`] checks the home (`trust`), takes the home's lock (`lock`: one daemon per home, even if
//! the lock file is deleted), makes sure no other daemon answers on the socket, opens the state
//! (refusing, and touching nothing, when it is unreadable), then wires the parts: the `.env`
//! cache, the snapshot channel, the Supervisor (which adopts what an earlier daemon left
//! running), the Gateway task, the dashboard, and the control socket (`socket`: 0600, a version
//! and a token on every connection; `dispatch` runs the operations). It ends on a shutdown signal
//! or, unless `stay`, after `linger` with no client (a socket connection or an open dashboard
//! page) and no Project to look after; nothing polls: its loop
//! wakes on connections, snapshot changes, its lock file's changes and that one deadline.
//! Instances run in their own sessions: the daemon exiting, even by SIGKILL, leaves them running
//! for the next one.

pub(crate) mod client;
pub(crate) mod lock;
pub(crate) mod socket;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::Caller;
use crate::clients::Clients;
use crate::config::Config;
use crate::env_cache::EnvCache;
use crate::error::ErrorCode;
use crate::lifecycle::{Host, LocalLauncher, Progress};
use crate::ops::Manager;
use crate::protocol::{Envelope, Frame};
use crate::reply::Reply;
use crate::secrets::Secret;
use crate::snapshot::Snapshot;
use lock::{Acquired, HomeLock, Verified};

/// This program's version (see [`crate::version`]).
pub(crate) fn version() -> &'static str {
    crate::version()
}

/// How the daemon's run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Another daemon holds this home (its pid, when known).
    AlreadyRunning {
        pid: Option<i32>,
    },
    Lingered,
    Shutdown,
}

/// Why the daemon would not start; the client that spawned it reports the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refused {
    pub code: ErrorCode,
    pub message: String,
    pub hint: String,
}

impl Refused {
    fn internal(message: String) -> Refused {
        Refused {
            code: ErrorCode::Internal,
            message,
            hint: "see manager.log".into(),
        }
    }

    /// The process exit status that carries the code to the client that spawned the daemon.
    pub(crate) fn exit_status(&self) -> u8 {
        EXIT_CODES
            .iter()
            .find(|(_, code)| *code == self.code)
            .map_or(1, |(status, _)| *status)
    }
}

/// Exit status of `opencode-manager daemon` when another daemon already holds the home.
pub(crate) const EXIT_ALREADY_RUNNING: u8 = 3;

/// Exit statuses of a refused daemon start, by the error code they stand for.
const EXIT_CODES: [(u8, ErrorCode); 3] = [
    (2, ErrorCode::InvalidConfig),
    (4, ErrorCode::StateCorrupt),
    (5, ErrorCode::HomeUnsafe),
];

/// The error code a daemon's exit status stands for (1 and anything unknown: none).
pub(crate) fn code_of_exit_status(status: i32) -> Option<ErrorCode> {
    EXIT_CODES
        .iter()
        .find(|(s, _)| i32::from(*s) == status)
        .map(|(_, code)| *code)
}

/// Options of a daemon run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DaemonOptions {
    /// Never exit for lack of running Projects (for a service unit).
    pub stay: bool,
}

/// Runs the daemon until `shutdown` resolves or it has lingered with nothing running.
pub(crate) async fn run(
    config: Config,
    options: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Exit, Refused> {
    let paths = config.paths.clone();
    crate::trust::ensure_home(&paths).map_err(|err| Refused {
        code: ErrorCode::HomeUnsafe,
        message: format!("the manager home is unsafe: {err}"),
        hint: err.fix.clone(),
    })?;
    crate::atomic_file::private_dir(&paths.logs_dir())
        .map_err(|err| Refused::internal(format!("creating the log directory: {err}")))?;
    let lock_path = paths.daemon_lock();
    let mut lock = match HomeLock::acquire(&lock_path)
        .map_err(|err| Refused::internal(format!("locking {}: {err}", lock_path.display())))?
    {
        Acquired::Held(lock) => lock,
        Acquired::Busy { pid: Some(pid) } => return Ok(Exit::AlreadyRunning { pid: Some(pid) }),
        // The holder is putting a deleted lock file back and has not written its pid yet: ask
        // it on the socket.
        Acquired::Busy { pid: None } => {
            let pid = client::running_daemon(&paths).await;
            return Ok(Exit::AlreadyRunning { pid });
        }
    };
    // A daemon whose lock file was deleted still answers on the socket: never run beside it.
    if let Some(pid) = client::running_daemon(&paths).await {
        return Ok(Exit::AlreadyRunning { pid: Some(pid) });
    }
    let token = socket::load_or_create_token(&paths).map_err(|err| {
        Refused::internal(format!(
            "creating {}: {err}",
            paths.daemon_token().display()
        ))
    })?;
    let store_paths = paths.clone();
    let (store, report) = tokio::task::spawn_blocking(move || {
        crate::state::store::Store::open(&store_paths)
    })
    .await
    .map_err(|err| Refused::internal(format!("opening the state: {err}")))?
    .map_err(|err| Refused {
        code: err.code(),
        message: format!("{err}; the daemon did not start and changed nothing"),
        hint: format!(
            "running instances keep running. Restore {path} from {path}.backup or a backup of your own, or fix it; \
             moving it aside starts the manager with no projects (their running instances are then stopped)",
            path = paths.state_file().display()
        ),
    })?;
    for notice in &report.notices {
        tracing::warn!("{notice}");
    }
    tracing::info!(pid = std::process::id(), home = %paths.home().display(), version = version(), "daemon starting");
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    let stop = CancellationToken::new();
    let envs = Arc::new(EnvCache::default());
    let host = Arc::new(Host::new(config, store, envs.clone()));
    let names = host.clone();
    crate::env_cache::follow(
        envs,
        paths.clone(),
        move || names.store.snapshot().projects.into_keys().collect(),
        stop.clone(),
    )
    .await;
    let (publish, snapshot) = watch::channel(Snapshot::default());
    let publish = Arc::new(publish);
    let launcher = Arc::new(LocalLauncher { host: host.clone() });
    let supervisor =
        crate::supervisor::spawn(host.clone(), launcher, publish.clone(), stop.clone()).await;
    let (gateway, requests) = mpsc::unbounded_channel();
    let audit = crate::audit::AuditLog::open(paths.audit_log());
    let manager = Manager::new(host, supervisor, snapshot, gateway, audit, report.notices);
    tokio::spawn(crate::gateway::run(
        manager.clone(),
        publish,
        requests,
        stop.clone(),
    ));
    let clients = Arc::new(Clients::default());
    tokio::spawn(crate::dashboard::run(
        manager.clone(),
        clients.clone(),
        stop.clone(),
    ));

    let control = socket::ControlSocket::bind(&paths.socket())
        .map_err(|err| Refused::internal(format!("binding {}: {err}", paths.socket().display())))?;
    tracing::info!(socket = %paths.socket().display(), "listening");
    let lock_watch = crate::fs_watch::DirWatch::new().and_then(|w| {
        w.add(paths.home())?;
        Ok(w)
    });
    if let Err(err) = &lock_watch {
        tracing::warn!("cannot watch the home for its lock file ({err})");
    }

    let token = Arc::new(token);
    let mut snapshots = manager.subscribe();
    let linger = manager.config().linger;
    let mut idle_since: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    let exit = loop {
        let busy = options.stay || clients.any() || snapshots.borrow().gateway_wanted();
        idle_since = match (busy, idle_since) {
            (true, _) => None,
            (false, None) => Some(tokio::time::Instant::now()),
            (false, since) => since,
        };
        let linger_ends = idle_since.map(|since| since + linger);
        tokio::select! {
            accepted = control.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (manager, token, present) = (manager.clone(), token.clone(), clients.enter());
                    tokio::spawn(async move {
                        if let Err(err) = serve_connection(&manager, stream, &token).await {
                            tracing::warn!("client connection: {err:#}");
                        }
                        drop(present);
                    });
                }
                Err(err) => tracing::warn!("accepting a client: {err}"),
            },
            () = clients.left() => {}
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break Exit::Shutdown;
                }
            }
            changed = lock_changed(&lock_watch) => {
                if changed {
                    match lock.verify() {
                        Verified::Intact => {}
                        Verified::Restored => tracing::warn!(path = %lock_path.display(), "the daemon's lock file was removed or replaced; a new one is in place"),
                        Verified::Lost(why) => tracing::error!(path = %lock_path.display(), "the daemon's lock file is gone and could not be put back: {why}"),
                    }
                }
            }
            () = tokio::time::sleep_until(linger_ends.unwrap_or_else(tokio::time::Instant::now)), if linger_ends.is_some() => {
                break Exit::Lingered;
            }
            () = &mut shutdown => break Exit::Shutdown,
        }
    };
    stop.cancel();
    control.remove_if_ours();
    tracing::info!(?exit, "daemon exiting; running instances keep running");
    Ok(exit)
}

/// Resolves when something changed in the home that may be the lock file (never, without a watch).
async fn lock_changed(watch: &std::io::Result<crate::fs_watch::DirWatch>) -> bool {
    match watch {
        Ok(watch) => match watch.changed().await {
            Ok(names) => names
                .iter()
                .any(|n| n == "opencode-manager.lock" || n.is_empty()),
            Err(_) => std::future::pending().await,
        },
        Err(_) => std::future::pending().await,
    }
}

async fn serve_connection(
    manager: &Manager,
    stream: UnixStream,
    token: &Secret,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Who is on the other end, for the audit log (the kernel's word, not the client's).
    let uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    match socket::greet(&mut reader, token).await {
        socket::Greeting::Welcome => {}
        socket::Greeting::OtherVersion => {
            let frame = Frame::Mismatch {
                version: version().to_owned(),
                pid: std::process::id(),
            };
            return send(&mut write, &frame).await;
        }
        socket::Greeting::Unauthorized => {
            let reply = Reply::error(
                ErrorCode::Unauthorized,
                "this connection did not present the daemon's token",
                "clients read it from opencode-manager.token in the manager home",
            );
            return send(&mut write, &Frame::Reply(Box::new(reply))).await;
        }
    }
    let mut line = String::new();
    reader
        .take(1024 * 1024)
        .read_line(&mut line)
        .await
        .context("reading the request")?;
    let envelope: Envelope = match serde_json::from_str(&line) {
        Ok(envelope) => envelope,
        Err(err) => {
            let reply = Reply::error(
                ErrorCode::Internal,
                format!("malformed request: {err}"),
                "client and daemon versions may differ",
            );
            return send(&mut write, &Frame::Reply(Box::new(reply))).await;
        }
    };
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let progress = Progress::to(progress_tx);
    // The operation runs as its own task: a client that goes away never cancels it halfway.
    let caller = uid.map_or(Caller::Unknown, |uid| Caller::LocalUser { uid });
    let mut operation = tokio::spawn(crate::dispatch::dispatch(
        manager.clone(),
        envelope,
        progress,
        caller,
    ));
    loop {
        tokio::select! {
            frame = &mut operation => {
                let frame = frame.unwrap_or_else(|err| {
                    tracing::error!("operation panicked: {err}");
                    Frame::Reply(Box::new(Reply::error(ErrorCode::Internal, "the operation failed unexpectedly", "see manager.log")))
                });
                while let Ok(step) = progress_rx.try_recv() {
                    send(&mut write, &Frame::Progress(step)).await?;
                }
                return send(&mut write, &frame).await;
            }
            Some(step) = progress_rx.recv() => send(&mut write, &Frame::Progress(step)).await?,
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, frame: &Frame) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(frame)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(())
}
