//! The client side of the daemon socket: check the home, connect (starting a daemon first if none
//! answers), present the token, send one request and collect its progress and reply.
//!
//! A started daemon is detached (its own session, output to `manager.log`), so it outlives the
//! client. Two clients racing to start one are safe: the home's lock lets only one daemon run, and
//! both then connect to it. A daemon that refuses to start says why with its exit status (the
//! error code) and its last log line (the message), which the client passes on.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::config::Paths;
use crate::error::ErrorCode;
use crate::ops::CallerSettings;
use crate::protocol::{Envelope, Frame, Request};
use crate::reply::Reply;

/// How long a client waits for a daemon it started to accept connections.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a request got no reply from a daemon.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    pub hint: String,
}

impl ClientError {
    fn unavailable(message: String, paths: &Paths) -> ClientError {
        ClientError {
            code: ErrorCode::DaemonUnavailable,
            message,
            hint: format!("see {}", paths.manager_log().display()),
        }
    }

    pub(crate) fn into_reply(self) -> Reply {
        Reply::error(self.code, self.message, self.hint)
    }
}

/// Sends one request and returns the daemon's reply, or an error reply saying why there is none.
/// `on_progress` sees each step.
pub(crate) async fn ask(
    paths: &Paths,
    envelope: &Envelope,
    on_progress: impl FnMut(&str),
) -> Reply {
    match request(paths, envelope, on_progress).await {
        Ok(Frame::Reply(reply)) => *reply,
        Ok(other) => Reply::error(
            ErrorCode::Internal,
            format!("unexpected answer from the daemon: {other:?}"),
            "client and daemon versions may differ",
        ),
        Err(err) => err.into_reply(),
    }
}

/// Sends one request; `on_progress` sees each step; returns the final frame.
///
/// A daemon that dies before it answers anything (a killed daemon's socket can still accept a
/// connection for a moment, then reset it) is replaced and the request sent once more: nothing
/// was done for it, and every operation is safe to repeat. So is a daemon of an older version
/// (its Instances keep running and the new daemon adopts them); a newer one is left alone and
/// the client says so.
pub(crate) async fn request(
    paths: &Paths,
    envelope: &Envelope,
    mut on_progress: impl FnMut(&str),
) -> Result<Frame, ClientError> {
    crate::trust::ensure_home(paths).map_err(|err| ClientError {
        code: ErrorCode::HomeUnsafe,
        message: format!("the manager home is unsafe: {err}"),
        hint: err.fix.clone(),
    })?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match send_once(paths, envelope, &mut on_progress).await {
            Err(Attempt::NoAnswer(err)) if attempts < 3 => {
                tracing::debug!("the daemon went away before answering ({err}); trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Attempt::NoAnswer(err) | Attempt::Failed(err)) => return Err(err),
            Ok(Frame::Mismatch { version, pid }) if attempts < 3 => {
                if !newer(super::version(), &version) {
                    return Err(ClientError {
                        code: ErrorCode::VersionMismatch,
                        message: format!(
                            "the daemon (pid {pid}) runs opencode-manager {version}, newer than this client ({}); it was left alone",
                            super::version()
                        ),
                        hint: "use the newer opencode-manager (restart the MCP client that runs this one)".into(),
                    });
                }
                tracing::warn!(
                    pid,
                    "the daemon runs opencode-manager {version}; replacing it with {} (instances keep running)",
                    super::version()
                );
                replace(paths, pid).await?;
            }
            Ok(Frame::Mismatch { version, pid }) => {
                return Err(ClientError::unavailable(
                    format!("the daemon (pid {pid}) still runs opencode-manager {version}"),
                    paths,
                ));
            }
            Ok(frame) => return Ok(frame),
        }
    }
}

/// Whether version `a` is newer than `b` (dotted numbers; anything else counts as 0).
fn newer(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|n| n.parse().unwrap_or(0))
            .collect()
    };
    parse(a) > parse(b)
}

/// Stops the home's daemon `pid` (SIGTERM; its Instances keep running) and waits until it is
/// gone. Only the process holding the home's lock and running `opencode-manager daemon` is
/// signalled.
async fn replace(paths: &Paths, pid: u32) -> Result<(), ClientError> {
    let lock = paths.daemon_lock();
    let pid = i32::try_from(pid).unwrap_or(0);
    let target = tokio::task::spawn_blocking(move || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_daemon = cmdline.split(|b| *b == 0).any(|a| a == b"daemon");
        let holds_lock = super::lock::read_pid(&lock) == Some(pid);
        (is_daemon && holds_lock)
            .then(|| crate::instance::process::identity(pid))
            .flatten()
            .and_then(crate::instance::process::pidfd)
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| {
        ClientError::unavailable(
            format!("process {pid} does not look like this home's daemon; it was left alone"),
            paths,
        )
    })?;
    let _ = rustix::process::pidfd_send_signal(&target, rustix::process::Signal::TERM);
    if crate::instance::process::exited(&target, Duration::from_secs(15)).await {
        Ok(())
    } else {
        Err(ClientError::unavailable(
            format!("the daemon (pid {pid}) did not exit within 15 s"),
            paths,
        ))
    }
}

/// The pid of a daemon answering on the home's socket right now, without starting one.
pub(crate) async fn running_daemon(paths: &Paths) -> Option<i32> {
    let stream = UnixStream::connect(paths.socket()).await.ok()?;
    let envelope = Envelope {
        request: Request::Ping,
        caller: CallerSettings::default(),
    };
    let mut ignore = |_: &str| {};
    let exchange = exchange(paths, stream, &envelope, &mut ignore);
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(Frame::Hello { pid, .. } | Frame::Mismatch { pid, .. })) => i32::try_from(pid).ok(),
        _ => None,
    }
}

enum Attempt {
    /// The connection ended before the first frame: the request was not handled.
    NoAnswer(ClientError),
    Failed(ClientError),
}

async fn send_once(
    paths: &Paths,
    envelope: &Envelope,
    on_progress: &mut impl FnMut(&str),
) -> Result<Frame, Attempt> {
    let stream = connect(paths).await.map_err(Attempt::Failed)?;
    exchange(paths, stream, envelope, on_progress).await
}

/// Presents the token, sends `envelope`, reads frames until the last.
async fn exchange(
    paths: &Paths,
    stream: UnixStream,
    envelope: &Envelope,
    on_progress: &mut impl FnMut(&str),
) -> Result<Frame, Attempt> {
    let token = super::socket::read_token(paths).map_err(|err| {
        Attempt::Failed(ClientError::unavailable(
            format!("cannot present the daemon's token: {err}"),
            paths,
        ))
    })?;
    let (read, mut write) = stream.into_split();
    let mut message = super::socket::greeting(super::version(), &token).into_bytes();
    serde_json::to_writer(&mut message, envelope).map_err(|e| {
        Attempt::Failed(ClientError::unavailable(
            format!("encoding the request: {e}"),
            paths,
        ))
    })?;
    message.push(b'\n');
    let no_answer = |what: String| Attempt::NoAnswer(ClientError::unavailable(what, paths));
    write
        .write_all(&message)
        .await
        .map_err(|e| no_answer(format!("sending the request to the daemon: {e}")))?;
    let mut lines = BufReader::new(read).lines();
    let mut answered = false;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) if !answered => {
                return Err(no_answer(
                    "the daemon closed the connection without answering".into(),
                ));
            }
            Err(err) if !answered => {
                return Err(no_answer(format!("reading the daemon's answer: {err}")));
            }
            Ok(None) => {
                return Err(Attempt::Failed(ClientError::unavailable(
                    "the daemon closed the connection before its reply".into(),
                    paths,
                )));
            }
            Err(err) => {
                return Err(Attempt::Failed(ClientError::unavailable(
                    format!("reading the daemon's answer: {err}"),
                    paths,
                )));
            }
        };
        answered = true;
        match serde_json::from_str::<Frame>(&line).map_err(|e| {
            Attempt::Failed(ClientError::unavailable(
                format!("decoding the daemon's answer: {e}"),
                paths,
            ))
        })? {
            Frame::Progress(step) => on_progress(&step),
            frame => return Ok(frame),
        }
    }
}

/// Connects to the home's daemon, starting one if none answers.
async fn connect(paths: &Paths) -> Result<UnixStream, ClientError> {
    if let Ok(stream) = UnixStream::connect(paths.socket()).await {
        return Ok(stream);
    }
    let deadline = tokio::time::Instant::now() + DAEMON_START_TIMEOUT;
    let mut daemon = spawn_daemon(paths)?;
    let mut spawned = 1;
    loop {
        match UnixStream::connect(paths.socket()).await {
            Ok(stream) => return Ok(stream),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(ClientError::unavailable(
                    format!(
                        "the daemon did not start within {}s ({err})",
                        DAEMON_START_TIMEOUT.as_secs()
                    ),
                    paths,
                ));
            }
            Err(_) => {}
        }
        match daemon.try_recv() {
            // Another daemon won the race and may still be binding its socket; if it went away
            // instead, start one again.
            Ok(Some(status)) if status == i32::from(super::EXIT_ALREADY_RUNNING) => {
                if super::lock::read_pid(&paths.daemon_lock()).is_none() && spawned < 3 {
                    daemon = spawn_daemon(paths)?;
                    spawned += 1;
                }
            }
            Ok(status) => return Err(refusal(paths, status)),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a daemon that exited with `status` while starting said about it.
fn refusal(paths: &Paths, status: Option<i32>) -> ClientError {
    let tail = crate::logs::tail(&paths.manager_log(), 20).unwrap_or_default();
    let said = tail
        .iter()
        .rev()
        .find_map(|line| line.split_once("daemon refused to start: ").map(|(_, m)| m));
    let code = status.and_then(super::code_of_exit_status);
    match (code, said) {
        (Some(code), Some(said)) => {
            let (message, hint) = said.split_once(" | hint: ").unwrap_or((said, ""));
            ClientError {
                code,
                message: message.to_owned(),
                hint: hint.to_owned(),
            }
        }
        _ => ClientError::unavailable(
            format!(
                "the daemon could not start: {}",
                tail[tail.len().saturating_sub(5)..].join(" | ")
            ),
            paths,
        ),
    }
}

/// Starts a daemon; the receiver learns its exit status (`None` if killed by a signal) if it
/// exits while the client waits.
fn spawn_daemon(paths: &Paths) -> Result<std::sync::mpsc::Receiver<Option<i32>>, ClientError> {
    let failed = |what: String| ClientError::unavailable(what, paths);
    crate::atomic_file::private_dir(&paths.logs_dir())
        .map_err(|e| failed(format!("creating {}: {e}", paths.logs_dir().display())))?;
    // Rotate before the daemon's stderr is attached, so that stderr and the log stay one file.
    let _ = crate::logs::rotate_if_large(&paths.manager_log(), crate::logs::ROTATE_AT_BYTES);
    let exe = std::env::current_exe().map_err(|e| failed(format!("finding this program: {e}")))?;
    let log = open_append(&paths.manager_log())
        .map_err(|e| failed(format!("opening {}: {e}", paths.manager_log().display())))?;
    #[allow(clippy::disallowed_methods)]
    let mut command = std::process::Command::new(exe);
    command
        .arg("daemon")
        .env("OPENCODE_MANAGER_HOME", paths.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    crate::instance::process::detach(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("starting the daemon: {e}")))?;
    // The daemon lives on in its own session; reap it if it exits early (a lost race, a refusal).
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait().ok().and_then(|status| status.code()));
    });
    Ok(receiver)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
