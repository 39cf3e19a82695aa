//! Log files: size-based rotation, reading the tail of a log, and the daemon's own log.
//!
//! Instance logs are written by the Instance itself (its stdout and stderr go to the file), so they
//! are rotated before each launch; the daemon's `manager.log` is rotated when the daemon starts.
//! Nothing here writes secrets: callers never log them (see `secrets::Secret`).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A log larger than this is rotated at the next launch or daemon start.
pub(crate) const ROTATE_AT_BYTES: u64 = 10 * 1024 * 1024;
/// How many rotated generations (`.1` … `.3`) are kept.
pub(crate) const KEEP: usize = 3;

/// Rotates `path` to `path.1` (shifting older ones) when it is larger than `limit`.
pub(crate) fn rotate_if_large(path: &Path, limit: u64) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > limit => {}
        _ => return Ok(()),
    }
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    let _ = std::fs::remove_file(numbered(KEEP));
    for n in (1..KEEP).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::rename(path, numbered(1))
}

/// The last `lines` lines of a log file (reading at most the last 4 MiB).
pub(crate) fn tail(path: &Path, lines: usize) -> io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| strip_ansi(l))
        .collect())
}

/// Removes terminal colour sequences (OpenCode colours its errors).
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends the daemon's tracing output to `manager.log` (appending, rotated first when large).
pub(crate) fn init_daemon_log(path: &Path) -> io::Result<()> {
    rotate_if_large(path, ROTATE_AT_BYTES)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // rmcp says `info` for every MCP session it serves (each stateless Gateway request is one):
    // the log keeps the daemon's own events, and rmcp's warnings.
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENCODE_MANAGER_LOG")
        .unwrap_or_else(|_| "info,rmcp=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}

/// Sends a client's tracing output to stderr (stdout belongs to data and, in MCP stdio mode, JSON-RPC).
/// The ACP bridge logs to its stderr, which is its Project's log file (`info`: it says when it
/// listens, which the launch waits for).
pub(crate) fn init_bridge_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENCODE_MANAGER_LOG")
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(io::stderr)
        .try_init();
}

pub(crate) fn init_client_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENCODE_MANAGER_LOG")
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_a_bounded_number_of_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        for round in 0..5 {
            std::fs::write(&log, format!("round {round} with some bytes")).expect("write");
            rotate_if_large(&log, 4).expect("rotate");
        }
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.log.1")).expect("gen 1"),
            "round 4 with some bytes"
        );
        assert!(dir.path().join("x.log.3").exists() && !dir.path().join("x.log.4").exists());
    }

    #[test]
    fn tail_returns_the_last_lines_without_colour() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\n\u{1b}[91mError\u{1b}[0m: ServeError\n").expect("write");
        assert_eq!(tail(&log, 2).expect("tail"), ["b", "Error: ServeError"]);
    }
}
