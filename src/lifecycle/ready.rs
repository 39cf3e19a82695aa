//! Waiting for a launched Instance to be ready: its listening line, then a healthy answer, or its
//! exit (reported with the exit status and the log tail), or the deadline. Reads the project log
//! from where this launch began; never signals the process (the caller decides).

use std::path::Path;
use std::time::Duration;

use crate::error::{ErrorCode, OpError};
use crate::instance::api::InstanceApi;

/// What OpenCode, and the ACP bridge once its agent answered `initialize`, print when they listen.
const LISTENING: [&str; 2] = ["opencode server listening on", "acp bridge listening on"];

pub(super) struct NotReady {
    pub(super) error: OpError,
    pub(super) still_running: bool,
}

/// Waits for the listening line in the log (then a healthy answer), the process's exit, or the
/// deadline. The exit is an event; the log is read incrementally, off the async threads.
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
    let mut seen = LogCursor {
        path: log.to_owned(),
        offset: log_start,
        carry: String::new(),
        listening: false,
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let tail = log_tail_since(log.to_owned(), log_start).await;
            let error = OpError::new(
                ErrorCode::OpencodeUnhealthy,
                format!(
                    "OpenCode did not become healthy within {}s",
                    timeout.as_secs()
                ),
                "see the log tail; the process was stopped",
            )
            .with_lines(tail);
            return Err(NotReady {
                error,
                still_running: true,
            });
        }
        seen = seen.advance().await;
        if (seen.listening || now >= poll_anyway_after)
            && api.health(Duration::from_millis(500)).await.is_ok()
        {
            return Ok(());
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map_or_else(|e| format!("exit status unknown: {e}"), describe_exit);
                let tail = log_tail_since(log.to_owned(), log_start).await;
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
                let error = OpError::new(
                    code,
                    format!(
                        "OpenCode exited before it was ready ({status}); log tail: {}",
                        tail.join(" | ")
                    ),
                    hint,
                )
                .with_lines(tail);
                return Err(NotReady {
                    error,
                    still_running: false,
                });
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// How far this launch's part of the log has been read, and whether the listening line was in it.
struct LogCursor {
    path: std::path::PathBuf,
    offset: u64,
    /// The last, unfinished line read.
    carry: String,
    listening: bool,
}

impl LogCursor {
    /// Reads what was appended since the last call (at most 1 MiB at a time).
    async fn advance(self) -> LogCursor {
        if self.listening {
            return self;
        }
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut cursor = self;
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(&cursor.path) {
                let _ = file.seek(SeekFrom::Start(cursor.offset));
                if let Ok(n) = file.take(1024 * 1024).read_to_string(&mut text) {
                    cursor.offset += n as u64;
                }
            }
            cursor.carry.push_str(&text);
            cursor.listening = LISTENING.iter().any(|l| cursor.carry.contains(l));
            if let Some(at) = cursor.carry.rfind('\n') {
                cursor.carry.drain(..=at);
            }
            cursor
        })
        .await
        .unwrap_or_else(|_| LogCursor {
            path: std::path::PathBuf::new(),
            offset: 0,
            carry: String::new(),
            listening: false,
        })
    }
}

/// The last 20 non-empty lines this launch logged (from `start`), colour codes stripped.
pub(super) async fn log_tail_since(log: std::path::PathBuf, start: u64) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&log) {
            let _ = file.seek(SeekFrom::Start(start));
            let _ = file.take(1024 * 1024).read_to_string(&mut text);
        }
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(crate::logs::strip_ansi)
            .collect();
        lines[lines.len().saturating_sub(20)..].to_vec()
    })
    .await
    .unwrap_or_default()
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
