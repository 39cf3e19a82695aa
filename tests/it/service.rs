//! Setting the manager up on a machine, through the real binary and without a daemon: the systemd
//! unit `service install` writes (into a temporary config directory, with a fake systemd user
//! manager's runtime directory), its refusals, `uninstall`, the unit printed where no systemd runs,
//! shell completions, and the man pages kept in `docs/man/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::manager_bin;

/// A user's directories in a temporary directory: HOME, XDG_CONFIG_HOME, XDG_RUNTIME_DIR and the
/// manager home.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    /// `user_manager`: whether `$XDG_RUNTIME_DIR/systemd` exists, as it does while a systemd user
    /// manager runs.
    fn new(user_manager: bool) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("ocm-service-")
            .tempdir()
            .expect("tempdir");
        for sub in ["home", "config", "runtime"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        if user_manager {
            std::fs::create_dir(dir.path().join("runtime/systemd")).expect("mkdir");
        }
        Machine { dir }
    }

    fn manager_home(&self) -> PathBuf {
        self.dir.path().join("home/.memory")
    }

    fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("config/systemd/user")
    }

    fn unit_path(&self) -> PathBuf {
        self.unit_dir().join("opencode-manager.service")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(manager_bin());
        cmd.args(args)
            .env("HOME", self.dir.path().join("home"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("runtime"))
            .env("OPENCODE_MANAGER_HOME", self.manager_home())
            .env("PATH", "/usr/local/bin:relative/bin:/usr/bin:/bin:/usr/bin");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("running opencode-manager")
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

/// The settings a systemd unit may hold here, by section; anything else is a typo.
const KNOWN: &[(&str, &[&str])] = &[
    ("Unit", &["Description", "Documentation", "After"]),
    (
        "Service",
        &[
            "Type",
            "User",
            "ExecStart",
            "Environment",
            "Restart",
            "RestartSec",
            "RestartPreventExitStatus",
            "KillMode",
            "NoNewPrivileges",
            "RestrictSUIDSGID",
            "LockPersonality",
            "RestrictRealtime",
            "ProtectSystem",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectHostname",
        ],
    ),
    ("Install", &["WantedBy"]),
];

/// Parses a unit as systemd reads it: every line is a `[Section]`, a `Key=Value` of a setting
/// known in that section, a `#` comment or blank; returns `(section, key, value)` in order.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    assert!(text.ends_with('\n'), "the unit ends with a newline");
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(
                KNOWN.iter().any(|(s, _)| *s == name),
                "unknown section {line:?}"
            );
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a section, setting, comment or blank: {line:?}"));
        let known = KNOWN
            .iter()
            .find(|(s, _)| *s == section)
            .unwrap_or_else(|| panic!("{line:?} outside a section"));
        assert!(
            known.1.contains(&key),
            "{key} is not a setting of [{section}]"
        );
        assert!(!value.trim().is_empty(), "{key} has no value");
        settings.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    settings
}

/// The values of `key`, in order.
fn values(settings: &[(String, String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn one(settings: &[(String, String, String)], key: &str) -> String {
    match values(settings, key).as_slice() {
        [value] => value.clone(),
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

fn this_binary() -> String {
    std::fs::canonicalize(manager_bin())
        .expect("the binary")
        .display()
        .to_string()
}

/// The hardening every unit carries, and the restart and kill policy.
fn assert_service_policy(settings: &[(String, String, String)]) {
    for (key, value) in [
        ("Type", "exec"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2 4 5"),
        ("KillMode", "process"),
        ("NoNewPrivileges", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
    ] {
        assert_eq!(one(settings, key), value, "{key}");
    }
    // What would break the product is never set (see docs/cli.md, `service install`).
    for absent in [
        "ProtectControlGroups",
        "PrivateTmp",
        "ProtectHome",
        "MemoryDenyWriteExecute",
    ] {
        assert!(values(settings, absent).is_empty(), "{absent} is set");
    }
}

#[test]
fn a_user_unit_runs_this_binary_as_a_hardened_daemon_for_this_home_and_is_written_once() {
    let machine = Machine::new(true);
    let enable =
        "systemctl --user daemon-reload && systemctl --user enable --now opencode-manager.service";
    let first = machine.run(&["service", "install", "--user"]);
    assert_exit(&first, 0);
    assert!(stdout(&first).contains(enable), "{}", stdout(&first));
    assert!(
        stdout(&first).contains(&format!("Wrote {}", machine.unit_path().display())),
        "{}",
        stdout(&first)
    );
    let unit = std::fs::read_to_string(machine.unit_path()).expect("the unit was written");
    assert!(unit.starts_with("# Written by opencode-manager "), "{unit}");
    let settings = parse_unit(&unit);
    assert_eq!(
        one(&settings, "ExecStart"),
        format!("{} daemon --stay", this_binary())
    );
    assert_eq!(
        values(&settings, "Environment"),
        [
            format!("OPENCODE_MANAGER_HOME={}", machine.manager_home().display()),
            // Relative entries and repeats of the command's PATH are dropped.
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        ]
    );
    assert_service_policy(&settings);
    assert!(
        values(&settings, "User").is_empty(),
        "a user unit has no User="
    );
    // A user unit holds nothing that needs a namespace (systemd would add a user namespace).
    assert!(values(&settings, "ProtectSystem").is_empty());
    assert_eq!(one(&settings, "WantedBy"), "default.target");
    // The unit is replaced by renaming a new file over it: the inode tells whether it was.
    let inode = |path: PathBuf| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).expect("unit").ino()
    };
    let written = inode(machine.unit_path());

    let again = machine.run(&["--json", "service", "install", "--user"]);
    assert_exit(&again, 0);
    let reply: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(reply["status"], "success", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("already installed")),
        "{reply}"
    );
    assert_eq!(reply["items"][0], enable, "{reply}");
    assert_eq!(
        std::fs::read_to_string(machine.unit_path()).expect("unit"),
        unit
    );
    assert_eq!(
        inode(machine.unit_path()),
        written,
        "an identical unit is not rewritten"
    );
}

#[test]
fn a_changed_unit_is_replaced_only_with_force() {
    let machine = Machine::new(true);
    assert_exit(&machine.run(&["service", "install", "--user"]), 0);
    let original = std::fs::read_to_string(machine.unit_path()).expect("unit");
    let edited = original.replace("RestartSec=5s", "RestartSec=1s");
    std::fs::write(machine.unit_path(), &edited).expect("edit the unit");

    let refused = machine.run(&["service", "install", "--user"]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("error [invalid_request]"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("differs"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert_eq!(
        std::fs::read_to_string(machine.unit_path()).expect("unit"),
        edited,
        "the edited unit is left alone"
    );

    let forced = machine.run(&["service", "install", "--user", "--force"]);
    assert_exit(&forced, 0);
    assert!(stdout(&forced).contains("Replaced"), "{}", stdout(&forced));
    assert!(
        stdout(&forced).contains("systemctl --user restart opencode-manager.service"),
        "{}",
        stdout(&forced)
    );
    assert_eq!(
        std::fs::read_to_string(machine.unit_path()).expect("unit"),
        original
    );
}

#[test]
fn uninstall_removes_only_our_unit_and_only_once_it_is_disabled() {
    let machine = Machine::new(true);
    assert_exit(&machine.run(&["service", "install", "--user"]), 0);
    // What `systemctl --user enable` leaves.
    let wants = machine.unit_dir().join("default.target.wants");
    std::fs::create_dir(&wants).expect("mkdir");
    std::os::unix::fs::symlink(machine.unit_path(), wants.join("opencode-manager.service"))
        .expect("symlink");
    let disable = "systemctl --user disable --now opencode-manager.service";

    let enabled = machine.run(&["service", "uninstall", "--user"]);
    assert_exit(&enabled, 2);
    assert!(stderr(&enabled).contains(disable), "{}", stderr(&enabled));
    assert!(machine.unit_path().exists(), "an enabled unit stays");

    std::fs::remove_dir_all(&wants).expect("disable");
    let removed = machine.run(&["service", "uninstall", "--user"]);
    assert_exit(&removed, 0);
    assert!(!machine.unit_path().exists(), "the unit is removed");
    assert!(
        stdout(&removed).contains("systemctl --user daemon-reload"),
        "{}",
        stdout(&removed)
    );

    let nothing = machine.run(&["service", "uninstall", "--user"]);
    assert_exit(&nothing, 0);
    assert!(
        stdout(&nothing).contains("nothing to remove"),
        "{}",
        stdout(&nothing)
    );

    let foreign = "[Service]\nExecStart=/bin/true\n";
    std::fs::write(machine.unit_path(), foreign).expect("a unit of someone else");
    let refused = machine.run(&["service", "uninstall", "--user"]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("was not written by opencode-manager"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read_to_string(machine.unit_path()).expect("unit"),
        foreign
    );
}

#[test]
fn where_no_systemd_runs_install_prints_the_unit_and_writes_nothing() {
    let machine = Machine::new(false);
    // XDG_RUNTIME_DIR set without a user manager's directory in it, then not set at all.
    let set = machine.command(&["service", "install", "--user"]).output();
    let unset = machine
        .command(&["service", "install", "--user"])
        .env_remove("XDG_RUNTIME_DIR")
        .output();
    for printed in [set, unset] {
        let printed = printed.expect("running opencode-manager");
        assert_exit(&printed, 0);
        assert!(
            stderr(&printed).contains("no systemd user manager runs"),
            "{}",
            stderr(&printed)
        );
        assert!(
            stderr(&printed).contains("nothing was written"),
            "{}",
            stderr(&printed)
        );
        let settings = parse_unit(&stdout(&printed));
        assert_eq!(
            one(&settings, "ExecStart"),
            format!("{} daemon --stay", this_binary())
        );
        assert_service_policy(&settings);
        assert!(!machine.unit_dir().exists(), "nothing is written");
        // `service print` shows the same unit.
        let shown = machine.run(&["service", "print", "--user"]);
        assert_exit(&shown, 0);
        assert_eq!(stdout(&shown), stdout(&printed));
    }
}

#[test]
fn a_system_unit_runs_as_the_homes_owner_with_the_system_hardening() {
    let machine = Machine::new(true);
    std::fs::create_dir(machine.manager_home()).expect("the home");
    let printed = machine.run(&["service", "print", "--system"]);
    assert_exit(&printed, 0);
    let settings = parse_unit(&stdout(&printed));
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(machine.manager_home())
        .expect("home")
        .uid();
    assert_eq!(one(&settings, "User"), owner.to_string());
    assert_service_policy(&settings);
    for (key, value) in [
        ("ProtectSystem", "full"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectHostname", "yes"),
        ("After", "network.target"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(one(&settings, key), value, "{key}");
    }
    // `--json` carries the same unit, line by line.
    let json = machine.run(&["--json", "service", "print", "--system"]);
    assert_exit(&json, 0);
    let reply: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let lines: Vec<&str> = reply["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert_eq!(lines, stdout(&printed).lines().collect::<Vec<_>>());
}

#[test]
fn a_home_with_spaces_and_percent_signs_is_quoted_for_systemd() {
    let machine = Machine::new(true);
    let home = machine.dir.path().join("my home%1");
    let output = machine
        .command(&["service", "print", "--user"])
        .env("OPENCODE_MANAGER_HOME", &home)
        .output()
        .expect("running opencode-manager");
    assert_exit(&output, 0);
    let settings = parse_unit(&stdout(&output));
    assert_eq!(
        values(&settings, "Environment")[0],
        format!(
            "\"OPENCODE_MANAGER_HOME={}\"",
            home.display().to_string().replace('%', "%%")
        )
    );
}

#[test]
fn completions_cover_the_visible_commands_for_each_shell() {
    let machine = Machine::new(false);
    // How each script names the hidden `man` subcommand when it offers it.
    for (shell, man) in [("bash", ",man)"), ("zsh", "(man)"), ("fish", "-a \"man\"")] {
        let output = machine.run(&["completions", shell]);
        assert_exit(&output, 0);
        let script = stdout(&output);
        assert!(script.len() > 1000, "{shell}: {script}");
        for word in [
            "opencode-manager",
            "dashboard",
            "service",
            "uninstall",
            "git-url",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        assert!(
            !script.contains("acp-bridge") && !script.contains("acp_bridge"),
            "{shell} completion offers the hidden acp-bridge"
        );
        assert!(
            !script.contains(man),
            "{shell} completion offers the hidden man"
        );
    }
    let unknown = machine.run(&["completions", "tcsh"]);
    assert_exit(&unknown, 2);
}

/// The pages in `dir`, by file name.
fn pages_in(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").path())
                .filter(|path| path.extension().is_some_and(|e| e == "1"))
                .map(|path| {
                    let name = path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned();
                    (name, std::fs::read_to_string(&path).expect("page"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_committed_man_pages_are_generated_from_the_command_line() {
    let machine = Machine::new(false);
    let generated = machine.dir.path().join("man");
    std::fs::create_dir(&generated).expect("mkdir");
    let written = machine.run(&["man", "--out-dir", &generated.display().to_string()]);
    assert_exit(&written, 0);
    let pages = pages_in(&generated);
    let main = &pages["opencode-manager.1"];
    assert!(main.starts_with(".ie \\n(.g .ds Aq"), "roff: {main}");
    assert!(main.contains(".TH opencode-manager 1"), "{main}");
    for command in ["start", "dashboard", "service", "completions", "daemon"] {
        // The main page lists each command's page, and that page exists.
        let page = format!("opencode\\-manager\\-{command}(1)");
        assert!(main.contains(&page), "the main page lacks {page}");
        assert!(pages.contains_key(&format!("opencode-manager-{command}.1")));
    }
    assert!(pages.contains_key("opencode-manager-service-install.1"));
    for hidden in ["acp\\-bridge", "\\-man("] {
        assert!(
            pages.values().all(|page| !page.contains(hidden)),
            "a page shows the hidden {hidden}"
        );
    }
    // `man [COMMAND]…` prints one of those pages.
    let printed = machine.run(&["man"]);
    assert_exit(&printed, 0);
    assert_eq!(&stdout(&printed), main);
    let printed = machine.run(&["man", "service", "install"]);
    assert_exit(&printed, 0);
    assert_eq!(
        stdout(&printed),
        pages["opencode-manager-service-install.1"]
    );
    assert_exit(&machine.run(&["man", "nope"]), 2);

    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/man");
    if std::env::var_os("OCM_UPDATE_SNAPSHOTS").is_some() {
        let _ = std::fs::remove_dir_all(&committed_dir);
        std::fs::create_dir_all(&committed_dir).expect("creating docs/man");
        for (name, page) in &pages {
            std::fs::write(committed_dir.join(name), page).expect("writing a man page");
        }
    }
    let committed = pages_in(&committed_dir);
    assert!(
        committed == pages,
        "docs/man/ is not what `opencode-manager man --out-dir` writes (pages: {:?} against \
         {:?}); rerun with OCM_UPDATE_SNAPSHOTS=1 to regenerate it",
        committed.keys().collect::<Vec<_>>(),
        pages.keys().collect::<Vec<_>>()
    );
}
