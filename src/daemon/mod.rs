//! The daemon: the single owner of the state file and of every Instance process in one home.
//!
//! [`run`] takes the home's lock (one daemon per home; the lock file holds its pid), reconciles
//! recorded state with living processes, then serves requests on a 0600 Unix socket until a
//! shutdown signal or, unless `stay`, a linger period with no running Instance. Instances run in
//! their own sessions: the daemon exiting, even by SIGKILL, leaves them running for the next one.

pub mod client;
pub mod protocol;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::ops::reply::{ErrorCode, Reply};
use crate::ops::{self, Manager, Progress};
use protocol::{Envelope, Frame, Request};

/// How the daemon's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Another daemon holds this home's lock.
    AlreadyRunning,
    Lingered,
    Shutdown,
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
) -> anyhow::Result<Exit> {
    let paths = config.paths.clone();
    crate::atomic_file::private_dir(paths.home())
        .with_context(|| format!("creating {}", paths.home().display()))?;
    crate::atomic_file::private_dir(&paths.logs_dir()).context("creating the log directory")?;
    let lock_path = paths.daemon_lock();
    let mut lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Exit::AlreadyRunning),
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;

    let manager = Manager::open(config).map_err(|err| anyhow::anyhow!("{err}"))?;
    tracing::info!(pid = std::process::id(), home = %paths.home().display(), "daemon starting");
    ops::reconcile::on_daemon_start(&manager).await;
    ops::reconcile::stop_legacy_mcp_tools(&manager).await;
    crate::gateway::servers_file::update(&manager);
    let supervisor_stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::supervisor::run(
        manager.clone(),
        supervisor_stop.clone(),
    ));

    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket);
    // The socket path is the authorization: create it 0600 (umask), never wider for a moment.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(&socket);
    rustix::process::umask(previous);
    let listener = bound.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .context("restricting the socket")?;
    tracing::info!(socket = %socket.display(), "listening");

    let active = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut idle_since = tokio::time::Instant::now();
    let linger = manager.config().linger;
    tokio::pin!(shutdown);
    let exit = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let manager = manager.clone();
                    let active = active.clone();
                    active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Err(err) = serve_connection(&manager, stream).await {
                            tracing::warn!("client connection: {err:#}");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(err) => tracing::warn!("accepting a client: {err}"),
            },
            _ = tick.tick() => {
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
    supervisor_stop.cancel();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(paths.gateway_pid_file());
    tracing::info!(?exit, "daemon exiting; running instances keep running");
    Ok(exit)
}

async fn serve_connection(manager: &Manager, stream: UnixStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(1024 * 1024))
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
