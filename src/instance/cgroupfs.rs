//! The cgroup plumbing behind `limits`: finding the cgroup hierarchies (parsing
//! `/proc/self/mountinfo` and `/proc/<pid>/cgroup`), probing where this user may create cgroups,
//! planning which files each cgroup version gets for a [`Limits`] (and the matching systemd scope
//! properties), and creating, filling, reading and removing the Instances' cgroups, directly or
//! through a systemd transient scope.
//!
//! This module does IO, on cgroups only: files under the cgroup mounts, the `/proc` files that
//! locate them, and the `systemd-run`/`busctl` calls that make systemd create a scope; the parsing
//! and planning functions are pure and kept apart from that IO. It never decides which mechanism
//! to use or what the limits are (that is `limits`), never spawns or signals Instance processes,
//! never sets rlimits, never touches the state file, and never removes a cgroup it was not handed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::limits::Limits;

/// Every cgroup (and systemd scope) of an Instance is called `opencode-manager-<name>`.
pub(super) const PREFIX: &str = "opencode-manager-";
const CPU_PERIOD_US: u64 = 100_000;

/// A directory a cgroup can be created in, or why there is none.
pub(super) type Probe = Result<PathBuf, String>;

/// A cgroup file, its value, and whether the limit fails without it (swap accounting and the v2
/// `cpu` controller may be absent).
pub(super) type Setting = (&'static str, String, bool);

/// A cgroup filesystem from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

/// A line of `/proc/<pid>/cgroup`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Member {
    controllers: Vec<String>,
    path: String,
}

// Pure: parsing and planning.

pub(super) fn plan_v2(limits: &Limits) -> Vec<Setting> {
    let mut plan = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        plan.extend([
            ("memory.max", bytes.to_string(), true),
            ("memory.swap.max", "0".into(), false),
        ]);
    }
    if let Some(tasks) = limits.tasks {
        plan.push(("pids.max", tasks.to_string(), true));
    }
    if let Some(percent) = limits.cpu_percent {
        plan.push((
            "cpu.max",
            format!("{} {CPU_PERIOD_US}", u64::from(percent) * 1000),
            false,
        ));
    }
    plan
}

/// Settings per v1 hierarchy: memory, pids, cpu.
pub(super) fn plan_v1(limits: &Limits) -> [Vec<Setting>; 3] {
    let memory = limits.memory_bytes.map(|bytes| {
        let bytes = bytes.to_string();
        vec![
            ("memory.limit_in_bytes", bytes.clone(), true),
            ("memory.memsw.limit_in_bytes", bytes, false),
        ]
    });
    let pids = limits
        .tasks
        .map(|n| vec![("pids.max", n.to_string(), true)]);
    let cpu = limits.cpu_percent.map(|p| {
        let quota = (u64::from(p) * 1000).to_string();
        vec![
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string(), true),
            ("cpu.cfs_quota_us", quota, true),
        ]
    });
    [memory, pids, cpu].map(Option::unwrap_or_default)
}

/// `busctl --user call … StartTransientUnit` for a scope holding `pids` (unit names have no spaces).
fn busctl_args(unit: &str, pids: &[i32], limits: &Limits) -> Vec<String> {
    let pid_list: Vec<String> = pids.iter().map(i32::to_string).collect();
    let mut props = vec![
        "CollectMode s inactive-or-failed".to_owned(),
        format!("PIDs au {} {}", pids.len(), pid_list.join(" ")),
    ];
    if let Some(bytes) = limits.memory_bytes {
        props.extend([format!("MemoryMax t {bytes}"), "MemorySwapMax t 0".into()]);
    }
    if let Some(tasks) = limits.tasks {
        props.push(format!("TasksMax t {tasks}"));
    }
    if let Some(percent) = limits.cpu_percent {
        props.push(format!(
            "CPUQuotaPerSecUSec t {}",
            u64::from(percent) * 10_000
        ));
    }
    let call = format!(
        "--user call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
         StartTransientUnit ssa(sv)a(sa(sv)) {unit} fail {} {} 0",
        props.len(),
        props.join(" ")
    );
    call.split(' ').map(String::from).collect()
}

/// The number after `key` in a file of "key value" lines (memory.events, memory.oom_control).
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(key)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `id parent dev root point opts [tags] - fstype source superopts`, for cgroup filesystems only.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mount = |line: &str| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let fstype = (*right.first()?).to_owned();
        let options = right
            .get(2)
            .map_or_else(Vec::new, |o| o.split(',').map(String::from).collect());
        let (root, point) = ((*left.get(3)?).to_owned(), PathBuf::from(left.get(4)?));
        Some(Mount {
            root,
            point,
            fstype,
            options,
        })
    };
    text.lines()
        .filter_map(mount)
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect()
}

/// `N:controllers:path` lines; the v2 line has no controllers.
fn parse_proc_cgroup(text: &str) -> Vec<Member> {
    let member = |line: &str| {
        let (_, rest) = line.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        let controllers = controllers
            .split(',')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        Some(Member {
            controllers,
            path: path.to_owned(),
        })
    };
    text.lines().filter_map(member).collect()
}

fn mount_of<'a>(mounts: &'a [Mount], member: &Member) -> Option<&'a Mount> {
    mounts.iter().find(|m| match member.controllers.as_slice() {
        [] => m.fstype == "cgroup2",
        wanted => m.fstype == "cgroup" && wanted.iter().all(|c| m.options.contains(c)),
    })
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` whose mount root is `root`.
fn cgroup_dir(point: &Path, root: &str, path: &str) -> PathBuf {
    let relative = match path.strip_prefix(root) {
        Some(rest) if root != "/" && (rest.is_empty() || rest.starts_with('/')) => rest,
        _ => path,
    };
    match relative.trim_start_matches('/') {
        "" => point.to_owned(),
        relative => point.join(relative),
    }
}

// IO: finding and probing the hierarchies.

/// The cgroup mounts and this process's cgroups (empty if `/proc` cannot be read).
pub(super) fn own_cgroups() -> (Vec<Mount>, Vec<Member>) {
    let read = |p| fs::read_to_string(p).unwrap_or_default();
    (
        parse_mountinfo(&read("/proc/self/mountinfo")),
        parse_proc_cgroup(&read("/proc/self/cgroup")),
    )
}

pub(super) async fn probe_systemd() -> Result<(), String> {
    let systemd_run = on_path("systemd-run").ok_or("systemd-run is not on PATH")?;
    let args = ["--user", "--scope", "--quiet", "--", "true"].map(String::from);
    run(&systemd_run, &args, Duration::from_secs(2))
        .await
        .map_err(|e| format!("systemd-run --user failed: {e}"))?;
    on_path("busctl")
        .map(drop)
        .ok_or("systemd-run --user works but busctl is not on PATH".into())
}

/// Our own cgroup v2, once it has the memory and pids controllers enabled for its children (this
/// enables them, and cpu if it can) and accepts a child cgroup.
pub(super) fn probe_v2(mounts: &[Mount], members: &[Member]) -> Probe {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("not mounted")?;
    let member = members
        .iter()
        .find(|m| m.controllers.is_empty())
        .ok_or("not in /proc/self/cgroup")?;
    let dir = cgroup_dir(&mount.point, &mount.root, &member.path);
    let has = |file: &str, c: &str| {
        fs::read_to_string(dir.join(file)).is_ok_and(|t| t.split_whitespace().any(|w| w == c))
    };
    if !(has("cgroup.controllers", "memory") && has("cgroup.controllers", "pids")) {
        return Err(format!(
            "{} has no memory and pids controllers",
            dir.display()
        ));
    }
    let control = dir.join("cgroup.subtree_control");
    if !(has("cgroup.subtree_control", "memory") && has("cgroup.subtree_control", "pids")) {
        fs::write(&control, "+memory +pids").map_err(|e| {
            format!(
                "cannot enable memory and pids below {} ({e}); a cgroup with processes cannot",
                dir.display()
            )
        })?;
    }
    if has("cgroup.controllers", "cpu") && !has("cgroup.subtree_control", "cpu") {
        let _ = fs::write(&control, "+cpu");
    }
    probe_mkdir(dir)
}

/// Our own cgroup in the v1 hierarchy of `controller`, if it accepts a child cgroup.
pub(super) fn probe_v1(mounts: &[Mount], members: &[Member], controller: &str) -> Probe {
    let has = |list: &[String]| list.iter().any(|c| c == controller);
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && has(&m.options))
        .ok_or("not mounted")?;
    let member = members
        .iter()
        .find(|m| has(&m.controllers))
        .ok_or("not in /proc/self/cgroup")?;
    probe_mkdir(cgroup_dir(&mount.point, &mount.root, &member.path))
}

fn probe_mkdir(dir: PathBuf) -> Probe {
    let probe = dir.join(format!("{PREFIX}probe-{}", std::process::id()));
    fs::create_dir(&probe)
        .map_err(|e| format!("cannot create a cgroup in {}: {e}", dir.display()))?;
    let _ = fs::remove_dir(&probe);
    Ok(dir)
}

// IO: the Instances' cgroups.

/// Creates cgroup `dir` (or reuses it), writes `plan` into it and moves `pid` into it.
pub(super) fn create(dir: &Path, plan: &[Setting], pid: i32) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    for (file, value, required) in plan {
        match fs::write(dir.join(file), value) {
            Err(e) if *required => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("writing {}: {e}", dir.join(file).display()),
                ));
            }
            Err(e) => tracing::debug!(file, "optional cgroup setting not applied: {e}"),
            Ok(()) => {}
        }
    }
    add(dir, pid)
}

/// Moves process `pid` into cgroup `dir`.
pub(super) fn add(dir: &Path, pid: i32) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Asks the user's systemd for transient scope `unit` around `pids` (`pid` and its children), as
/// `systemd-run --scope` does for itself, then waits (up to 2 s) until `pid` is in it; returns the
/// scope's directories.
pub(super) async fn enforce_systemd(
    unit: &str,
    pid: i32,
    pids: &[i32],
    limits: &Limits,
) -> io::Result<Vec<PathBuf>> {
    let busctl = on_path("busctl").ok_or_else(|| io::Error::other("busctl is not on PATH"))?;
    run(
        &busctl,
        &busctl_args(unit, pids, limits),
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| io::Error::other(format!("creating {unit}: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let unit = unit.to_owned();
        let dirs = tokio::task::spawn_blocking(move || scope_dirs(pid, &unit))
            .await
            .unwrap_or_default();
        if !dirs.is_empty() {
            return Ok(dirs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(io::Error::other(format!(
        "process {pid} did not move into {unit}"
    )))
}

/// The directories of the cgroups of `pid` named `unit`.
fn scope_dirs(pid: i32, unit: &str) -> Vec<PathBuf> {
    let (mounts, _) = own_cgroups();
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    parse_proc_cgroup(&text)
        .iter()
        .filter(|m| m.path.ends_with(&format!("/{unit}")))
        .filter_map(|m| mount_of(&mounts, m).map(|mt| cgroup_dir(&mt.point, &mt.root, &m.path)))
        .collect()
}

/// Memory charged to the first of `dirs` that has a counter (v2 `memory.current`, v1
/// `memory.usage_in_bytes`).
pub(super) fn memory_current(dirs: &[PathBuf]) -> Option<u64> {
    let read = |dir: &PathBuf, file| fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok();
    dirs.iter()
        .find_map(|d| read(d, "memory.current").or_else(|| read(d, "memory.usage_in_bytes")))
}

/// Whether the kernel OOM-killed a process in one of `dirs` (`oom_kill N` in v2 `memory.events`
/// or v1 `memory.oom_control`).
pub(super) fn oom_killed(dirs: &[PathBuf]) -> bool {
    let kills = |dir: &PathBuf, file| {
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| key_value(&t, "oom_kill"))
    };
    dirs.iter()
        .any(|d| kills(d, "memory.events").or_else(|| kills(d, "memory.oom_control")) > Some(0))
}

/// Removes `dirs` (best effort), moving any leftover process to the parent first. Retries for up
/// to half a second per directory while the kernel finishes releasing exited processes.
pub(super) async fn remove(dirs: Vec<PathBuf>) {
    for dir in dirs {
        for _ in 0..25 {
            let attempt = dir.clone();
            let removed = tokio::task::spawn_blocking(move || try_remove(&attempt))
                .await
                .unwrap_or(true);
            if removed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One attempt: removes `dir`, or moves its processes to the parent so the next attempt can.
fn try_remove(dir: &Path) -> bool {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {}
        _ => return true,
    }
    if let (Some(parent), Ok(procs)) = (dir.parent(), fs::read_to_string(dir.join("cgroup.procs")))
    {
        for pid in procs.split_whitespace() {
            let _ = fs::write(parent.join("cgroup.procs"), pid);
        }
    }
    false
}

/// The directories among `expected` that exist, else every directory named `leaf` (up to 8 levels
/// down) in the mounted cgroup v2 and the memory, pids and cpu v1 hierarchies.
pub(super) fn find(expected: Vec<PathBuf>, leaf: &str) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = expected.into_iter().filter(|d| d.is_dir()).collect();
    if !dirs.is_empty() {
        return dirs;
    }
    let wanted = |m: &&Mount| {
        m.fstype == "cgroup2"
            || m.options
                .iter()
                .any(|o| ["memory", "pids", "cpu"].contains(&o.as_str()))
    };
    own_cgroups()
        .0
        .iter()
        .filter(wanted)
        .filter_map(|m| find_named(&m.point, leaf, 8))
        .collect()
}

fn find_named(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let children: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    let hit = children
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name));
    hit.cloned().or_else(|| {
        (depth > 0)
            .then(|| children.iter().find_map(|p| find_named(p, name, depth - 1)))
            .flatten()
    })
}

// IO: the systemd tools.

fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &PathBuf| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(executable)
}

/// Runs a systemd tool to completion within `timeout`; the error is its first stderr line.
async fn run(program: &Path, args: &[String], timeout: Duration) -> Result<(), String> {
    // Only systemd-run and busctl, never an Instance: those are spawned by `instance::process`.
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        _ if output.status.success() => Ok(()),
        Some(line) => Err(line.to_owned()),
        None => Err(format!("exited with {}", output.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mounts = parse_mountinfo(mountinfo);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(mounts[1].root, "/docker/abc");
        assert_eq!(mounts[2].fstype, "cgroup2");
        let members =
            parse_proc_cgroup("4:memory:/docker/abc/x\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(members[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            mount_of(&mounts, &members[1]).map(|m| &m.point),
            Some(&mounts[0].point)
        );
        assert_eq!(
            mount_of(&mounts, &members[2]).map(|m| m.fstype.as_str()),
            Some("cgroup2")
        );
        let m = &mounts[1];
        assert_eq!(
            cgroup_dir(&m.point, &m.root, &members[0].path),
            Path::new("/sys/fs/cgroup/memory/x")
        );
        assert_eq!(
            cgroup_dir(&m.point, "/", "/a/b"),
            Path::new("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            cgroup_dir(&m.point, "/doc", "/docker"),
            Path::new("/sys/fs/cgroup/memory/docker")
        );
        assert_eq!(
            key_value("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(key_value("low 0\noom 1\n", "oom_kill"), None);
    }

    #[test]
    fn plans_write_the_documented_files() {
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_percent: Some(150),
            tasks: Some(512),
        };
        let files = |plan: &[Setting]| {
            plan.iter()
                .map(|(file, value, _)| format!("{file}={value}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            files(&plan_v2(&limits)),
            [
                "memory.max=67108864",
                "memory.swap.max=0",
                "pids.max=512",
                "cpu.max=150000 100000"
            ]
        );
        let [memory, pids, cpu] = plan_v1(&limits);
        assert_eq!(
            files(&memory),
            [
                "memory.limit_in_bytes=67108864",
                "memory.memsw.limit_in_bytes=67108864"
            ]
        );
        assert_eq!(files(&pids), ["pids.max=512"]);
        assert_eq!(
            files(&cpu),
            ["cpu.cfs_period_us=100000", "cpu.cfs_quota_us=150000"]
        );
        assert!(
            plan_v1(&Limits {
                tasks: Some(5),
                ..Limits::default()
            })[0]
                .is_empty()
        );
        let args = busctl_args("opencode-manager-p.scope", &[10, 11], &limits).join(" ");
        assert!(args.ends_with(
            "StartTransientUnit ssa(sv)a(sa(sv)) opencode-manager-p.scope fail 6 CollectMode s inactive-or-failed \
             PIDs au 2 10 11 MemoryMax t 67108864 MemorySwapMax t 0 TasksMax t 512 CPUQuotaPerSecUSec t 1500000 0"
        ), "{args}");
    }
}
