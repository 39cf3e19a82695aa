//! `doctor`: what the daemon's machine offers the manager, one human line per check: the
//! `opencode` program and its version, git, ssh, npm, the manager home's permissions, and which
//! resource-limit mechanism is in force (`limits: systemd|cgroup|rlimit (reason)`).
//!
//! Read-only: it runs only `--version`-style queries (each with a timeout), installs nothing, changes
//! no permission, touches no Instance and writes no state. The checks run in the daemon, so they
//! describe the daemon's environment (its `PATH`, its user), which is what Instances get.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::config::OPENCODE_VERSION;
use crate::instance::binary::{self, Source};
use crate::lifecycle::Host;

const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One check's line, and whether it is a problem the user should fix.
struct Check {
    line: String,
    problem: bool,
}

fn fine(line: String) -> Check {
    Check {
        line,
        problem: false,
    }
}

fn problem(line: String) -> Check {
    Check {
        line,
        problem: true,
    }
}

/// Every check's line, and how many are problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checks {
    pub lines: Vec<String>,
    pub problems: usize,
}

pub(crate) async fn doctor(host: &Host) -> Checks {
    let config = &host.config;
    let (git, ssh, npm, detection) = tokio::join!(
        first_line(Path::new("git"), &["--version"]),
        first_line(Path::new("ssh"), &["-V"]),
        first_line(Path::new("npm"), &["--version"]),
        // The mechanism in force for this daemon (probed once), not a fresh guess.
        host.limit_mechanism(),
    );
    let opencode = opencode_check(host, npm.is_ok()).await;
    let paths = config.paths.clone();
    let home = tokio::task::spawn_blocking(move || home_check(&paths))
        .await
        .unwrap_or_else(|err| problem(format!("home: the check failed ({err})")));
    let checks = [
        opencode,
        match git {
            Ok(version) => fine(format!("git: {version}")),
            Err(why) => problem(format!(
                "git: {why} (install git; cloning and pushing need it)"
            )),
        },
        match ssh {
            Ok(version) => fine(format!("ssh: {version}")),
            Err(why) => problem(format!(
                "ssh: {why} (install an OpenSSH client; git over SSH needs it)"
            )),
        },
        match npm {
            Ok(version) => fine(format!("npm: {version} (used only to install opencode)")),
            Err(why) => fine(format!(
                "npm: {why} (needed only when opencode must be installed)"
            )),
        },
        home,
        isolation_check(host),
        fine({
            format!(
                "limits: {} ({})",
                detection.mechanism.word(),
                detection.reason
            )
        }),
    ];
    let warnings = config
        .warnings
        .iter()
        .map(|w| problem(format!("config: {w}")));
    let checks: Vec<Check> = checks.into_iter().chain(warnings).collect();
    Checks {
        problems: checks.iter().filter(|c| c.problem).count(),
        lines: checks.into_iter().map(|c| c.line).collect(),
    }
}

/// Finds `opencode` as a start would (without installing it) and asks its version.
async fn opencode_check(host: &Host, npm_present: bool) -> Check {
    let config = &host.config;
    let (configured, paths) = (config.opencode_bin.clone(), config.paths.clone());
    let found =
        tokio::task::spawn_blocking(move || binary::find(None, configured.as_deref(), &paths))
            .await
            .unwrap_or(Ok(None));
    let (bin, source) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            let line = format!(
                "opencode: not found (OPENCODE_BIN unset, not on PATH, no managed copy; start installs opencode-ai@{OPENCODE_VERSION} with npm, or set OPENCODE_BIN)"
            );
            // With npm, the first start installs it: not a problem yet.
            return Check {
                line,
                problem: !npm_present,
            };
        }
        Err(err) => {
            return problem(format!(
                "opencode: not found ({}; {})",
                err.message, err.hint
            ));
        }
    };
    let from = match source {
        Source::ProjectEnv | Source::Configured => "OPENCODE_BIN",
        Source::Path => "PATH",
        Source::Managed | Source::Installed => "the managed copy",
    };
    match first_line(&bin, &["--version"]).await {
        Ok(version) => {
            let note = if version.trim() == OPENCODE_VERSION {
                String::new()
            } else {
                format!("; the manager is tested with {OPENCODE_VERSION}")
            };
            fine(format!(
                "opencode: {version} ({}, from {from}{note})",
                bin.display()
            ))
        }
        Err(why) => problem(format!(
            "opencode: {} (from {from}) does not run: {why}",
            bin.display()
        )),
    }
}

/// How a start would confine an Instance now: `isolation: landlock ABI <n>` or `isolation: none (…)`.
fn isolation_check(host: &Host) -> Check {
    let isolation = crate::sandbox::expected_isolation(&host.config, host.isolation_support());
    let line = format!("isolation: {}", isolation.describe());
    if isolation.is_confined() {
        fine(line)
    } else {
        problem(line)
    }
}

/// The home must belong to the daemon's user and be closed to others (it holds keys and passwords).
fn home_check(paths: &crate::config::Paths) -> Check {
    if let Err(err) = crate::trust::check_home(paths) {
        return problem(format!("home: unsafe: {err} ({})", err.fix));
    }
    let home = paths.home();
    let shown = home.display();
    let metadata = match std::fs::metadata(home) {
        Ok(metadata) => metadata,
        Err(err) => return problem(format!("home: {shown} cannot be read ({err})")),
    };
    let mode = metadata.mode() & 0o7777;
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return problem(format!(
            "home: {shown} (mode {mode:04o}) belongs to uid {}, not to the daemon's uid {me}",
            metadata.uid()
        ));
    }
    if mode & 0o077 != 0 {
        return problem(format!(
            "home: {shown} (mode {mode:04o}) is open to other users; run chmod 700 {shown}"
        ));
    }
    fine(format!("home: {shown} (mode {mode:04o})"))
}

/// Runs `program args` and returns the first line it printed (stdout, else stderr: `ssh -V`).
async fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    // The one process doctor runs: a short version query, never an Instance.
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
        Err(_) => return Err(format!("no answer within {} s", QUERY_TIMEOUT.as_secs())),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err("not found".into());
        }
        Ok(Err(err)) => return Err(err.to_string()),
        Ok(Ok(output)) => output,
    };
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    let line = text(&output.stdout).or_else(|| text(&output.stderr));
    match (output.status.success(), line) {
        (true, Some(line)) => Ok(line),
        (true, None) => Err("printed nothing".into()),
        (false, line) => Err(format!(
            "exited with {}{}",
            output.status,
            line.map_or_else(String::new, |l| format!(": {l}"))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn version_queries_report_first_lines_and_missing_programs() {
        let version = first_line(Path::new("sh"), &["-c", "echo; echo ' v1 '; echo v2"]).await;
        assert_eq!(version, Ok("v1".into()));
        let stderr = first_line(Path::new("sh"), &["-c", "echo OpenSSH_9 >&2"]).await;
        assert_eq!(stderr, Ok("OpenSSH_9".into()));
        let failed = first_line(Path::new("sh"), &["-c", "echo boom >&2; exit 3"]).await;
        assert_eq!(failed, Err("exited with exit status: 3: boom".into()));
        let missing = first_line(Path::new("no-such-program-ocm"), &[]).await;
        assert_eq!(missing, Err("not found".into()));
    }

    #[test]
    fn home_permissions_are_checked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let paths = |p: &Path| crate::config::Paths::new(p.to_owned());
        let check = home_check(&paths(dir.path()));
        assert!(
            !check.problem && check.line.ends_with("(mode 0700)"),
            "{}",
            check.line
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let check = home_check(&paths(dir.path()));
        assert!(
            check.problem && check.line.contains("chmod 700"),
            "{}",
            check.line
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let check = home_check(&paths(dir.path()));
        assert!(
            check.problem && check.line.contains("unsafe") && check.line.contains("chmod go-w"),
            "{}",
            check.line
        );
        let check = home_check(&paths(&dir.path().join("missing")));
        assert!(
            check.problem && check.line.contains("cannot be read"),
            "{}",
            check.line
        );
    }

    #[tokio::test]
    async fn doctor_reports_every_check_and_the_limits_mechanism() {
        let home = tempfile::tempdir().expect("tempdir");
        let paths = crate::config::Paths::new(home.path().to_owned());
        let config = crate::config::Config::load(paths.clone()).expect("config");
        let (store, _) = crate::state::store::Store::open(&paths).expect("store");
        let host = Host::new(config, store, std::sync::Arc::default());
        let checks = doctor(&host).await;
        let items = checks.lines.clone();
        assert_eq!(items.len(), 7, "{items:?}");
        for prefix in [
            "opencode: ",
            "git: ",
            "ssh: ",
            "npm: ",
            "home: ",
            "isolation: ",
        ] {
            assert!(
                items.iter().any(|i| i.starts_with(prefix)),
                "{prefix} in {items:?}"
            );
        }
        let limits = items
            .iter()
            .find(|i| i.starts_with("limits: "))
            .expect("limits line");
        assert!(
            ["limits: systemd (", "limits: cgroup (", "limits: rlimit ("]
                .iter()
                .any(|p| limits.starts_with(p))
                && limits.ends_with(')'),
            "{limits}"
        );
        assert!(checks.problems <= items.len());
    }
}
