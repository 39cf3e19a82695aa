//! Instance processes: spawning them detached and confined, proving they are ours, waiting for
//! them to end, and stopping them with nothing left behind.
//!
//! The only module that spawns or signals Instance processes. A process is "ours" only when its pid
//! *and* its start time (`/proc/<pid>/stat` field 22) match what was recorded: pids are reused, so
//! `kill(pid, 0)` proves nothing. Once proven, a process is held by a pidfd, which signals and
//! waits without a race and without polling. Everything an Instance starts carries a marker
//! variable (`OCM_INSTANCE`), which is how the stop sequence finds tool processes that left its
//! process group. Functions that read `/proc` are blocking; async callers use them through
//! `spawn_blocking`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

use super::confine::{self, Confinement};
use crate::state::ProcIdentity;

/// The environment variable every process of an Instance inherits.
pub const MARKER_VAR: &str = "OCM_INSTANCE";

/// Everything needed to start an Instance process. The environment is complete: nothing is inherited.
#[derive(Debug)]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Resource limits set in the child before it runs (computed here, applied after fork).
    pub rlimits: Vec<(rustix::process::Resource, rustix::process::Rlimit)>,
}

/// Reads a process's identity; `None` if it does not exist or is a zombie (already dead).
pub fn identity(pid: i32) -> Option<ProcIdentity> {
    match stat_identity(pid)? {
        (id, false) => Some(id),
        (_, true) => None,
    }
}

/// The identity in `/proc/<pid>/stat` and whether the process has already exited (a zombie).
fn stat_identity(pid: i32) -> Option<(ProcIdentity, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')' are fixed.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let exited = matches!(fields.next()?, "Z" | "X");
    // `state` was field 3; start time is field 22, i.e. 19 fields further on.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some((ProcIdentity { pid, start_ticks }, exited))
}

/// Whether the recorded process is still the same, living process.
pub fn is_alive(id: ProcIdentity) -> bool {
    identity(id.pid) == Some(id)
}

/// A pidfd for the recorded process, if it is still that process. The pidfd is opened first and
/// the identity checked after, so the pidfd can only refer to the recorded process.
pub fn pidfd(id: ProcIdentity) -> Option<OwnedFd> {
    let pidfd = rustix::process::pidfd_open(Pid::from_raw(id.pid)?, PidfdFlags::empty()).ok()?;
    is_alive(id).then_some(pidfd)
}

/// Waits until the process behind `pidfd` has exited, or `timeout` passes; returns whether it
/// exited. Event-driven: the pidfd becomes readable when the process ends.
pub async fn exited(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let Ok(copy) = pidfd.try_clone() else {
        return false;
    };
    match tokio::time::timeout(timeout, until_exit(copy)).await {
        Ok(result) => result.is_ok(),
        Err(_) => false,
    }
}

/// Waits for the process behind `pidfd` to exit (a process that is not our child: its status is
/// its parent's to collect).
pub async fn until_exit(pidfd: OwnedFd) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the AsyncFd owns the pidfd, which stays open and the same for the AsyncFd's life.
    let fd = unsafe {
        AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
            .map_err(io::Error::from)?
    };
    let _ready = fd.readable().await?;
    Ok(())
}

/// Resident memory of one process in bytes, if it is readable.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts an Instance in its own session and process group, logging stdout and stderr to its log
/// file, so it outlives the daemon, and confined as `confinement` says (applied in the child after
/// the session and the limits). Returns the child (to learn its exit) and its identity.
pub fn spawn_detached(
    spec: &LaunchSpec,
    confinement: Confinement,
) -> io::Result<(tokio::process::Child, ProcIdentity)> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.log)?;
    #[allow(clippy::disallowed_methods)]
    let mut command = std::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    detach(&mut command);
    if !spec.rlimits.is_empty() {
        let rlimits = spec.rlimits.clone();
        #[allow(unsafe_code)]
        // SAFETY: runs between fork and exec; setrlimit(2) is async-signal-safe and the vector was
        // allocated before the fork, so nothing allocates here.
        unsafe {
            command.pre_exec(move || {
                for (resource, limit) in &rlimits {
                    rustix::process::setrlimit(*resource, *limit).map_err(io::Error::from)?;
                }
                Ok(())
            });
        }
    }
    confine::install(&mut command, confinement);
    let child = tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
    // A child that already exited is still our unreaped zombie, so its identity is readable; the
    // caller then learns its exit status (and log) from `child` rather than a vague error.
    let (id, _) = stat_identity(pid).ok_or_else(|| {
        io::Error::other(format!(
            "process {pid} exited before it could be identified"
        ))
    })?;
    Ok((child, id))
}

/// Makes `command` start in a new session (and so a new process group, with no controlling terminal).
pub fn detach(command: &mut std::process::Command) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and calls only setsid(2), which is
    // async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(io::Error::from));
    }
}

/// What a stop did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StopReport {
    /// The Instance had to be killed with SIGKILL after the grace period.
    pub killed: bool,
    /// Processes found by their marker after the group was signalled (escaped tool processes).
    pub swept: usize,
}

/// Ends an Instance and everything it started: SIGTERM to its process group, SIGKILL to the group
/// after `grace` if the leader is still alive, then a sweep of processes still carrying `marker`.
/// The group is signalled only while its leader is provably ours, or gone (the kernel does not
/// reuse a group id while the group has members). Waits on pidfds, never by polling.
pub async fn terminate(id: ProcIdentity, marker: &str, grace: Duration) -> StopReport {
    let mut report = StopReport::default();
    let leader = tokio::task::spawn_blocking(move || (pidfd(id), identity(id.pid)))
        .await
        .unwrap_or((None, None));
    let group_is_ours = match (&leader.0, leader.1) {
        (Some(_), _) => true,
        // Gone: its group may still hold tool processes, and cannot have been reused.
        (None, None) => true,
        // The pid belongs to another process now: leave it alone.
        (None, Some(_)) => false,
    };
    if let (true, Some(pgid)) = (group_is_ours, Pid::from_raw(id.pid)) {
        let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
        let ended = match &leader.0 {
            Some(pidfd) => exited(pidfd, grace).await,
            None => true,
        };
        if !ended {
            report.killed = true;
            if let Some(pidfd) = &leader.0 {
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
            }
        }
        // Whatever of the group ignored SIGTERM (or outlived its leader) ends now.
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        if let (false, Some(pidfd)) = (ended, &leader.0) {
            exited(pidfd, Duration::from_secs(2)).await;
        }
    }
    let marker = marker.to_owned();
    report.swept = sweep(move |value| value == marker).await;
    report
}

/// Kills every process whose marker matches `matches` (one pass over `/proc`, off the async
/// threads), and waits on their pidfds until they are gone. Returns how many there were. Each
/// process is pinned with a pidfd before its environment is read, so a pid reused in between is
/// never signalled.
pub async fn sweep(matches: impl Fn(&str) -> bool + Send + 'static) -> usize {
    let killed = tokio::task::spawn_blocking(move || {
        let mut killed = Vec::new();
        for pid in all_pids() {
            let Some(pidfd) = Pid::from_raw(pid)
                .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
            else {
                continue;
            };
            if marker_of(pid).is_some_and(|value| matches(&value))
                && rustix::process::pidfd_send_signal(&pidfd, Signal::KILL).is_ok()
            {
                killed.push(pidfd);
            }
        }
        killed
    })
    .await
    .unwrap_or_default();
    for pidfd in &killed {
        exited(pidfd, Duration::from_secs(5)).await;
    }
    killed.len()
}

/// Processes carrying a marker that `matches`, without touching them. Blocking.
pub fn find_marked(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    all_pids()
        .filter(|pid| marker_of(*pid).is_some_and(|value| matches(&value)))
        .collect()
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
}

/// The marker value in a process's environment; unreadable environments (other users, pid 1) are skipped.
fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Reads a pid file written by [`write_pid_file`]; a missing or malformed file gives `None`.
pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes the original's `opencode.pid` (a compatibility file; identity lives in the state file).
pub fn write_pid_file(path: &Path, pid: i32) -> io::Result<()> {
    crate::atomic_file::replace(
        path,
        format!("{pid}\n").as_bytes(),
        crate::atomic_file::PRIVATE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_self_is_stable_and_of_a_dead_pid_is_none() {
        let me = std::process::id() as i32;
        let id = identity(me).expect("own identity");
        assert_eq!(identity(me), Some(id));
        assert!(is_alive(id));
        assert!(
            !is_alive(ProcIdentity {
                pid: me,
                start_ticks: id.start_ticks + 1
            }),
            "start time must match"
        );
        assert!(pidfd(id).is_some());
        assert!(
            pidfd(ProcIdentity {
                pid: me,
                start_ticks: id.start_ticks + 1
            })
            .is_none()
        );
    }

    #[tokio::test]
    async fn terminate_kills_the_group_and_escaped_marked_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = format!("test-{}", crate::secrets::random_id());
        let child_pid_file = dir.path().join("child.pid");
        // The leader starts a child in a new session, as OpenCode's bash tool does.
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 300' & exec sleep 300",
            child_pid_file.display()
        );
        let spec = LaunchSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            cwd: dir.path().to_owned(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                (MARKER_VAR.into(), marker.clone()),
            ],
            log: dir.path().join("log"),
            rlimits: Vec::new(),
        };
        let (mut child, id) =
            spawn_detached(&spec, Confinement::disabled("a test".into())).expect("spawn");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while read_pid_file(&child_pid_file).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no child pid");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let escaped = read_pid_file(&child_pid_file).expect("child pid");
        let report = terminate(id, &marker, Duration::from_secs(2)).await;
        let _ = child.wait().await;
        assert_eq!(report.swept, 1, "the escaped child is found by its marker");
        assert!(identity(escaped).is_none());
        assert!(find_marked(|v| v == marker).is_empty());
    }

    #[tokio::test]
    async fn a_pidfd_says_when_a_process_ends() {
        #[allow(clippy::disallowed_methods)]
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("spawn");
        let id = identity(child.id() as i32).expect("identity");
        let pidfd = pidfd(id).expect("pidfd");
        assert!(!exited(&pidfd, Duration::from_millis(50)).await);
        child.kill().expect("kill");
        assert!(exited(&pidfd, Duration::from_secs(10)).await);
        let _ = child.wait();
    }
}
