//! Resource limits for Instances: parsing limit values, finding out which mechanism this machine
//! offers (systemd scope, cgroup v2, cgroup v1, or only rlimits), putting a just-spawned Instance
//! into its own cgroups and reading them back (memory use, OOM kills), and the RSS of a process tree.
//!
//! Decisions are pure functions (value parsing, `/proc` and mountinfo parsing, the detection order,
//! which cgroup files to write); the effects are confined to cgroupfs, `/proc` reads and the
//! `systemd-run`/`busctl` calls. This module never spawns or signals Instance processes (that is
//! `process`), never sets `RLIMIT_AS` (Bun reserves tens of GB of address space and would crash at
//! start), never touches the state file, and never removes a cgroup it did not name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit};

/// Every cgroup (and systemd scope) of an Instance is called `opencode-manager-<name>`.
const PREFIX: &str = "opencode-manager-";
const CPU_PERIOD_US: u64 = 100_000;
/// The file-descriptor cap per Instance (Bun raises its soft limit to the hard one by itself).
const NOFILE_CAP: u64 = 65_536;
/// A memory limit below this is taken for a unit mistake ("512" meaning 512 MiB).
const MIN_MEMORY: u64 = 1 << 20;

/// Per-instance limits (None = unlimited). Parsed from config / .env values like "2G", "512M",
/// "150%" (cpu), "512" (tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<u32>,
    pub tasks: Option<u32>,
}

impl Limits {
    /// Parses the three settings; an absent or empty value, `none`, `unlimited` or `infinity` means
    /// no limit. Errors name the setting, the value and its problem.
    pub fn parse(
        memory: Option<&str>,
        cpu: Option<&str>,
        tasks: Option<&str>,
    ) -> Result<Limits, String> {
        Ok(Limits {
            memory_bytes: field("memory", memory, |text| match parse_bytes(text)? {
                bytes if bytes < MIN_MEMORY => Err(format!(
                    "{text:?} is below 1M; give a unit, for example {text}M"
                )),
                bytes => Ok(bytes),
            })?,
            cpu_percent: field("cpu", cpu, |text| {
                let digits = text.strip_suffix('%').unwrap_or(text).trim();
                positive(digits, 100_000)
                    .map_err(|why| format!("{text:?} {why} (a percentage of one CPU, like 150%)"))
            })?,
            tasks: field("tasks", tasks, |text| {
                positive(text, u32::MAX).map_err(|why| format!("{text:?} {why}"))
            })?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self == &Limits::default()
    }
}

fn field<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let unset = |v: &str| ["", "none", "unlimited", "infinity"].contains(&&*v.to_lowercase());
    let value = value.map(str::trim).filter(|v| !unset(v));
    value
        .map(|text| parse(text).map_err(|e| format!("{name} limit: {e}")))
        .transpose()
}

fn positive(text: &str, max: u32) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("is more than {max}")),
        Err(_) => Err("is not a whole number".into()),
    }
}

/// Parses a size: a number of bytes, or a number (fractions allowed) with a binary unit
/// `K`, `M`, `G` or `T` (optionally followed by `B` or `iB`, any case): "512M", "1.5G", "2GiB".
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    let bad = || format!("{text:?} is not a size (for example 512M or 2G)");
    let too_big = || format!("{text:?} is too large");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut bytes = whole.checked_mul(1 << shift).ok_or_else(too_big)?;
    if !fraction.is_empty() {
        let tenths: u128 = fraction.parse().map_err(|_| bad())?;
        let extra = (tenths << shift) / 10u128.pow(fraction.len() as u32);
        bytes = u64::try_from(extra)
            .ok()
            .and_then(|extra| bytes.checked_add(extra))
            .ok_or_else(too_big)?;
    }
    match bytes {
        0 => Err(format!("{text:?} must be greater than zero")),
        bytes => Ok(bytes),
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub mechanism: Mechanism,
    /// One human sentence.
    pub reason: String,
}

type Probe = Result<PathBuf, String>;

/// Probes, in order: a systemd user manager, a writable cgroup v2 subtree, writable cgroup v1
/// hierarchies (memory, pids, cpu); else rlimits. Blocks for up to about 2 s (the systemd probe).
/// Its only lasting effect: enabling controllers for the children of our own cgroup v2.
pub fn detect() -> Detection {
    let systemd = probe_systemd();
    if systemd.is_ok() {
        return decide(systemd, None, None);
    }
    let (mounts, members) = own_cgroups();
    let v2 = probe_v2(&mounts, &members);
    if v2.is_ok() {
        return decide(systemd, Some(v2), None);
    }
    let v1 = ["memory", "pids", "cpu"].map(|c| probe_v1(&mounts, &members, c));
    decide(systemd, Some(v2), Some(v1))
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

fn probe_systemd() -> Result<(), String> {
    let systemd_run = on_path("systemd-run").ok_or("systemd-run is not on PATH")?;
    let args = ["--user", "--scope", "--quiet", "--", "true"].map(String::from);
    run(&systemd_run, &args, Duration::from_secs(2))
        .map_err(|e| format!("systemd-run --user failed: {e}"))?;
    on_path("busctl")
        .map(drop)
        .ok_or("systemd-run --user works but busctl is not on PATH".into())
}

fn probe_v2(mounts: &[Mount], members: &[Member]) -> Probe {
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

fn probe_v1(mounts: &[Mount], members: &[Member], controller: &str) -> Probe {
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

/// The cgroups of an Instance; dropping it leaves them in place (see [`Enforced::remove`]).
#[derive(Debug, Default)]
pub struct Enforced {
    dirs: Vec<PathBuf>,
    /// systemd owns the scope's directories and collects them; we never rmdir them.
    systemd: bool,
}

/// A cgroup file, its value, and whether the limit fails without it (swap accounting and the v2
/// `cpu` controller may be absent).
type Setting = (&'static str, String, bool);

fn plan_v2(limits: &Limits) -> Vec<Setting> {
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
fn plan_v1(limits: &Limits) -> [Vec<Setting>; 3] {
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

/// Puts a just-spawned process (and any children it already has) into fresh cgroups named for
/// `name` with `limits`. Empty limits, or [`Mechanism::Rlimit`], give a handle that does nothing.
pub fn enforce(
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
        Mechanism::Systemd => return enforce_systemd(&cgroup, pid, limits),
        Mechanism::CgroupV2 { root } => vec![(Some(root), plan_v2(limits))],
        Mechanism::CgroupV1 { memory, pids, cpu } => [memory, pids, cpu]
            .map(Option::as_ref)
            .into_iter()
            .zip(plan_v1(limits))
            .collect(),
    };
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
        let dir = parent.join(&cgroup);
        enforced.dirs.push(dir.clone());
        if let Err(err) = join_new_cgroup(&dir, &plan, pid) {
            enforced.remove();
            return Err(err);
        }
    }
    Ok(enforced)
}

fn join_new_cgroup(dir: &Path, plan: &[Setting], pid: i32) -> io::Result<()> {
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
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string())?;
    for child in tree(pid).into_iter().skip(1) {
        let _ = fs::write(&procs, child.to_string());
    }
    Ok(())
}

/// Asks the user's systemd for a transient scope around the process tree, as `systemd-run
/// --scope` does for itself, then waits (up to 2 s) until the process is in it.
fn enforce_systemd(cgroup: &str, pid: i32, limits: &Limits) -> io::Result<Enforced> {
    let unit = format!("{cgroup}.scope");
    let busctl = on_path("busctl").ok_or_else(|| io::Error::other("busctl is not on PATH"))?;
    run(
        &busctl,
        &busctl_args(&unit, &tree(pid), limits),
        Duration::from_secs(5),
    )
    .map_err(|e| io::Error::other(format!("creating {unit}: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let (mounts, _) = own_cgroups();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let dirs: Vec<PathBuf> = parse_proc_cgroup(&text)
            .iter()
            .filter(|m| m.path.ends_with(&format!("/{unit}")))
            .filter_map(|m| mount_of(&mounts, m).map(|mt| cgroup_dir(&mt.point, &mt.root, &m.path)))
            .collect();
        if !dirs.is_empty() {
            return Ok(Enforced {
                dirs,
                systemd: true,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!(
        "process {pid} did not move into {unit}"
    )))
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

impl Enforced {
    /// Memory charged to the Instance's cgroup now (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub fn memory_current(&self) -> Option<u64> {
        let read =
            |dir: &PathBuf, file| fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok();
        self.dirs
            .iter()
            .find_map(|d| read(d, "memory.current").or_else(|| read(d, "memory.usage_in_bytes")))
    }

    /// Whether the kernel OOM-killed a process in the cgroup (`oom_kill N` in v2 `memory.events`
    /// or v1 `memory.oom_control`).
    pub fn oom_killed(&self) -> bool {
        let kills = |dir: &PathBuf, file| {
            fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| key_value(&t, "oom_kill"))
        };
        self.dirs
            .iter()
            .any(|d| kills(d, "memory.events").or_else(|| kills(d, "memory.oom_control")) > Some(0))
    }

    /// Removes the cgroups (best effort), moving any leftover process to the parent first. May
    /// block for up to half a second while the kernel finishes releasing exited processes.
    pub fn remove(self) {
        if self.systemd {
            return; // CollectMode=inactive-or-failed: systemd removes the scope once it is empty.
        }
        for dir in &self.dirs {
            for _ in 0..25 {
                match fs::remove_dir(dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {}
                    _ => break,
                }
                if let (Some(parent), Ok(procs)) =
                    (dir.parent(), fs::read_to_string(dir.join("cgroup.procs")))
                {
                    for pid in procs.split_whitespace() {
                        let _ = fs::write(parent.join("cgroup.procs"), pid);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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
    let mut dirs: Vec<PathBuf> = direct.into_iter().filter(|d| d.is_dir()).collect();
    if dirs.is_empty() {
        let wanted = |m: &&Mount| {
            m.fstype == "cgroup2"
                || m.options
                    .iter()
                    .any(|o| ["memory", "pids", "cpu"].contains(&o.as_str()))
        };
        dirs = own_cgroups()
            .0
            .iter()
            .filter(wanted)
            .filter_map(|m| find_named(&m.point, &leaf, 8))
            .collect();
    }
    let systemd = *mechanism == Mechanism::Systemd;
    (!dirs.is_empty()).then_some(Enforced { dirs, systemd })
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

/// A cgroup filesystem from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

/// A line of `/proc/<pid>/cgroup`.
#[derive(Debug, PartialEq, Eq)]
struct Member {
    controllers: Vec<String>,
    path: String,
}

fn own_cgroups() -> (Vec<Mount>, Vec<Member>) {
    let read = |p| fs::read_to_string(p).unwrap_or_default();
    (
        parse_mountinfo(&read("/proc/self/mountinfo")),
        parse_proc_cgroup(&read("/proc/self/cgroup")),
    )
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
fn run(program: &Path, args: &[String], timeout: Duration) -> Result<(), String> {
    // Only systemd-run and busctl, never an Instance: those are spawned by `instance::process`.
    #[allow(clippy::disallowed_methods)]
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        _ if status.success() => Ok(()),
        Some(line) => Err(line.to_owned()),
        None => Err(format!("exited with {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_fractions() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("2 GB", 2 << 30),
            ("1.5G", 3 << 29),
            (".5K", 512),
            ("64K", 64 << 10),
            ("1T", 1 << 40),
            (" 100b ", 100),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for (text, problem) in [
            ("", "not a size"),
            ("G", "not a size"),
            ("1.2.3G", "not a size"),
            ("-1G", "unknown unit"),
            ("12X", "unknown unit \"x\""),
            ("0", "greater than zero"),
            ("0.0M", "greater than zero"),
            ("99999999999T", "too large"),
            ("18446744073709551616", "not a size"),
        ] {
            let err = parse_bytes(text).expect_err(text);
            assert!(err.contains(problem), "{text}: {err}");
        }
    }

    #[test]
    fn limits_parse_each_setting_and_name_the_bad_one() {
        assert_eq!(
            Limits::parse(Some("2G"), Some("150%"), Some("512")),
            Ok(Limits {
                memory_bytes: Some(2 << 30),
                cpu_percent: Some(150),
                tasks: Some(512)
            })
        );
        assert_eq!(
            Limits::parse(None, Some("50"), None).map(|l| l.cpu_percent),
            Ok(Some(50))
        );
        let none = Limits::parse(Some(""), Some("none"), Some("Unlimited")).expect("no limits");
        assert!(none.is_empty());
        assert!(
            !Limits {
                tasks: Some(1),
                ..Limits::default()
            }
            .is_empty()
        );
        for (memory, cpu, tasks, problem) in [
            (Some("512"), None, None, "memory limit: \"512\" is below 1M"),
            (Some("lots"), None, None, "memory limit:"),
            (
                None,
                Some("0%"),
                None,
                "cpu limit: \"0%\" must be greater than zero",
            ),
            (
                None,
                Some("1.5"),
                None,
                "cpu limit: \"1.5\" is not a whole number",
            ),
            (None, Some("200000%"), None, "is more than 100000"),
            (
                None,
                None,
                Some("-3"),
                "tasks limit: \"-3\" is not a whole number",
            ),
            (
                None,
                None,
                Some("0"),
                "tasks limit: \"0\" must be greater than zero",
            ),
        ] {
            let err = Limits::parse(memory, cpu, tasks).expect_err(problem);
            assert!(err.starts_with(problem) || err.contains(problem), "{err}");
        }
    }

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
        assert_eq!(parse_ppid("12 (a (b) c) S 7 12 12 0"), Some(7));
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
    fn tree_rss_of_this_process_is_positive() {
        let me = std::process::id() as i32;
        assert!(tree_rss(me) > 0);
        assert_eq!(tree(me).first(), Some(&me));
        assert_eq!(tree_rss(i32::MAX), 0);
    }

    /// Needs root (or a delegated cgroup) to exercise the cgroup path; without one, the handle
    /// must be a no-op. On the development machines (root, cgroup v1) the cgroup path runs.
    #[test]
    #[allow(clippy::disallowed_methods)] // a throwaway python3 memory hog, not an Instance
    fn a_memory_limit_oom_kills_a_hog_and_remove_cleans_up() {
        use std::io::Write as _;
        use std::os::unix::process::ExitStatusExt as _;
        let detection = detect();
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
        let enforced = enforce(&detection.mechanism, &name, pid, &limits);
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
        enforced.remove();
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
