//! Finding the `opencode` program: `OPENCODE_BIN` (project `.env`, then config or the daemon's
//! environment), then `PATH`, then the manager's own copy, installed with npm on first need.
//!
//! The only module that runs npm. It never installs anything outside `<home>/opencode-runtime`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::{OPENCODE_VERSION, Paths};

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

/// Resolves the program without installing anything; `None` means "install the managed copy".
pub fn find(
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
                message: format!("OPENCODE_BIN {} is not an executable file", bin.display()),
                hint: "fix OPENCODE_BIN (project .env or opencode-manager.toml), or remove it to use PATH or the managed copy".into(),
            });
        }
    }
    if let Some(found) = search_path("opencode") {
        return Ok(Some((found, Source::Path)));
    }
    let managed = paths.managed_opencode();
    Ok(is_executable(&managed).then_some((managed, Source::Managed)))
}

/// Installs the pinned `opencode-ai` package into `<home>/opencode-runtime` with npm.
pub async fn install(paths: &Paths) -> Result<PathBuf, NotFound> {
    let runtime = paths.runtime_dir();
    let command_text = format!(
        "npm install --prefix {} opencode-ai@{OPENCODE_VERSION}",
        runtime.display()
    );
    let Some(npm) = search_path("npm") else {
        return Err(NotFound {
            message: "opencode was not found (OPENCODE_BIN unset, not on PATH, no managed copy) and npm is not installed".into(),
            hint: format!("install Node.js and npm, or run: {command_text}, or set OPENCODE_BIN"),
        });
    };
    crate::atomic_file::private_dir(&runtime).map_err(|err| NotFound {
        message: format!("creating {}: {err}", runtime.display()),
        hint: "check the permissions of the manager home".into(),
    })?;
    tracing::info!(dir = %runtime.display(), "opencode not found; installing opencode-ai@{OPENCODE_VERSION} with npm");
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(npm);
    command
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&runtime)
        .arg(format!("opencode-ai@{OPENCODE_VERSION}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output()).await;
    let failed = |why: String| NotFound {
        message: format!("installing opencode failed: {why}"),
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
    let bin = paths.managed_opencode();
    if is_executable(&bin) {
        Ok(bin)
    } else {
        Err(failed(format!(
            "{} is missing after the install",
            bin.display()
        )))
    }
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
