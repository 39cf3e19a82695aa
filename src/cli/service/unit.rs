//! The systemd unit that runs `opencode-manager daemon --stay`, as text: a pure function of a
//! [`UnitSpec`], with every setting explained in a comment inside the unit (docs/cli.md repeats
//! the reasons). It reads and writes nothing; `service` gathers the spec and writes the file.
//!
//! The hardening is only what provably leaves the product working: Instances must outlive the
//! daemon (`KillMode=process`), the cgroup limits must stay writable, Instances and their tools
//! keep their devices, namespaces and JIT, and a user unit gets nothing that needs a namespace.

use std::path::{Path, PathBuf};

/// The unit's file name, in both scopes.
pub(super) const UNIT_NAME: &str = "opencode-manager.service";
/// The first words of the unit's first line: what `uninstall` recognises as ours.
pub(super) const MARKER: &str = "# Written by opencode-manager";

/// A unit of the user's systemd manager, or of the system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    User,
    System,
}

impl Scope {
    pub(super) fn flag(self) -> &'static str {
        match self {
            Scope::User => "--user",
            Scope::System => "--system",
        }
    }

    /// `systemctl --user` or `systemctl`.
    pub(super) fn systemctl(self) -> &'static str {
        match self {
            Scope::User => "systemctl --user",
            Scope::System => "systemctl",
        }
    }

    pub(super) fn wanted_by(self) -> &'static str {
        match self {
            Scope::User => "default.target",
            Scope::System => "multi-user.target",
        }
    }
}

/// Everything the unit's text depends on, gathered once.
#[derive(Debug, Clone)]
pub(super) struct UnitSpec {
    pub scope: Scope,
    /// This executable, absolute.
    pub program: PathBuf,
    /// The manager home this command resolved, absolute.
    pub home: PathBuf,
    /// The absolute entries of this command's `PATH`, joined; `None` when there are none.
    pub path_var: Option<String>,
    /// A system unit's `User=`: the home's owner (this user while the home does not exist).
    pub uid: u32,
}

/// The absolute entries of `path` (relative ones would resolve against the service's working
/// directory), without repeats.
pub(super) fn absolute_path_var(path: &str) -> Option<String> {
    let mut entries: Vec<&str> = Vec::new();
    for entry in path.split(':').filter(|e| e.starts_with('/')) {
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    (!entries.is_empty()).then(|| entries.join(":"))
}

/// The unit's text. Fails, naming the value, when a path cannot be written into a unit file.
pub(super) fn render_unit(spec: &UnitSpec) -> Result<String, String> {
    let program = unit_word(text(&spec.program)?, true)?;
    let home = unit_word(
        &format!("OPENCODE_MANAGER_HOME={}", text(&spec.home)?),
        false,
    )?;
    let version = env!("CARGO_PKG_VERSION");
    let flag = spec.scope.flag();
    let mut unit = format!(
        "{MARKER} {version} (`opencode-manager service install {flag}`);\n\
         # `opencode-manager service uninstall {flag}` removes it. docs/cli.md explains each setting.\n\
         [Unit]\n\
         Description=opencode-manager daemon: isolated OpenCode coding agents\n\
         Documentation=man:opencode-manager(1)\n"
    );
    if spec.scope == Scope::System {
        unit.push_str("After=network.target\n");
    }
    unit.push_str("\n[Service]\nType=exec\n");
    if spec.scope == Scope::System {
        unit.push_str(&format!(
            "# The home's owner: the daemon refuses a home that belongs to another user.\n\
             User={}\n",
            spec.uid
        ));
    }
    unit.push_str(&format!(
        "ExecStart={program} daemon --stay\nEnvironment={home}\n"
    ));
    if let Some(path_var) = &spec.path_var {
        unit.push_str(&format!(
            "# The PATH of the shell that installed the unit, so the daemon finds git, ssh, npm and\n\
             # the agents' programs as a daemon started by a command does.\n\
             Environment={}\n",
            unit_word(&format!("PATH={path_var}"), false)?
        ));
    }
    unit.push_str(RESTART_AND_KILL);
    unit.push_str(HARDENING);
    match spec.scope {
        Scope::User => unit.push_str(USER_LEFT_OUT),
        Scope::System => {
            let protected = ["/usr", "/boot", "/efi", "/etc"];
            if protected.iter().any(|dir| spec.home.starts_with(dir)) {
                unit.push_str(
                    "# No ProtectSystem=full: the home lies in a directory it makes read-only.\n",
                );
            } else {
                unit.push_str(
                    "# /usr, /boot, /efi and /etc read-only: the daemon writes only in its home (where its\n\
                     # OpenCode is installed too), in /tmp and in its user's home directory.\n\
                     ProtectSystem=full\n",
                );
            }
            unit.push_str(SYSTEM_HARDENING);
        }
    }
    unit.push_str(&format!(
        "\n[Install]\nWantedBy={}\n",
        spec.scope.wanted_by()
    ));
    Ok(unit)
}

const RESTART_AND_KILL: &str = "\
# Restart after a crash, but not after a refusal that a restart cannot fix (2: invalid
# opencode-manager.toml, 4: unreadable state file, 5: unsafe home). 3 (another daemon holds the
# home) is retried, so the service takes over once a daemon started by a command has exited.
Restart=on-failure
RestartSec=5s
RestartPreventExitStatus=2 4 5
# Instances outlive the daemon by design: each runs in a session of its own and the next daemon
# adopts it. Stopping or restarting the service must end the daemon alone: the default
# (control-group) would kill every Instance still in this unit's cgroup, which is all of them
# unless each has a systemd scope of its own. `opencode-manager stop --all` stops Instances.
KillMode=process
";

/// Hardening for both scopes: each is a seccomp filter or a process flag, which holds for the
/// daemon and everything it starts, and needs no namespace.
const HARDENING: &str = "\
# Hardening for the daemon and everything it starts (git, ssh, npm, the Instances):
# no privilege gained through setuid programs or file capabilities (Landlock needs none, and
# confined Instances set no_new_privs themselves);
NoNewPrivileges=yes
# no setuid or setgid file created;
RestrictSUIDSGID=yes
# no change of execution domain (personality(2));
LockPersonality=yes
# no realtime scheduling, which could starve the machine.
RestrictRealtime=yes
";

const USER_LEFT_OUT: &str = "\
# Nothing that needs a mount or UTS namespace (ProtectSystem=, PrivateTmp=, ProtectHostname=,
# ProtectKernelTunables=, ...): in a user unit, systemd 253 and later then runs the service in a
# user namespace, where root's files belong to nobody and the daemon would trust no program.
";

const SYSTEM_HARDENING: &str = "\
# /proc/sys and /sys read-only; /sys/fs/cgroup stays writable (the cgroup limits are written there).
ProtectKernelTunables=yes
# No kernel module loaded, no kernel log read.
ProtectKernelModules=yes
ProtectKernelLogs=yes
# The host name cannot be changed.
ProtectHostname=yes
# Left out on purpose: PrivateTmp= (its /tmp is deleted when the service stops, under Instances
# that keep running, and a home under /tmp would vanish from commands), ProtectControlGroups= (the
# cgroup limits need /sys/fs/cgroup writable), ProtectHome= (the home is usually there),
# ProtectClock= (before systemd 253 it also denies the agents' tools most devices),
# MemoryDenyWriteExecute= (the agents' JavaScript runtimes compile code at run time), and
# PrivateDevices=, PrivateNetwork=, RestrictNamespaces=, RestrictAddressFamilies= and
# SystemCallFilter=, which would take from the agents' tools what they may need.
";

/// `path` as UTF-8, or what is wrong with it.
fn text(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} (not UTF-8)", path.display()))
}

/// `value` as one word of a unit setting: `%` doubled (specifiers), `$` doubled where `dollar`
/// (ExecStart= expands variables), and in double quotes with `\` and `"` escaped when it holds
/// whitespace, a quote or a backslash. A control character cannot be written at all.
fn unit_word(value: &str, dollar: bool) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?} (a control character)"));
    }
    let mut word = value.replace('%', "%%");
    if dollar {
        word = word.replace('$', "$$");
    }
    let needs_quotes = word
        .chars()
        .any(|c| c.is_whitespace() || "\"'\\".contains(c));
    if needs_quotes {
        word = format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""));
    }
    Ok(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: Scope, home: &str) -> UnitSpec {
        UnitSpec {
            scope,
            program: PathBuf::from("/usr/local/bin/opencode-manager"),
            home: PathBuf::from(home),
            path_var: Some("/usr/local/bin:/usr/bin:/bin".into()),
            uid: 1000,
        }
    }

    #[test]
    fn unit_words_are_escaped_for_systemd() {
        let word = unit_word;
        assert_eq!(word("/usr/bin/x", true).as_deref(), Ok("/usr/bin/x"));
        assert_eq!(word("/a%b$c", true).as_deref(), Ok("/a%%b$$c"));
        assert_eq!(word("X=/a%b$c", false).as_deref(), Ok("X=/a%%b$c"));
        assert_eq!(
            word("X=/my home/\"q\"\\", false).as_deref(),
            Ok(r#""X=/my home/\"q\"\\""#)
        );
        assert!(word("/a\nb", true).is_err());
    }

    #[test]
    fn only_absolute_path_entries_are_kept_once() {
        assert_eq!(
            absolute_path_var("/usr/bin:.:bin::/bin:/usr/bin").as_deref(),
            Some("/usr/bin:/bin")
        );
        assert_eq!(absolute_path_var(".:"), None);
    }

    #[test]
    fn a_system_unit_runs_as_the_homes_owner_with_more_hardening() {
        let unit = render_unit(&spec(Scope::System, "/srv/ocm")).expect("unit");
        for line in [
            "User=1000",
            "After=network.target",
            "ProtectSystem=full",
            "ProtectKernelTunables=yes",
            "WantedBy=multi-user.target",
            "KillMode=process",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        let user = render_unit(&spec(Scope::User, "/home/u/.memory")).expect("unit");
        assert!(!user.contains("User="), "{user}");
        assert!(!user.contains("\nProtect"), "{user}");
        assert!(user.contains("\nWantedBy=default.target\n"), "{user}");
        let under_etc = render_unit(&spec(Scope::System, "/etc/ocm")).expect("unit");
        assert!(!under_etc.contains("ProtectSystem=full\n"), "{under_etc}");
    }
}
