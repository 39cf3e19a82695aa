//! The client side of the daemon socket: connect, starting a daemon first if none answers, send one
//! request and collect its progress and reply.
//!
//! A started daemon is detached (its own session, output to `manager.log`), so it outlives the
//! client. Two clients racing to start one are safe: the home's lock lets only one daemon run, and
//! both then connect to it.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Envelope, Frame};
use crate::config::Paths;

/// How long a client waits for a daemon it started to accept connections.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to the home's daemon, starting one if needed.
pub async fn connect(paths: &Paths) -> anyhow::Result<UnixStream> {
    if let Ok(stream) = UnixStream::connect(paths.socket()).await {
        return Ok(stream);
    }
    let exited = spawn_daemon(paths)?;
    let deadline = tokio::time::Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        match UnixStream::connect(paths.socket()).await {
            Ok(stream) => return Ok(stream),
            // It lost the race to another daemon, which may still be binding its socket: keep trying.
            Err(_) if exited.try_recv().is_ok_and(|success| !success) => {
                let tail = crate::logs::tail(&paths.manager_log(), 5).unwrap_or_default();
                bail!("the daemon could not start: {}", tail.join(" | "));
            }
            Err(err) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "the daemon did not start within {}s ({err}); see {}",
                    DAEMON_START_TIMEOUT.as_secs(),
                    paths.manager_log().display()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Sends one request; `on_progress` sees each step; returns the final frame.
///
/// A daemon that dies before it answers anything (a killed daemon's socket can still accept a
/// connection for a moment, then reset it) is replaced and the request sent once more: nothing
/// was done for it, and every operation is safe to repeat.
pub async fn request(
    paths: &Paths,
    envelope: &Envelope,
    mut on_progress: impl FnMut(&str),
) -> anyhow::Result<Frame> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match send_once(paths, envelope, &mut on_progress).await {
            Err(Attempt::NoAnswer(err)) if attempts < 3 => {
                tracing::debug!("the daemon went away before answering ({err:#}); trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Attempt::NoAnswer(err) | Attempt::Failed(err)) => return Err(err),
            Ok(frame) => return Ok(frame),
        }
    }
}

enum Attempt {
    /// The connection ended before the first frame: the request was not handled.
    NoAnswer(anyhow::Error),
    Failed(anyhow::Error),
}

async fn send_once(
    paths: &Paths,
    envelope: &Envelope,
    on_progress: &mut impl FnMut(&str),
) -> Result<Frame, Attempt> {
    let stream = connect(paths).await.map_err(Attempt::Failed)?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(envelope).map_err(|e| Attempt::Failed(e.into()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| {
        Attempt::NoAnswer(anyhow::Error::from(e).context("sending the request to the daemon"))
    })?;
    let mut lines = BufReader::new(read).lines();
    let mut answered = false;
    loop {
        let next = lines.next_line().await;
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) if !answered => {
                return Err(Attempt::NoAnswer(anyhow::anyhow!(
                    "the daemon closed the connection without answering"
                )));
            }
            Ok(None) => {
                return Err(Attempt::Failed(anyhow::anyhow!(
                    "the daemon closed the connection without answering; see {}",
                    paths.manager_log().display()
                )));
            }
            Err(err) if !answered => {
                return Err(Attempt::NoAnswer(
                    anyhow::Error::from(err).context("reading the daemon's answer"),
                ));
            }
            Err(err) => {
                return Err(Attempt::Failed(
                    anyhow::Error::from(err).context("reading the daemon's answer"),
                ));
            }
        };
        answered = true;
        match serde_json::from_str::<Frame>(&line).map_err(|e| {
            Attempt::Failed(anyhow::Error::from(e).context("decoding the daemon's answer"))
        })? {
            Frame::Progress(step) => on_progress(&step),
            frame => return Ok(frame),
        }
    }
}

/// Starts a daemon; the receiver learns whether it exited (with success) while the client waits.
fn spawn_daemon(paths: &Paths) -> anyhow::Result<std::sync::mpsc::Receiver<bool>> {
    crate::atomic_file::private_dir(&paths.logs_dir())
        .with_context(|| format!("creating {}", paths.logs_dir().display()))?;
    // Rotate before the daemon's stderr is attached, so that stderr and the log stay one file.
    let _ = crate::logs::rotate_if_large(&paths.manager_log(), crate::logs::ROTATE_AT_BYTES);
    let exe = std::env::current_exe().context("finding this program's path")?;
    let log = open_append(&paths.manager_log())?;
    #[allow(clippy::disallowed_methods)]
    let mut command = std::process::Command::new(exe);
    command
        .arg("daemon")
        .env("OPENCODE_MANAGER_HOME", paths.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    crate::instance::process::detach(&mut command);
    let mut child = command.spawn().context("starting the daemon")?;
    // The daemon lives on in its own session; reap it if it exits early (for instance, lost a race).
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait().is_ok_and(|status| status.success()));
    });
    Ok(receiver)
}

fn open_append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
