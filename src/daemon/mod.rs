//! The daemon: the single owner of the state file and of every Instance process in one home.
//!
//! [`run`] checks the home (`trust`), takes the home's lock (`lock`: one daemon per home, even
//! if the lock file is deleted), makes sure no other daemon answers on the socket, opens the state
//! (refusing, and touching nothing, when it is unreadable), reconciles recorded state with living
//! processes, then serves requests on the control socket (`socket`: 0600, and a token on every
//! connection) until a shutdown signal or, unless `stay`, a linger period with no running
//! Instance. Instances run in their own sessions: the daemon exiting, even by SIGKILL, leaves
//! them running for the next one.

pub mod client;
pub mod lock;
pub mod protocol;
pub mod socket;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::ErrorCode;
use crate::ops::{self, Manager, Progress};
use crate::reply::Reply;
use crate::secrets::Secret;
use lock::{Acquired, HomeLock, Verified};
use protocol::{Envelope, Frame, Request};

/// How the daemon's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
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
pub struct Refused {
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
    pub fn exit_status(&self) -> u8 {
        EXIT_CODES
            .iter()
            .find(|(_, code)| *code == self.code)
            .map_or(1, |(status, _)| *status)
    }
}

/// Exit status of `opencode-manager daemon` when another daemon already holds the home.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// Exit statuses of a refused daemon start, by the error code they stand for.
const EXIT_CODES: [(u8, ErrorCode); 3] = [
    (2, ErrorCode::InvalidConfig),
    (4, ErrorCode::StateCorrupt),
    (5, ErrorCode::HomeUnsafe),
];

/// The error code a daemon's exit status stands for (1 and anything unknown: none).
pub fn code_of_exit_status(status: i32) -> Option<ErrorCode> {
    EXIT_CODES
        .iter()
        .find(|(s, _)| i32::from(*s) == status)
        .map(|(_, code)| *code)
}

/// Options of a daemon run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonOptions {
    /// Never exit for lack of running Projects (for a service unit).
    pub stay: bool,
}

/// Runs the daemon until `shutdown` resolves or it has lingered with nothing running.
pub async fn run(
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
        Acquired::Busy { pid } => return Ok(Exit::AlreadyRunning { pid }),
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

    let manager = Manager::open(config).map_err(|err| Refused {
        code: err.code(),
        message: format!("{err}; the daemon did not start and changed nothing"),
        hint: format!(
            "running instances keep running. Restore {path} from {path}.backup or a backup of your own, or fix it; \
             moving it aside starts the manager with no projects (their running instances are then stopped)",
            path = paths.state_file().display()
        ),
    })?;
    tracing::info!(pid = std::process::id(), home = %paths.home().display(), "daemon starting");
    for warning in &manager.config().warnings {
        tracing::warn!("{warning}");
    }
    ops::reconcile::on_daemon_start(&manager).await;
    ops::reconcile::stop_legacy_mcp_tools(&manager).await;
    crate::gateway::servers_file::update(&manager);
    let background_stop = tokio_util::sync::CancellationToken::new();
    // The gateway's project tokens are indexed before anything can ask for them.
    crate::gateway::auth::follow(manager.clone(), background_stop.clone()).await;
    tokio::spawn(crate::supervisor::run(
        manager.clone(),
        background_stop.clone(),
    ));

    let control = socket::ControlSocket::bind(&paths.socket())
        .map_err(|err| Refused::internal(format!("binding {}: {err}", paths.socket().display())))?;
    tracing::info!(socket = %paths.socket().display(), "listening");

    let token = Arc::new(token);
    let active = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut idle_since = tokio::time::Instant::now();
    let linger = manager.config().linger;
    tokio::pin!(shutdown);
    let exit = loop {
        tokio::select! {
            accepted = control.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let manager = manager.clone();
                    let active = active.clone();
                    let token = token.clone();
                    active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Err(err) = serve_connection(&manager, stream, &token).await {
                            tracing::warn!("client connection: {err:#}");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(err) => tracing::warn!("accepting a client: {err}"),
            },
            _ = tick.tick() => {
                match lock.verify() {
                    Verified::Intact => {}
                    Verified::Restored => tracing::warn!(path = %lock_path.display(), "the daemon's lock file was removed or replaced; a new one is in place"),
                    Verified::Lost(why) => tracing::error!(path = %lock_path.display(), "the daemon's lock file is gone and could not be put back: {why}"),
                }
                ops::reconcile::check_liveness(&manager);
                // Opens with the first running Project (also one adopted or crashed), closes after the last.
                let _ = manager.gateway().sync(&manager, crate::gateway::Trigger::Follow);
                let now = tokio::time::Instant::now();
                if options.stay || active.load(Ordering::SeqCst) > 0 || manager.any_instance_alive() {
                    idle_since = now;
                } else if now.duration_since(idle_since) >= linger {
                    break Exit::Lingered;
                }
            }
            () = &mut shutdown => break Exit::Shutdown,
        }
    };
    background_stop.cancel();
    control.remove_if_ours();
    let _ = crate::atomic_file::remove_if_present(&paths.gateway_pid_file());
    tracing::info!(?exit, "daemon exiting; running instances keep running");
    Ok(exit)
}

async fn serve_connection(
    manager: &Manager,
    stream: UnixStream,
    token: &Secret,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if !socket::authenticate(&mut reader, token).await {
        let reply = Reply::error(
            ErrorCode::Unauthorized,
            "this connection did not present the daemon's token",
            "clients read it from opencode-manager.token in the manager home",
        );
        return send(&mut write, &Frame::Reply(Box::new(reply))).await;
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
    let mut operation = tokio::spawn(dispatch(manager.clone(), envelope, progress));
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

async fn dispatch(manager: Manager, envelope: Envelope, progress: Progress) -> Frame {
    let manager = &manager;
    let caller = envelope.caller;
    let differences = caller.differences(manager.config());
    let reply = match envelope.request {
        Request::Ping => {
            return Frame::Hello {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                gateway_port: manager.config().gateway_port,
            };
        }
        Request::Start(args) => ops::start::start(manager, args, caller, progress).await,
        Request::Status { project_name } => ops::status::status(manager, &project_name).await,
        Request::Stop { project_name } => ops::stop::stop(manager, &project_name).await,
        Request::StopAll => ops::stop::stop_all(manager).await,
        Request::Restart { project_name } => {
            ops::restart::restart(manager, &project_name, caller, progress).await
        }
        Request::Destroy {
            project_name,
            force,
        } => ops::destroy::destroy(manager, &project_name, force).await,
        Request::List => ops::list::list(manager),
        Request::Doctor => ops::doctor::doctor(manager).await,
        Request::McpStatus => ops::mcp_status::mcp_status(manager),
        Request::McpRestart => ops::mcp_restart::mcp_restart(manager),
        Request::StopMcpTool => ops::stop_mcp_tool::stop_mcp_tool(manager),
        Request::Logs {
            project_name,
            lines,
        } => ops::logs::logs(manager, project_name.as_deref(), lines),
    };
    let reply = differences.into_iter().fold(reply, Reply::warn);
    Frame::Reply(Box::new(reply))
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, frame: &Frame) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(frame)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(())
}
