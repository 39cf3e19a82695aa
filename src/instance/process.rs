//! Instance processes: spawning them detached, proving they are ours, and stopping them with
//! nothing left behind.
//!
//! The only module that spawns or signals Instance processes. A process is "ours" only when its pid
//! *and* its start time (`/proc/<pid>/stat` field 22) match what was recorded: pids are reused, so
//! `kill(pid, 0)` proves nothing. Everything an Instance starts carries a marker variable
//! (`OCM_INSTANCE`), which is how the stop sequence finds tool processes that left its process group.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};

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
    /// The Instance's group had to be killed with SIGKILL after the grace period.
    pub killed: bool,
    /// Processes found by their marker after the group was gone (escaped tool processes).
    pub swept: usize,
}

/// Ends an Instance and everything it started: SIGTERM to its process group, SIGKILL after `grace`,
/// then a sweep of processes still carrying `marker`. The group is signalled only while its leader
/// is provably ours, or gone (the kernel does not reuse a group id while the group has members).
pub async fn terminate(id: ProcIdentity, marker: &str, grace: Duration) -> StopReport {
    let mut report = StopReport::default();
    let group_is_ours = match identity(id.pid) {
        Some(current) => current == id,
        None => true,
    };
    if let (true, Some(pgid)) = (group_is_ours, Pid::from_raw(id.pid)) {
        let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
        if !wait_for(|| !group_exists(pgid), grace).await {
            report.killed = true;
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            wait_for(|| !group_exists(pgid), Duration::from_secs(2)).await;
        }
    }
    report.swept = sweep(|value| value == marker).await;
    report
}

/// Kills every process whose marker matches `matches`, and waits until they are gone. Returns how
/// many there were. Each process is pinned with a pidfd before its environment is read, so a pid
/// reused in between is never signalled.
pub async fn sweep(matches: impl Fn(&str) -> bool) -> usize {
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
            killed.push(pid);
        }
    }
    let n = killed.len();
    wait_for(
        || killed.iter().all(|pid| identity(*pid).is_none()),
        Duration::from_secs(5),
    )
    .await;
    n
}

/// Processes carrying a marker that `matches`, without touching them.
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

fn group_exists(pgid: Pid) -> bool {
    // A group of only zombies still "exists" for kill(2); look for a live member instead.
    rustix::process::test_kill_process_group(pgid).is_ok()
        && all_pids().any(|pid| in_live_group(pid, pgid.as_raw_nonzero().get()))
}

fn in_live_group(pid: i32, pgid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next();
    // After state come ppid and pgrp.
    let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
    group == Some(pgid) && !matches!(state, Some("Z" | "X"))
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        assert!(
            wait_for(
                || read_pid_file(&child_pid_file).is_some(),
                Duration::from_secs(10)
            )
            .await
        );
        let escaped = read_pid_file(&child_pid_file).expect("child pid");
        let report = terminate(id, &marker, Duration::from_secs(2)).await;
        let _ = child.wait().await;
        assert_eq!(report.swept, 1, "the escaped child is found by its marker");
        assert!(identity(escaped).is_none());
        assert!(find_marked(|v| v == marker).is_empty());
    }
}
