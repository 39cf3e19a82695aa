//! Enforcing resource limits on Instances: choosing the mechanism this machine offers (systemd scope, cgroup v2, cgroup v1, or only
//! rlimits) and saying why, putting a just-spawned Instance under its limits and reopening that
//! handle later, the rlimits to set before exec, and the RSS of a process tree.
//!
//! The decisions live here (the detection order, which cgroups an Instance gets; the values are
//! `crate::limits`);
//! all cgroup and systemd work (probing, creating, writing, reading, removing) is delegated to
//! `cgroupfs`; this module itself only reads `/proc` and our own `RLIMIT_NOFILE`. It never spawns
//! or signals Instance processes (that is `process`), never sets `RLIMIT_AS` (Bun reserves tens of
//! GB of address space and would crash at start), never touches the state file, never removes a
//! cgroup it did not name, and never re-exports `cgroupfs` items.

use std::fs;
use std::io;
use std::path::PathBuf;

use rustix::process::{Resource, Rlimit};

use super::cgroupfs::{self, PREFIX, Probe, Setting};
use crate::limits::Limits;

/// The file-descriptor cap per Instance (Bun raises its soft limit to the hard one by itself).
const NOFILE_CAP: u64 = 65_536;
/// Which mechanism enforces limits on this machine, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    Systemd,
    /// `root`: the directory the Instances' cgroups are created in.
    CgroupV2 {
        root: PathBuf,
    },
    /// The directories, one per hierarchy, the Instances' cgroups are created in.
    CgroupV1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    Rlimit,
}

impl Mechanism {
    /// `systemd`, `cgroup` or `rlimit`, as `doctor` names it.
    pub fn word(&self) -> &'static str {
        match self {
            Mechanism::Systemd => "systemd",
            Mechanism::CgroupV2 { .. } | Mechanism::CgroupV1 { .. } => "cgroup",
            Mechanism::Rlimit => "rlimit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub mechanism: Mechanism,
    /// One human sentence.
    pub reason: String,
}

/// Probes, in order: a systemd user manager, a writable cgroup v2 subtree, writable cgroup v1
/// hierarchies (memory, pids, cpu); else rlimits. Takes up to about 2 s (the systemd probe); the
/// cgroup probes run off the async threads. Its only lasting effect: enabling controllers for the
/// children of our own cgroup v2.
pub async fn detect() -> Detection {
    let systemd = cgroupfs::probe_systemd().await;
    if systemd.is_ok() {
        return decide(systemd, None, None);
    }
    let cgroups = tokio::task::spawn_blocking(|| {
        let (mounts, members) = cgroupfs::own_cgroups();
        let v2 = cgroupfs::probe_v2(&mounts, &members);
        if v2.is_ok() {
            return (v2, None);
        }
        let v1 = ["memory", "pids", "cpu"].map(|c| cgroupfs::probe_v1(&mounts, &members, c));
        (v2, Some(v1))
    })
    .await;
    match cgroups {
        Ok((v2, v1)) => decide(systemd, Some(v2), v1),
        Err(err) => Detection {
            mechanism: Mechanism::Rlimit,
            reason: format!("probing the cgroups failed: {err}"),
        },
    }
}

/// The first mechanism that works, and why the earlier ones do not; `None` means not probed.
fn decide(systemd: Result<(), String>, v2: Option<Probe>, v1: Option<[Probe; 3]>) -> Detection {
    let done = |mechanism, why: Vec<String>| Detection {
        mechanism,
        reason: why.join("; "),
    };
    let Err(systemd) = systemd else {
        let why = "systemd-run --user works, so each Instance gets a transient scope";
        return done(Mechanism::Systemd, vec![why.into()]);
    };
    let mut why = vec![systemd];
    match v2 {
        Some(Ok(root)) => {
            why.push(format!(
                "cgroup v2 {} accepts child cgroups",
                root.display()
            ));
            return done(Mechanism::CgroupV2 { root }, why);
        }
        Some(Err(e)) => why.push(format!("cgroup v2: {e}")),
        None => {}
    }
    let [memory, pids, cpu] = v1.unwrap_or_else(|| [(); 3].map(|()| Err("not probed".into())));
    if let (Err(e), Err(_)) = (&memory, &pids) {
        why.push(format!(
            "cgroup v1 memory and pids are not writable ({e}); only rlimits and the RSS watchdog apply"
        ));
        return done(Mechanism::Rlimit, why);
    }
    let named = [("memory", &memory), ("pids", &pids), ("cpu", &cpu)];
    let writable: Vec<&str> = named
        .iter()
        .filter(|(_, p)| p.is_ok())
        .map(|(n, _)| *n)
        .collect();
    why.push(match writable.split_last() {
        Some((last, [])) => format!("cgroup v1 {last} is writable by this user"),
        Some((last, rest)) => {
            format!(
                "cgroup v1 {} and {last} are writable by this user",
                rest.join(", ")
            )
        }
        None => String::new(),
    });
    let mechanism = Mechanism::CgroupV1 {
        memory: memory.ok(),
        pids: pids.ok(),
        cpu: cpu.ok(),
    };
    done(mechanism, why)
}

/// The cgroups of an Instance; dropping it leaves them in place (see [`Enforced::remove`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    dirs: Vec<PathBuf>,
    /// systemd owns the scope's directories and collects them; we never rmdir them.
    systemd: bool,
}

/// Puts a just-spawned process (and any children it already has) into fresh cgroups named for
/// `name` with `limits`. Empty limits, or [`Mechanism::Rlimit`], give a handle that does nothing.
/// The cgroup work runs off the async threads.
pub async fn enforce(
    mechanism: &Mechanism,
    name: &str,
    pid: i32,
    limits: &Limits,
) -> io::Result<Enforced> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_:.-".contains(c);
    if name.is_empty() || name.starts_with('.') || !name.chars().all(safe) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad cgroup name {name:?}"),
        ));
    }
    let cgroup = format!("{PREFIX}{name}");
    let groups: Vec<(Option<&PathBuf>, Vec<Setting>)> = match mechanism {
        _ if limits.is_empty() => return Ok(Enforced::default()),
        Mechanism::Rlimit => return Ok(Enforced::default()),
        Mechanism::Systemd => {
            let unit = format!("{cgroup}.scope");
            let pids = tokio::task::spawn_blocking(move || tree(pid))
                .await
                .unwrap_or_else(|_| vec![pid]);
            let dirs = cgroupfs::enforce_systemd(&unit, pid, &pids, limits).await?;
            return Ok(Enforced {
                dirs,
                systemd: true,
            });
        }
        Mechanism::CgroupV2 { root } => vec![(Some(root), cgroupfs::plan_v2(limits))],
        Mechanism::CgroupV1 { memory, pids, cpu } => [memory, pids, cpu]
            .map(Option::as_ref)
            .into_iter()
            .zip(cgroupfs::plan_v1(limits))
            .collect(),
    };
    let groups: Vec<(Option<PathBuf>, Vec<Setting>)> = groups
        .into_iter()
        .map(|(parent, plan)| (parent.cloned(), plan))
        .collect();
    let (name, cgroup) = (name.to_owned(), cgroup.clone());
    let created = tokio::task::spawn_blocking(move || create_all(&name, &cgroup, pid, groups))
        .await
        .map_err(io::Error::other)?;
    match created {
        Ok(enforced) => Ok(enforced),
        Err((enforced, err)) => {
            enforced.remove().await;
            Err(err)
        }
    }
}

/// Creates the cgroups of `plan` under their parents and moves `pid`'s tree into them; on a
/// failure, returns what was created so far with the error.
fn create_all(
    name: &str,
    cgroup: &str,
    pid: i32,
    groups: Vec<(Option<PathBuf>, Vec<Setting>)>,
) -> Result<Enforced, (Enforced, io::Error)> {
    let mut enforced = Enforced::default();
    for (parent, plan) in groups.into_iter().filter(|(_, plan)| !plan.is_empty()) {
        let Some(parent) = parent else {
            tracing::warn!(
                name,
                file = plan[0].0,
                "no writable cgroup for this limit; not enforced"
            );
            continue;
        };
        let dir = parent.join(cgroup);
        enforced.dirs.push(dir.clone());
        if let Err(err) = cgroupfs::create(&dir, &plan, pid) {
            return Err((enforced, err));
        }
        for child in tree(pid).into_iter().skip(1) {
            let _ = cgroupfs::add(&dir, child);
        }
    }
    Ok(enforced)
}

impl Enforced {
    /// Memory charged to the Instance's cgroup now (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub fn memory_current(&self) -> Option<u64> {
        cgroupfs::memory_current(&self.dirs)
    }

    /// Whether the kernel OOM-killed a process in the cgroup (`oom_kill N` in v2 `memory.events`
    /// or v1 `memory.oom_control`).
    pub fn oom_killed(&self) -> bool {
        cgroupfs::oom_killed(&self.dirs)
    }

    /// Removes the cgroups (best effort), moving any leftover process to the parent first. May
    /// take up to half a second while the kernel finishes releasing exited processes.
    pub async fn remove(self) {
        if self.systemd {
            return; // CollectMode=inactive-or-failed: systemd removes the scope once it is empty.
        }
        cgroupfs::remove(self.dirs).await;
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }
}

/// Reopens an Instance's cgroups by name (for a daemon that restarted, possibly in another cgroup
/// of its own): first where [`enforce`] creates them, else anywhere in the mounted hierarchies.
pub fn reopen(mechanism: &Mechanism, name: &str) -> Option<Enforced> {
    let cgroup = format!("{PREFIX}{name}");
    let (leaf, direct) = match mechanism {
        Mechanism::Rlimit => return None,
        Mechanism::Systemd => (format!("{cgroup}.scope"), vec![]),
        Mechanism::CgroupV2 { root } => (cgroup.clone(), vec![root.join(&cgroup)]),
        Mechanism::CgroupV1 { memory, pids, cpu } => (
            cgroup.clone(),
            [memory, pids, cpu]
                .into_iter()
                .flatten()
                .map(|p| p.join(&cgroup))
                .collect(),
        ),
    };
    let dirs = cgroupfs::find(direct, &leaf);
    let systemd = *mechanism == Mechanism::Systemd;
    (!dirs.is_empty()).then_some(Enforced { dirs, systemd })
}

/// rlimits safe for Bun, to apply with `setrlimit` in `pre_exec` (compute them before the fork):
/// a capped `RLIMIT_NOFILE` and no core dumps. Never `RLIMIT_AS`.
pub fn rlimits() -> Vec<(Resource, Rlimit)> {
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    let nofile = hard.map_or(NOFILE_CAP, |h| h.min(NOFILE_CAP));
    let both = |n| Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    vec![(Resource::Nofile, both(nofile)), (Resource::Core, both(0))]
}

/// Sum of VmRSS of `pid` and all its descendants, in bytes (0 if it is gone).
pub fn tree_rss(pid: i32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(super::process::rss_bytes)
        .sum()
}

/// The CPU time (user + system) `pid` and its living descendants have used.
pub fn tree_cpu(pid: i32) -> std::time::Duration {
    let ticks: u64 = tree(pid)
        .into_iter()
        .filter_map(|p| cpu_ticks(&fs::read_to_string(format!("/proc/{p}/stat")).ok()?))
        .sum();
    std::time::Duration::from_millis(ticks.saturating_mul(1000 / CLOCK_TICKS))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux the manager runs on (the kernel's `USER_HZ`).
const CLOCK_TICKS: u64 = 100;

/// `utime + stime` from a `/proc/<pid>/stat` line (the fields after the command's last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `pid` followed by its living descendants, found through the ppid in every `/proc/<n>/stat`.
fn tree(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            Some((
                p,
                parse_ppid(&fs::read_to_string(format!("/proc/{p}/stat")).ok()?)?,
            ))
        })
        .collect();
    let mut found = vec![pid];
    let mut next = 0;
    while let Some(&parent) = found.get(next) {
        found.extend(
            parents
                .iter()
                .filter(|&&(p, pp)| pp == parent && p != pid)
                .map(|(p, _)| *p),
        );
        next += 1;
    }
    found
}

fn parse_ppid(stat: &str) -> Option<i32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn detection_falls_back_in_order_and_says_why() {
        let seen = |v2: Option<Probe>, v1| {
            let systemd = Err("systemd-run --user failed: Failed to connect to bus".into());
            decide(systemd, v2, v1)
        };
        let denied =
            || Err::<PathBuf, _>("cannot create a cgroup in /x: Permission denied".to_owned());
        let d = seen(
            Some(Err("no controllers".into())),
            Some([Ok("/m".into()), Ok("/p".into()), denied()]),
        );
        assert_eq!(
            d.mechanism,
            Mechanism::CgroupV1 {
                memory: Some("/m".into()),
                pids: Some("/p".into()),
                cpu: None
            }
        );
        assert_eq!(
            d.reason,
            "systemd-run --user failed: Failed to connect to bus; cgroup v2: no controllers; \
             cgroup v1 memory and pids are writable by this user"
        );
        let d = seen(Some(Ok("/u".into())), None);
        assert_eq!(d.mechanism, Mechanism::CgroupV2 { root: "/u".into() });
        assert_eq!(decide(Ok(()), None, None).mechanism, Mechanism::Systemd);
        let d = seen(
            Some(Err("x".into())),
            Some([denied(), denied(), Ok("/c".into())]),
        );
        assert_eq!(d.mechanism, Mechanism::Rlimit);
        assert!(d.reason.ends_with("(cannot create a cgroup in /x: Permission denied); only rlimits and the RSS watchdog apply"), "{}", d.reason);
    }

    #[test]
    fn rlimits_never_cap_address_space() {
        let limits = rlimits();
        assert!(limits.iter().all(|(r, _)| *r != Resource::As));
        assert!(limits.contains(&(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0)
            }
        )));
        let (_, nofile) = limits
            .iter()
            .find(|(r, _)| *r == Resource::Nofile)
            .expect("nofile");
        assert!(nofile.current.is_some_and(|n| n > 0 && n <= NOFILE_CAP));
    }

    #[test]
    fn cpu_ticks_are_user_plus_system_time() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 99 0 0";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks("garbage"), None);
        let _ = tree_cpu(std::process::id() as i32);
    }

    #[test]
    fn tree_rss_of_this_process_is_positive() {
        let me = std::process::id() as i32;
        assert!(tree_rss(me) > 0);
        assert_eq!(tree(me).first(), Some(&me));
        assert_eq!(tree_rss(i32::MAX), 0);
        assert_eq!(parse_ppid("12 (a (b) c) S 7 12 12 0"), Some(7));
    }

    /// Needs root (or a delegated cgroup) to exercise the cgroup path; without one, the handle
    /// must be a no-op. On the development machines (root, cgroup v1) the cgroup path runs.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a throwaway python3 memory hog, not an Instance
    async fn a_memory_limit_oom_kills_a_hog_and_remove_cleans_up() {
        use std::io::Write as _;
        use std::os::unix::process::ExitStatusExt as _;
        let detection = detect().await;
        assert!(!detection.reason.is_empty());
        match &detection.mechanism {
            Mechanism::CgroupV2 { root } => assert!(root.is_dir(), "{root:?}"),
            Mechanism::CgroupV1 { memory, pids, cpu } => {
                assert!(memory.is_some() || pids.is_some(), "{detection:?}");
                assert!(
                    [memory, pids, cpu]
                        .into_iter()
                        .flatten()
                        .all(|d| d.is_dir()),
                    "{detection:?}"
                );
            }
            Mechanism::Systemd | Mechanism::Rlimit => {}
        }
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_percent: Some(50),
            tasks: Some(64),
        };
        // The hog waits for stdin to close, so it allocates only once it is in its cgroup.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; sys.stdin.read(); b = bytearray(200*1024*1024)",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for this test");
        let pid = child.id() as i32;
        let name = format!("test-oom-{}", std::process::id());
        let enforced = enforce(&detection.mechanism, &name, pid, &limits).await;
        if detection.mechanism == Mechanism::Rlimit {
            let _ = child.kill();
            let _ = child.wait();
            let enforced = enforced.expect("the rlimit mechanism cannot fail");
            assert!(enforced.paths().is_empty(), "{:?}", enforced.paths());
            assert!(!enforced.oom_killed() && enforced.memory_current().is_none());
            return;
        }
        let enforced = match enforced {
            Ok(enforced) => enforced,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("enforce with {:?} failed: {err}", detection.mechanism);
            }
        };
        assert!(!enforced.paths().is_empty());
        assert!(enforced.memory_current().is_some());
        let read = |file: &str| {
            let found = enforced
                .paths()
                .iter()
                .find_map(|d| fs::read_to_string(d.join(file)).ok());
            found.map(|t| t.trim().to_owned())
        };
        if let Mechanism::CgroupV1 { pids, cpu, .. } = &detection.mechanism {
            assert_eq!(read("memory.limit_in_bytes").as_deref(), Some("67108864"));
            assert_eq!(
                pids.as_ref().and(read("pids.max")),
                pids.as_ref().map(|_| "64".into())
            );
            assert_eq!(
                cpu.as_ref().and(read("cpu.cfs_quota_us")),
                cpu.as_ref().map(|_| "50000".into())
            );
        }
        if let Mechanism::CgroupV2 { .. } = &detection.mechanism {
            assert_eq!(read("memory.max").as_deref(), Some("67108864"));
            assert_eq!(read("pids.max").as_deref(), Some("64"));
        }
        let reopened = reopen(&detection.mechanism, &name).expect("reopen finds the cgroups");
        assert_eq!(reopened.paths(), enforced.paths());
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(b"go");
        drop(stdin);
        let status = child.wait().expect("wait");
        assert_eq!(
            status.signal(),
            Some(9),
            "expected an OOM kill, got {status}"
        );
        assert!(
            enforced.oom_killed(),
            "oom_kill is counted in {:?}",
            enforced.paths()
        );
        let paths = enforced.paths();
        enforced.remove().await;
        if detection.mechanism != Mechanism::Systemd {
            assert!(paths.iter().all(|p| !p.exists()), "left behind: {paths:?}");
        }
        assert!(
            reopen(
                &detection.mechanism,
                &format!("test-none-{}", std::process::id())
            )
            .is_none()
        );
    }
}
