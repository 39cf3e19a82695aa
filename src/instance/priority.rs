//! The CPU share of a starting Instance. OpenCode's start is seconds of CPU on every core it
//! can get; running Instances answering calls must not wait behind it. Each Instance leads its
//! own session (`setsid`), so where the kernel groups processes by session for scheduling
//! (autogroup, for processes in the root CPU cgroup) its whole tree is one scheduling entity with
//! a nice value of its own: a launch lowers it to [`STARTING`] and puts it back to 0 once the
//! Instance is ready. Writing `/proc/<pid>/autogroup` needs no privilege for a nice value ≥ 0,
//! but without `CAP_SYS_ADMIN` the kernel takes one change per 100 ms machine-wide (`EAGAIN`
//! otherwise), so each change is retried for a while. Where autogroup is off (or the Instance
//! sits in a CPU cgroup) the value is kept and has no effect. Best effort: a failure is logged,
//! never fatal. Signals nothing and decides nothing.

use std::io;
use std::time::Duration;

/// The autogroup nice value of a starting Instance: a weight of 15 against a running one's 1024,
/// so the CPU goes to the running ones whenever they want it and to the start otherwise.
pub const STARTING: i32 = 19;

/// Sets the autogroup nice value of the session `pid` leads to `nice`, retrying for `retry_for`
/// while the kernel says `EAGAIN`.
pub async fn set(pid: i32, nice: i32, retry_for: Duration) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + retry_for;
    loop {
        let written = tokio::task::spawn_blocking(move || {
            std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string())
        })
        .await
        .map_err(io::Error::other)?;
        match written {
            Err(err)
                if err.kind() == io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(110)).await;
            }
            other => return other,
        }
    }
}

/// The autogroup nice value of the session `pid` leads, as `/proc/<pid>/autogroup` says
/// (`/autogroup-123 nice 19`).
pub fn get(pid: i32) -> io::Result<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))?;
    text.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, text))
}
