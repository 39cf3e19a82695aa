//! Waiting for a launched Instance to be ready: its listening line, then a healthy answer, or its
//! exit (reported with the exit status and the log tail), or the deadline. Reads the project log
//! from where this launch began; never signals the process (the caller decides).

use std::path::Path;
use std::time::Duration;

use crate::error::ErrorCode;
use crate::instance::api::InstanceApi;
use crate::reply::Reply;

const LISTENING: &str = "opencode server listening on";

pub(super) struct NotReady {
    pub(super) reply: Reply,
    pub(super) still_running: bool,
}

/// Waits for the listening line in the log (then a healthy answer), the process's exit, or the deadline.
pub(super) async fn wait_ready(
    child: &mut tokio::process::Child,
    api: &InstanceApi,
    log: &Path,
    log_start: u64,
    timeout: Duration,
) -> Result<(), NotReady> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Poll health even without the line after a while, in case a future OpenCode prints it differently.
    let poll_anyway_after = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail_since(log, log_start);
            let port_busy = tail.iter().any(|l| l.contains("ServeError"));
            let (code, hint) = if port_busy {
                (
                    ErrorCode::PortUnavailable,
                    "OpenCode could not listen on its port; another process may have taken it. Call start again to pick another port",
                )
            } else {
                (
                    ErrorCode::OpencodeStartFailed,
                    "see the log tail above and the project's log file",
                )
            };
            let mut reply = Reply::error(
                code,
                format!(
                    "OpenCode exited before it was ready ({}); log tail: {}",
                    describe_exit(status),
                    tail.join(" | ")
                ),
                hint,
            );
            reply.lines = Some(tail);
            return Err(NotReady {
                reply,
                still_running: false,
            });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let tail = log_tail_since(log, log_start);
            let mut reply = Reply::error(
                ErrorCode::OpencodeUnhealthy,
                format!(
                    "OpenCode did not become healthy within {}s",
                    timeout.as_secs()
                ),
                "see the log tail; the process was stopped",
            );
            reply.lines = Some(tail);
            return Err(NotReady {
                reply,
                still_running: true,
            });
        }
        let listening = log_since(log, log_start).contains(LISTENING);
        if (listening || now >= poll_anyway_after)
            && api.health(Duration::from_millis(500)).await.is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_since(log: &Path, start: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.take(1024 * 1024).read_to_string(&mut text);
    }
    text
}

fn log_tail_since(log: &Path, start: u64) -> Vec<String> {
    let text = log_since(log, start);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(crate::logs::strip_ansi)
        .collect();
    lines[lines.len().saturating_sub(20)..].to_vec()
}

/// "exit code 3" or "killed by signal 9".
pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown exit".into(),
    }
}
