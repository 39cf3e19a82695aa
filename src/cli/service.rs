//! Setting opencode-manager up on a machine, done by the command line alone (no daemon is asked
//! or started): the systemd unit that runs `daemon --stay` as a service (`service install`,
//! `uninstall`, `print`), and the shell completion scripts (`completions`) and man pages (`man`)
//! that clap's own crates generate from the same `Cli` definition.
//!
//! The unit's text is `unit`'s. This module decides where it goes and whether a systemd manager
//! runs there, writes or removes only that one file (and, for `man --out-dir`, the pages), never
//! runs `systemctl` (it prints the commands to run), never reads anything inside the manager home
//! (it only looks up the home's owner for a system unit), and never writes where no systemd runs:
//! there it prints the unit instead.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Subcommand};

use super::{Cli, emit_err, emit_out, print_reply};
use crate::config::Paths;
use crate::error::ErrorCode;
use crate::reply::{Reply, Status};

mod unit;
use unit::{MARKER, Scope, UNIT_NAME, UnitSpec, absolute_path_var, render_unit};

/// Where system units written by hand belong.
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";
/// Present while systemd is the init system (what `sd_booted()` checks).
const SYSTEM_MANAGER_DIR: &str = "/run/systemd/system";

#[derive(Debug, Subcommand)]
pub(super) enum ServiceCmd {
    /// Write the systemd unit and print the command that enables it (where no systemd runs, print
    /// the unit instead)
    Install {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Replace a unit file that differs from the one this command writes
        #[arg(long)]
        force: bool,
    },
    /// Remove the unit `service install` wrote (disable it first)
    Uninstall {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Print the unit `service install` would write, and write nothing
    Print {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(Debug, Args)]
pub(super) struct ManCmd {
    /// The command whose page to print (`service install`); none for the main page
    command: Vec<String>,
    /// Write every page (opencode-manager.1, opencode-manager-start.1, …) into this directory
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub(super) struct ScopeArgs {
    /// A user unit in ~/.config/systemd/user, run by your systemd user manager (the default,
    /// except for root)
    #[arg(long)]
    user: bool,
    /// A system unit in /etc/systemd/system, run as the home's owner (writing it needs root; the
    /// default for root)
    #[arg(long)]
    system: bool,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (self.user, self.system) {
            (true, _) => Scope::User,
            (_, true) => Scope::System,
            _ if is_root() => Scope::System,
            _ => Scope::User,
        }
    }
}

/// Where the unit goes, and whether a systemd manager of that scope runs here.
struct Place {
    unit_path: PathBuf,
    /// The link `systemctl enable` makes (`<target>.wants/opencode-manager.service`).
    enabled_link: PathBuf,
    /// Why no systemd manager of this scope can take the unit, if none can.
    no_systemd: Option<String>,
}

/// What a successful command prints: the reply (`--json`) or the human text.
struct Done {
    reply: Reply,
    out: String,
    err: String,
}

/// Runs `service install|uninstall|print` and returns the exit code.
pub(super) fn run(cmd: ServiceCmd, paths: &Paths, json: bool) -> ExitCode {
    let outcome = match cmd {
        ServiceCmd::Install { scope, force } => install(scope.scope(), paths, force),
        ServiceCmd::Uninstall { scope } => uninstall(scope.scope()),
        ServiceCmd::Print { scope } => print(scope.scope(), paths),
    };
    match outcome {
        Ok(done) if json => {
            print_reply(&done.reply, true);
            ExitCode::SUCCESS
        }
        Ok(done) => {
            emit_out(&done.out);
            emit_err(&done.err);
            ExitCode::SUCCESS
        }
        Err(reply) => {
            print_reply(&reply, json);
            ExitCode::from(reply.exit_code())
        }
    }
}

/// Prints the completion script for `shell` (generated in memory, so a closed pipe is no panic).
pub(super) fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    let mut cli = without_hidden_subcommands(&Cli::command());
    clap_complete::generate(shell, &mut cli, "opencode-manager", &mut script);
    emit_out(&String::from_utf8_lossy(&script));
    ExitCode::SUCCESS
}

/// `command` without its hidden subcommands, at every level: clap_complete's scripts would offer
/// them (`acp-bridge`, `man`), where clap's help and clap_mangen leave them out.
fn without_hidden_subcommands(command: &clap::Command) -> clap::Command {
    let visible = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(without_hidden_subcommands);
    let mut copy = clap::Command::default()
        .name(command.get_name().to_owned())
        .args(command.get_arguments().cloned())
        .groups(command.get_groups().cloned())
        .subcommands(visible);
    if let Some(about) = command.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = command.get_version() {
        copy = copy.version(version.to_owned());
    }
    copy
}

/// Prints the man page of the command `cmd.command` names (the main page when none), or writes
/// every page into `cmd.out_dir`. `docs/man/` holds these pages, checked by a test.
pub(super) fn man_pages(cmd: ManCmd) -> ExitCode {
    let pages = match render_man_pages() {
        Ok(pages) => pages,
        Err(err) => {
            emit_err(&format!("error: rendering the man pages: {err}\n"));
            return ExitCode::from(1);
        }
    };
    if let Some(dir) = cmd.out_dir {
        for (name, page) in &pages {
            let path = dir.join(name);
            if let Err(err) = crate::atomic_file::replace(&path, page, crate::atomic_file::PUBLIC) {
                emit_err(&format!("error: writing {}: {err}\n", path.display()));
                return ExitCode::from(1);
            }
        }
        emit_err(&format!(
            "wrote {} pages into {}\n",
            pages.len(),
            dir.display()
        ));
        return ExitCode::SUCCESS;
    }
    let wanted = std::iter::once("opencode-manager")
        .chain(cmd.command.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("-");
    match pages
        .iter()
        .find(|(name, _)| *name == format!("{wanted}.1"))
    {
        Some((_, page)) => {
            emit_out(&String::from_utf8_lossy(page));
            ExitCode::SUCCESS
        }
        None => {
            let known: Vec<&str> = pages
                .iter()
                .filter_map(|(name, _)| name.strip_suffix(".1"))
                .collect();
            emit_err(&format!(
                "error: no man page for `{}`; there are: {}\n",
                cmd.command.join(" "),
                known.join(", ")
            ));
            ExitCode::from(2)
        }
    }
}

/// Every man page, as clap_mangen's `generate_to` names them: `opencode-manager.1`, then one per
/// visible command at any depth (`opencode-manager-service-install.1`), rendered in memory.
fn render_man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(command: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        // Every page names the program's version (a command's own page would show none).
        let source = format!("opencode-manager {}", env!("CARGO_PKG_VERSION"));
        let man = clap_mangen::Man::new(command.clone()).source(source);
        let mut page = Vec::new();
        man.render(&mut page)?;
        pages.push((man.get_filename(), page));
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            walk(sub, pages)?;
        }
        Ok(())
    }
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let mut pages = Vec::new();
    walk(&command, &mut pages)?;
    Ok(pages)
}

fn print(scope: Scope, paths: &Paths) -> Result<Done, Reply> {
    let unit = render_unit(&unit_spec(scope, paths)?).map_err(unwritable)?;
    let reply = Reply {
        lines: Some(unit.lines().map(str::to_owned).collect()),
        ..Reply::new(
            Status::Success,
            format!(
                "the unit `opencode-manager service install {}` writes",
                scope.flag()
            ),
        )
    };
    Ok(Done {
        reply,
        out: unit,
        err: String::new(),
    })
}

fn install(scope: Scope, paths: &Paths, force: bool) -> Result<Done, Reply> {
    let unit = render_unit(&unit_spec(scope, paths)?).map_err(unwritable)?;
    let place = place(scope)?;
    let shown = place.unit_path.display();
    if let Some(why) = place.no_systemd {
        let message = format!(
            "{why}, so nothing was written; the unit follows on stdout: save it as {shown} \
             where systemd runs"
        );
        let reply = Reply {
            lines: Some(unit.lines().map(str::to_owned).collect()),
            ..Reply::new(Status::Success, message.clone())
        };
        return Ok(Done {
            reply,
            out: unit,
            err: format!("{message}\n"),
        });
    }
    require_root(scope, "install")?;
    let existing = match std::fs::read_to_string(&place.unit_path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_failure(&format!("reading {shown}"), &err)),
    };
    let (message, commands) = match existing {
        Some(text) if text == unit => (
            format!("{UNIT_NAME} is already installed at {shown}, unchanged"),
            enable_commands(scope, false),
        ),
        Some(text) if !force => {
            let whose = if is_ours(&text) {
                "was written by opencode-manager for other settings or by another version, or \
                 edited since"
            } else {
                "was not written by opencode-manager"
            };
            return Err(Reply::error(
                ErrorCode::InvalidRequest,
                format!(
                    "{shown} exists and differs from the unit this command writes (it {whose}); nothing was changed"
                ),
                format!(
                    "compare with `opencode-manager service print {} | diff {shown} -`, then run \
                     `opencode-manager service install {} --force` to replace it",
                    scope.flag(),
                    scope.flag()
                ),
            ));
        }
        replaced => {
            write_unit(&place.unit_path, &unit)?;
            let verb = if replaced.is_some() {
                "Replaced"
            } else {
                "Wrote"
            };
            (
                format!("{verb} {shown}"),
                enable_commands(scope, replaced.is_some()),
            )
        }
    };
    let mut out = format!("{message}. To enable and start it, run:\n\n    {commands}\n");
    let mut items = vec![commands];
    if scope == Scope::User {
        out.push_str(
            "\nIt runs while you are logged in; to start it at boot and keep it running without \
             a session, also run:\n\n    loginctl enable-linger\n",
        );
        items.push("loginctl enable-linger".to_owned());
    }
    let reply = Reply {
        items: Some(items),
        ..Reply::new(Status::Success, message)
    };
    Ok(Done {
        reply,
        out,
        err: String::new(),
    })
}

fn uninstall(scope: Scope) -> Result<Done, Reply> {
    let place = place(scope)?;
    let shown = place.unit_path.display();
    let text = match std::fs::read_to_string(&place.unit_path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let message = format!("no unit at {shown}; nothing to remove");
            return Ok(Done {
                reply: Reply::new(Status::Success, message.clone()),
                out: format!("{message}\n"),
                err: String::new(),
            });
        }
        Err(err) => return Err(io_failure(&format!("reading {shown}"), &err)),
    };
    if !is_ours(&text) {
        return Err(Reply::error(
            ErrorCode::InvalidRequest,
            format!(
                "{shown} was not written by opencode-manager (no `{MARKER}` line); it was left alone"
            ),
            "remove it yourself if it is no longer wanted",
        ));
    }
    require_root(scope, "uninstall")?;
    if std::fs::symlink_metadata(&place.enabled_link).is_ok() {
        // `systemctl disable` needs the unit file to find its links: removing the file first
        // would leave the service enabled with nothing to disable it by.
        return Err(Reply::error(
            ErrorCode::InvalidRequest,
            format!(
                "{UNIT_NAME} is still enabled ({} exists); disable it first, then uninstall",
                place.enabled_link.display()
            ),
            format!(
                "run `{} disable --now {UNIT_NAME}`, then `opencode-manager service uninstall {}` \
                 again",
                scope.systemctl(),
                scope.flag()
            ),
        ));
    }
    crate::atomic_file::remove_if_present(&place.unit_path)
        .map_err(|err| io_failure(&format!("removing {shown}"), &err))?;
    let reload = format!("{} daemon-reload", scope.systemctl());
    let message = format!("Removed {shown}");
    let out = format!(
        "{message}. If the service still runs, stop it with `{} stop {UNIT_NAME}` (its Instances \
         keep running; `opencode-manager stop --all` stops them). Then reload systemd:\n\n    \
         {reload}\n",
        scope.systemctl()
    );
    let reply = Reply {
        items: Some(vec![reload]),
        ..Reply::new(Status::Success, message)
    };
    Ok(Done {
        reply,
        out,
        err: String::new(),
    })
}

/// `systemctl` lines that load the unit and start it now and at every boot or login; after a
/// replacement, one that restarts it (its Instances are adopted by the new daemon).
fn enable_commands(scope: Scope, replaced: bool) -> String {
    let systemctl = scope.systemctl();
    if replaced {
        format!(
            "{systemctl} daemon-reload && {systemctl} enable {UNIT_NAME} && {systemctl} restart {UNIT_NAME}"
        )
    } else {
        format!("{systemctl} daemon-reload && {systemctl} enable --now {UNIT_NAME}")
    }
}

fn is_ours(text: &str) -> bool {
    text.lines().any(|line| line.starts_with(MARKER))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn require_root(scope: Scope, verb: &str) -> Result<(), Reply> {
    if scope == Scope::User || is_root() {
        return Ok(());
    }
    let program = std::env::current_exe().map_or_else(
        |_| "opencode-manager".to_owned(),
        |p| p.display().to_string(),
    );
    let home = std::env::var("OPENCODE_MANAGER_HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .map_or_else(String::new, |h| format!("OPENCODE_MANAGER_HOME={h} "));
    Err(Reply::error(
        ErrorCode::InvalidRequest,
        format!("service {verb} --system changes {SYSTEM_UNIT_DIR}/{UNIT_NAME}, which needs root"),
        format!(
            "run `sudo env {home}{program} service {verb} --system`, or use --user for a unit of \
             your own"
        ),
    ))
}

fn unit_spec(scope: Scope, paths: &Paths) -> Result<UnitSpec, Reply> {
    let program =
        std::env::current_exe().map_err(|err| io_failure("finding this program's path", &err))?;
    let home = std::path::absolute(paths.home())
        .map_err(|err| io_failure("resolving the manager home", &err))?;
    let uid = std::fs::metadata(&home).map_or_else(
        |_| rustix::process::geteuid().as_raw(),
        |metadata| metadata.uid(),
    );
    Ok(UnitSpec {
        scope,
        program,
        home,
        path_var: std::env::var("PATH")
            .ok()
            .and_then(|path| absolute_path_var(&path)),
        uid,
    })
}

fn place(scope: Scope) -> Result<Place, Reply> {
    let dir = match scope {
        Scope::System => PathBuf::from(SYSTEM_UNIT_DIR),
        Scope::User => user_unit_dir()?,
    };
    let no_systemd = match scope {
        Scope::System if !Path::new(SYSTEM_MANAGER_DIR).is_dir() => Some(format!(
            "systemd is not the init system here ({SYSTEM_MANAGER_DIR} does not exist)"
        )),
        Scope::System => None,
        Scope::User => match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            None => Some(
                "no systemd user manager runs for you here (XDG_RUNTIME_DIR is not set)".to_owned(),
            ),
            Some(runtime) => {
                let manager = Path::new(&runtime).join("systemd");
                (!manager.is_dir()).then(|| {
                    format!(
                        "no systemd user manager runs for you here ({} does not exist)",
                        manager.display()
                    )
                })
            }
        },
    };
    Ok(Place {
        unit_path: dir.join(UNIT_NAME),
        enabled_link: dir
            .join(format!("{}.wants", scope.wanted_by()))
            .join(UNIT_NAME),
        no_systemd,
    })
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`: the user units' directory
/// in systemd's search path that is meant for the user's own units.
fn user_unit_dir() -> Result<PathBuf, Reply> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .ok_or_else(|| {
            Reply::error(
                ErrorCode::InvalidConfig,
                "neither XDG_CONFIG_HOME nor HOME is set, so there is no user unit directory",
                "set HOME, or use --system",
            )
        })?;
    Ok(config.join("systemd").join("user"))
}

fn write_unit(path: &Path, unit: &str) -> Result<(), Reply> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| io_failure(&format!("creating {}", dir.display()), &err))?;
    }
    crate::atomic_file::replace(path, unit.as_bytes(), crate::atomic_file::PUBLIC)
        .map_err(|err| io_failure(&format!("writing {}", path.display()), &err))
}

fn io_failure(action: &str, err: &std::io::Error) -> Reply {
    Reply::error(
        ErrorCode::Internal,
        format!("{action}: {err}"),
        "check the directory's owner and permissions",
    )
}

fn unwritable(what: String) -> Reply {
    Reply::error(
        ErrorCode::InvalidConfig,
        format!("{what} cannot be written into a systemd unit"),
        "use paths without control characters (a newline, say) and in UTF-8",
    )
}
