//! Finding an agent's program: its `*_BIN` variable (`OPENCODE_BIN`, `GEMINI_BIN`, …: project
//! `.env`, then config or the daemon's environment), then `PATH`, then the manager's own copy of
//! the kind's pinned npm package, installed with npm on first need.
//!
//! The only module that runs npm. It never installs anything outside `<home>/opencode-runtime`.
//! It also asks a program its version (`--version`), which gates the launch to OpenCode 1.x.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::agent::{AgentKind, Package};
use crate::config::Paths;

/// Why no usable `opencode` was found.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotFound {
    pub message: String,
    pub hint: String,
}

/// Where the program came from, so replies and logs can say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    ProjectEnv,
    Configured,
    Path,
    Managed,
    /// Installed by this call.
    Installed,
}

/// Resolves OpenCode without installing anything; `None` means "install the managed copy".
pub fn find(
    project_bin: Option<&Path>,
    configured: Option<&Path>,
    paths: &Paths,
) -> Result<Option<(PathBuf, Source)>, NotFound> {
    find_package(opencode(), "OPENCODE_BIN", project_bin, configured, paths)
}

fn opencode() -> Package {
    AgentKind::Opencode
        .package()
        .unwrap_or_else(|| unreachable!("opencode has a package"))
}

/// Resolves a kind's program (named by `var`, then `PATH`, then the managed copy of `package`)
/// without installing anything; `None` means "install the managed copy".
pub(crate) fn find_package(
    package: Package,
    var: &str,
    project_bin: Option<&Path>,
    configured: Option<&Path>,
    paths: &Paths,
) -> Result<Option<(PathBuf, Source)>, NotFound> {
    for (bin, source) in [
        (project_bin, Source::ProjectEnv),
        (configured, Source::Configured),
    ] {
        if let Some(bin) = bin {
            return resolve(bin).map(|p| Some((p, source))).ok_or_else(|| NotFound {
                message: format!("{var} {} is not an executable file", bin.display()),
                hint: format!("fix {var} (project .env or opencode-manager.toml), or remove it to use PATH or the managed copy"),
            });
        }
    }
    if let Some(found) = search_path(package.bin) {
        return Ok(Some((found, Source::Path)));
    }
    let managed = paths.managed_bin(package.bin);
    Ok(is_executable(&managed).then_some((managed, Source::Managed)))
}

/// A program named by a command word: a path, or a name looked up on `PATH`.
pub(crate) fn find_command(word: &str) -> Option<PathBuf> {
    resolve(Path::new(word))
}

/// Installs the pinned `opencode-ai` package into `<home>/opencode-runtime` with npm.
pub async fn install(paths: &Paths) -> Result<PathBuf, NotFound> {
    install_package(opencode(), "OPENCODE_BIN", paths).await
}

/// The command that installs `package` where the manager looks for it.
pub(crate) fn install_command(package: Package, paths: &Paths) -> String {
    format!(
        "npm install --prefix {} {}@{}",
        paths.runtime_dir().display(),
        package.name,
        package.version
    )
}

/// Installs the pinned `package` into `<home>/opencode-runtime` with npm.
pub(crate) async fn install_package(
    package: Package,
    var: &str,
    paths: &Paths,
) -> Result<PathBuf, NotFound> {
    let runtime = paths.runtime_dir();
    let command_text = install_command(package, paths);
    let bin_name = package.bin;
    let Some(npm) = search_path("npm") else {
        return Err(NotFound {
            message: format!(
                "{bin_name} was not found ({var} unset, not on PATH, no managed copy) and npm is not installed"
            ),
            hint: format!("install Node.js and npm, or run: {command_text}, or set {var}"),
        });
    };
    crate::atomic_file::private_dir(&runtime).map_err(|err| NotFound {
        message: format!("creating {}: {err}", runtime.display()),
        hint: "check the permissions of the manager home".into(),
    })?;
    tracing::info!(dir = %runtime.display(), "{bin_name} not found; installing {}@{} with npm", package.name, package.version);
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(npm);
    command
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&runtime)
        .arg(format!("{}@{}", package.name, package.version))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output()).await;
    let failed = |why: String| NotFound {
        message: format!("installing {bin_name} failed: {why}"),
        hint: format!("run it by hand: {command_text}"),
    };
    let output = output
        .map_err(|_| failed("npm did not finish within 10 minutes".into()))?
        .map_err(|err| failed(err.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(failed(format!(
            "npm exited with {}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    let bin = paths.managed_bin(bin_name);
    if is_executable(&bin) {
        Ok(bin)
    } else {
        Err(failed(format!(
            "{} is missing after the install",
            bin.display()
        )))
    }
}

/// The first line `program --version` prints, with a clean environment and a timeout.
pub async fn version(program: &Path) -> Result<String, String> {
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .map_err(|_| format!("{} --version did not answer within 30 s", program.display()))?
        .map_err(|err| format!("running {} --version: {err}", program.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match (output.status.success(), line) {
        (true, Some(line)) => Ok(line.to_owned()),
        _ => Err(format!(
            "{} --version printed no version ({})",
            program.display(),
            output.status
        )),
    }
}

/// The major version this manager drives: OpenCode 2 changed its server API.
pub const SUPPORTED_MAJOR: u64 = 1;

/// Whether a `--version` line names a supported OpenCode (`1.18.33`, `v1.2.0`, `1.18.33-fake`).
pub fn is_supported(version: &str) -> bool {
    let digits: String = version
        .trim()
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<u64>() == Ok(SUPPORTED_MAJOR)
}

fn resolve(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() == 1 && !bin.is_absolute() {
        return search_path(&bin.to_string_lossy());
    }
    is_executable(bin).then(|| bin.to_owned())
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_opencode_1_is_supported() {
        for v in ["1.18.33", "v1.2.0", "1.18.33-fake", " 1.0.0\n"] {
            assert!(is_supported(v), "{v}");
        }
        for v in ["2.0.15", "0.9.1", "10.1.0", "opencode", ""] {
            assert!(!is_supported(v), "{v}");
        }
    }
}
