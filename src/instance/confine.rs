//! Confining an Instance with Landlock: what it may read, write, execute and bind, and the empty
//! capability bounding set, prepared in the daemon before the fork and applied in the child.
//!
//! An Instance and every process its tools start may read and write only its own `repo/` and
//! `instance/` directories, read its deploy key and the manager's `known_hosts` (so `git push`
//! works), read and execute the system directories, its agent's installation and the `PATH`
//! directories that are not part of the manager home, read `/proc` and `/sys`, and use a few device
//! nodes. Nothing else under the manager home is reachable: no other Sandbox, key, token, state,
//! socket or log, nor its own `.env`. Where the kernel allows, TCP bind is limited to the
//! Instance's own port, and signals and abstract unix sockets stay inside the Instance. The ruleset
//! is the one verified with OpenCode 1.18.33: its tools, git and the agent's shell all work under it
//! (`tests/it/isolation.rs`).
//!
//! Everything that allocates or opens a file happens in [`prepare`], in the daemon. The closure
//! that [`install`] registers runs between fork and exec and only calls `prctl` and
//! `landlock_restrict_self`. This module never restricts the daemon itself (Landlock confines the
//! calling thread only, and the daemon must reach every Sandbox).

use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The highest Landlock ABI whose rights this module asks for: the filesystem rights of ABI 5
/// (with `Refer`, `Truncate`, `IoctlDev`), TCP bind of ABI 4 and the scopes of ABI 6. Newer
/// kernels keep these semantics; rights they add are not requested until they are tested here.
const VETTED_ABI: i32 = 6;

/// System directories an agent reads and executes from.
const SYSTEM_EXEC: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// Read-only trees: Bun aborts without `/proc`; it reads its cgroup limits from `/sys`.
const SYSTEM_READ: [&str; 2] = ["/proc", "/sys"];

/// Device nodes shells, git, ssh and Bun open (Bun crashes without `/dev/urandom`).
const DEVICES: [&str; 8] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Files under `/etc` that are often symlinks into `/run` or `/var` (systemd-resolved's
/// `resolv.conf`); their targets are granted read-only so name resolution keeps working.
const ETC_LINKS: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
];

/// What the kernel offers, found once per daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock with this ABI version (2 or more: ABI 1 cannot allow the renames git needs).
    Landlock {
        abi: i32,
    },
    Unavailable {
        reason: String,
    },
}

/// How a launch is confined, as `doctor` and `status` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    Landlock {
        abi: i32,
    },
    /// Not confined; the reason says why (no Landlock here, or the operator turned it off).
    None {
        reason: String,
    },
}

impl Isolation {
    /// `landlock ABI 7`, or `none (<reason>)`.
    pub fn describe(&self) -> String {
        match self {
            Isolation::Landlock { abi } if *abi >= VETTED_ABI => format!("landlock ABI {abi}"),
            Isolation::Landlock { abi } if *abi >= 4 => format!(
                "landlock ABI {abi} (signals and abstract sockets are not scoped: that needs ABI 6)"
            ),
            Isolation::Landlock { abi } => format!(
                "landlock ABI {abi} (TCP bind is not limited and signals are not scoped: that needs ABI 4 and 6)"
            ),
            Isolation::None { reason } => format!("none ({reason})"),
        }
    }

    /// Reads back what [`Isolation::describe`] wrote (for an Instance adopted from the state file).
    pub fn parse(text: &str) -> Isolation {
        if let Some(rest) = text.strip_prefix("landlock ABI ") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(abi) = digits.parse() {
                return Isolation::Landlock { abi };
            }
        }
        let reason = text
            .strip_prefix("none (")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(text);
        Isolation::None {
            reason: reason.to_owned(),
        }
    }

    pub fn is_confined(&self) -> bool {
        matches!(self, Isolation::Landlock { .. })
    }
}

/// Asks the kernel which Landlock ABI it speaks.
pub fn detect() -> Support {
    #[allow(unsafe_code)]
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns the
    // ABI version (or -1 with errno); it reads no memory and creates no file descriptor.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    if abi < 0 {
        let err = io::Error::last_os_error();
        let reason = match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => {
                "Landlock is built into this kernel but not enabled (add landlock to the lsm= boot parameter)".to_owned()
            }
            Some(libc::ENOSYS) => "this kernel has no Landlock (Linux 5.19 or later with CONFIG_SECURITY_LANDLOCK is needed)".to_owned(),
            _ => format!("asking the kernel for Landlock failed: {err}"),
        };
        return Support::Unavailable { reason };
    }
    let abi = i32::try_from(abi).unwrap_or(i32::MAX);
    if abi < 2 {
        return Support::Unavailable {
            reason: format!(
                "Landlock ABI {abi} cannot allow renames across directories, which git needs (Linux 5.19 or later is needed)"
            ),
        };
    }
    Support::Landlock { abi }
}

/// What one confined process may reach, before any file is opened.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The manager home: never granted, nor any directory that holds it.
    pub home: PathBuf,
    /// Directories with every right (the clone and the Instance's private directories).
    pub read_write: Vec<PathBuf>,
    /// Single files to read (the deploy key, `known_hosts`).
    pub read_files: Vec<PathBuf>,
    /// Directories (or files) to read and execute beside the system ones: `PATH` entries and
    /// operator-listed paths. Those inside the home or holding it are dropped.
    pub read_exec: Vec<PathBuf>,
    /// The agent's installation, and the ACP bridge's program for an ACP agent (read and
    /// execute). They may lie inside the home (the managed copies under `opencode-runtime/`), but
    /// never be the home or hold it.
    pub programs: Vec<PathBuf>,
    /// The only TCP ports the process may bind; none allows no bind at all.
    pub bind_ports: Vec<u16>,
}

impl Plan {
    /// The executable directories worth granting from a `PATH` value: absolute, existing, and
    /// neither inside the manager home nor holding it.
    pub fn path_dirs(&self, path_var: &str) -> Vec<PathBuf> {
        std::env::split_paths(path_var)
            .filter(|dir| dir.is_absolute())
            .filter_map(|dir| std::fs::canonicalize(dir).ok())
            .filter(|dir| dir.is_dir() && self.is_grantable(dir))
            .collect()
    }

    /// Whether granting `path` keeps the home out of reach: it is not the home, not an ancestor of
    /// it, and not inside it (Landlock rules only add access; a grant on `/` would undo all).
    fn is_grantable(&self, path: &Path) -> bool {
        !self.holds_home(path) && !path.starts_with(self.real_home())
    }

    /// Whether `path` is the home or one of its ancestors.
    fn holds_home(&self, path: &Path) -> bool {
        self.real_home().starts_with(path)
    }

    fn real_home(&self) -> PathBuf {
        std::fs::canonicalize(&self.home).unwrap_or_else(|_| self.home.clone())
    }
}

/// Why a ruleset could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the Landlock ruleset: {0}")]
pub struct ConfineError(String);

/// A prepared confinement, ready for one spawn.
#[derive(Debug)]
pub struct Confinement {
    ruleset: Option<RulesetCreated>,
    /// The last capability number to drop from the bounding set, when the daemon may drop them.
    last_cap: Option<u32>,
    pub isolation: Isolation,
}

impl Confinement {
    /// No Landlock; capabilities are still dropped where the daemon holds them.
    pub fn caps_only(reason: String) -> Confinement {
        Confinement {
            ruleset: None,
            last_cap: droppable_caps(),
            isolation: Isolation::None { reason },
        }
    }

    /// Nothing at all: neither Landlock nor a capability drop (the operator turned isolation off).
    pub fn disabled(reason: String) -> Confinement {
        Confinement {
            ruleset: None,
            last_cap: None,
            isolation: Isolation::None { reason },
        }
    }

    /// A second confinement with the same rules, for another spawn.
    pub fn try_clone(&self) -> io::Result<Confinement> {
        Ok(Confinement {
            ruleset: self
                .ruleset
                .as_ref()
                .map(RulesetCreated::try_clone)
                .transpose()?,
            last_cap: self.last_cap,
            isolation: self.isolation.clone(),
        })
    }
}

/// Builds the ruleset for `plan` with the rights `abi` offers, opening every path now.
pub fn prepare(abi: i32, plan: &Plan) -> Result<Confinement, ConfineError> {
    let fail = |what: String| ConfineError(what);
    let vetted = ABI::from(abi.min(VETTED_ABI));
    let all = AccessFs::from_all(vetted);
    let file_rights = AccessFs::from_file(vetted);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let exec = read | AccessFs::Execute;
    let device = (read | AccessFs::WriteFile | AccessFs::IoctlDev) & all;

    let mut ruleset = Ruleset::default()
        // Every right asked for is one this kernel has: a refusal is a bug, never a silent downgrade.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(|e| fail(e.to_string()))?;
    if abi >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp)
            .map_err(|e| fail(e.to_string()))?;
    }
    if abi >= 6 {
        ruleset = ruleset
            .scope(Scope::from_all(vetted))
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut created = ruleset.create().map_err(|e| fail(e.to_string()))?;

    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, bool)> = Vec::new();
    // System paths may be missing on some distributions (`/lib64`); the Project's own may not.
    for dir in SYSTEM_EXEC {
        rules.push((dir.into(), exec, false));
    }
    for dir in SYSTEM_READ {
        rules.push((dir.into(), read, false));
    }
    for dev in DEVICES {
        rules.push((dev.into(), device, false));
    }
    for link in ETC_LINKS {
        if let Ok(target) = std::fs::canonicalize(link)
            && !target.starts_with("/etc")
            && !target.starts_with("/usr")
            && plan.is_grantable(&target)
        {
            rules.push((target, AccessFs::ReadFile.into(), false));
        }
    }
    for path in &plan.read_exec {
        if plan.is_grantable(path) {
            rules.push((path.clone(), exec, false));
        }
    }
    for program in &plan.programs {
        if plan.holds_home(program) {
            return Err(fail(format!(
                "the agent's installation {} holds the manager home; install it elsewhere",
                program.display()
            )));
        }
        rules.push((program.clone(), exec, true));
    }
    // A missing directory is granted nothing (an Instance directory not made yet); a missing key
    // is an error, since git would fail later and less clearly.
    for dir in &plan.read_write {
        rules.push((dir.clone(), all, false));
    }
    for file in &plan.read_files {
        rules.push((file.clone(), AccessFs::ReadFile.into(), true));
    }
    for (path, access, required) in rules {
        let fd = match PathFd::new(&path) {
            Ok(fd) => fd,
            Err(_) if !required => continue,
            Err(err) => return Err(fail(format!("opening {}: {err}", path.display()))),
        };
        let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
        let access = if is_dir { access } else { access & file_rights };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    if abi >= 4 {
        for port in &plan.bind_ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::BindTcp))
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(Confinement {
        ruleset: Some(created),
        last_cap: droppable_caps(),
        isolation: Isolation::Landlock { abi },
    })
}

/// The highest capability number, when this process may empty its bounding set (it holds
/// `CAP_SETPCAP`, as root does). Without it there is nothing to drop: an unprivileged process
/// cannot gain capabilities once `no_new_privs` is set.
fn droppable_caps() -> Option<u32> {
    const CAP_SETPCAP: u32 = 8;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    if effective & (1 << CAP_SETPCAP) == 0 {
        return None;
    }
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Registers the confinement on `command`: in the child, after the closures registered before it,
/// it empties the capability bounding set and the ambient set, then restricts itself with the
/// ruleset (which also sets `no_new_privs`). Every descendant inherits both.
pub fn install(command: &mut std::process::Command, confinement: Confinement) {
    let Confinement {
        ruleset, last_cap, ..
    } = confinement;
    let mut slot = ruleset;
    let closure = move || -> io::Result<()> {
        if let Some(last) = last_cap {
            for cap in 0..=last {
                #[allow(unsafe_code)]
                // SAFETY: prctl(2) with integer arguments; async-signal-safe, allocates nothing.
                let dropped = unsafe {
                    libc::prctl(
                        libc::PR_CAPBSET_DROP,
                        libc::c_ulong::from(cap),
                        0 as libc::c_ulong,
                        0 as libc::c_ulong,
                        0 as libc::c_ulong,
                    )
                };
                if dropped != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: as above. Clearing the ambient set needs no privilege.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
        }
        if let Some(ruleset) = slot.take() {
            // restrict_self sets no_new_privs, calls landlock_restrict_self and closes the ruleset
            // fd; none of it allocates. Errors are raw OS errors, which do not allocate either.
            match ruleset.restrict_self() {
                Ok(status) if status.ruleset == RulesetStatus::FullyEnforced => {}
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                Err(_) => return Err(io::Error::from_raw_os_error(libc::EPERM)),
            }
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec in the single-threaded child. It only calls
    // prctl(2) and landlock_restrict_self(2) and moves a value prepared before the fork; it takes
    // no lock and allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, closure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_and_its_ancestors_and_contents_are_never_granted() {
        let plan = Plan {
            home: PathBuf::from("/srv/ocm/home"),
            ..Plan::default()
        };
        assert!(!plan.is_grantable(Path::new("/")));
        assert!(!plan.is_grantable(Path::new("/srv")));
        assert!(!plan.is_grantable(Path::new("/srv/ocm/home")));
        assert!(!plan.is_grantable(Path::new("/srv/ocm/home/opencode-keys")));
        assert!(plan.is_grantable(Path::new("/srv/ocm/other")));
        assert!(plan.is_grantable(Path::new("/usr/local/bin")));
        // A sibling whose name starts like the home is not inside it.
        assert!(plan.is_grantable(Path::new("/srv/ocm/home2")));
    }

    #[test]
    fn path_dirs_keep_only_safe_absolute_directories() {
        let home = tempfile::tempdir().expect("tempdir");
        let inside = home.path().join("bin");
        std::fs::create_dir(&inside).expect("mkdir");
        let plan = Plan {
            home: home.path().to_owned(),
            ..Plan::default()
        };
        let path_var = format!(
            "relative/bin:/usr/bin:{}:{}:/no/such/dir:/",
            inside.display(),
            home.path().display()
        );
        let dirs = plan.path_dirs(&path_var);
        assert_eq!(
            dirs,
            vec![std::fs::canonicalize("/usr/bin").expect("/usr/bin")]
        );
    }

    /// Runs `script` under `sh` confined to `plan`; returns its stdout.
    fn run_confined(plan: &Plan, script: &str) -> String {
        let Support::Landlock { abi } = detect() else {
            panic!("this machine must offer Landlock: {:?}", detect());
        };
        let confinement = prepare(abi, plan).expect("ruleset");
        #[allow(clippy::disallowed_methods)]
        let mut command = std::process::Command::new("/bin/sh");
        command
            .args(["-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        install(&mut command, confinement);
        let output = command.output().expect("spawn confined sh");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn a_confined_process_reaches_only_what_its_plan_grants() {
        let home = tempfile::tempdir().expect("tempdir");
        let repo = home.path().join("repo");
        std::fs::create_dir(&repo).expect("mkdir");
        std::fs::write(home.path().join("secret"), "s3cret").expect("write");
        std::fs::write(home.path().join("key"), "the key").expect("write");
        let plan = Plan {
            home: home.path().to_owned(),
            read_write: vec![repo.clone()],
            read_files: vec![home.path().join("key")],
            ..Plan::default()
        };
        let script = format!(
            "cat {h}/secret || echo secret-denied; cat {h}/key; echo ok > {r}/f && cat {r}/f; \
             touch {h}/planted || echo write-denied; kill -0 1 || echo signal-denied; \
             grep CapEff /proc/self/status",
            h = home.path().display(),
            r = repo.display()
        );
        let out = run_confined(&plan, &script);
        assert!(out.contains("secret-denied"), "{out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("the key"), "{out}");
        assert!(out.contains("ok\n"), "{out}");
        assert!(out.contains("write-denied"), "{out}");
        assert!(!home.path().join("planted").exists());
        if matches!(detect(), Support::Landlock { abi } if abi >= 6) {
            assert!(out.contains("signal-denied"), "{out}");
        }
        if droppable_caps().is_some() {
            assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
        }
    }

    #[test]
    fn isolation_reads_back_what_it_describes() {
        for isolation in [
            Isolation::Landlock { abi: 7 },
            Isolation::Landlock { abi: 5 },
            Isolation::None {
                reason: "isolation = \"off\" (x)".into(),
            },
        ] {
            assert_eq!(Isolation::parse(&isolation.describe()), isolation);
        }
    }

    #[test]
    fn isolation_is_described_for_doctor_and_status() {
        assert_eq!(Isolation::Landlock { abi: 7 }.describe(), "landlock ABI 7");
        assert!(
            Isolation::Landlock { abi: 5 }
                .describe()
                .starts_with("landlock ABI 5 (")
        );
        assert_eq!(
            Isolation::None {
                reason: "no Landlock".into()
            }
            .describe(),
            "none (no Landlock)"
        );
    }
}
