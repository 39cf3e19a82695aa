//! The agent program of a launch: found (`OPENCODE_BIN`, `PATH`, the managed copy, installed with
//! npm on first need), refused when another user could have replaced it, and refused when it is
//! not OpenCode 1.x. It starts nothing but `--version` (through `instance::binary`).

use super::{Host, Progress};
use crate::error::{ErrorCode, OpError};
use crate::instance::binary;
use crate::project_env::ProjectEnv;

/// Finds the agent program (installing the managed copy on first need), refuses one another user
/// could have replaced, and refuses a major version this manager cannot drive.
pub(super) async fn resolve_program(
    host: &Host,
    env: &ProjectEnv,
    progress: &Progress,
) -> Result<std::path::PathBuf, OpError> {
    let program = find_program(host, env, progress).await?;
    let checked = program.clone();
    tokio::task::spawn_blocking(move || crate::trust::check_program(&checked))
        .await
        .map_err(|err| OpError::internal(format!("checking the program: {err}")))?
        .map_err(|err| {
            OpError::new(
                ErrorCode::OpencodeUntrusted,
                format!("refusing to run {}: {err}", program.display()),
                err.fix,
            )
        })?;
    let version = host
        .program_version(&program)
        .await
        .map_err(|why| OpError::new(ErrorCode::OpencodeStartFailed, why, "check OPENCODE_BIN"))?;
    if !binary::is_supported(&version) {
        return Err(OpError::new(
            ErrorCode::OpencodeUnsupported,
            format!(
                "{} is OpenCode {version}; this manager drives OpenCode {}.x (OpenCode 2 changed its server API)",
                program.display(),
                binary::SUPPORTED_MAJOR
            ),
            format!(
                "point OPENCODE_BIN at OpenCode 1.x, or remove OPENCODE_BIN (and any opencode 2 on PATH) so the manager installs its managed copy, opencode-ai@{}",
                crate::config::OPENCODE_VERSION
            ),
        ));
    }
    Ok(program)
}

async fn find_program(
    host: &Host,
    env: &ProjectEnv,
    progress: &Progress,
) -> Result<std::path::PathBuf, OpError> {
    let not_found =
        |err: binary::NotFound| OpError::new(ErrorCode::OpencodeNotFound, err.message, err.hint);
    if let Some(program) = find(host, env).await.map_err(not_found)? {
        return Ok(program);
    }
    let _guard = host.install_lock().lock().await;
    if let Some(program) = find(host, env).await.map_err(not_found)? {
        return Ok(program);
    }
    progress.step(format!(
        "opencode not found; installing opencode-ai@{} with npm (once)",
        crate::config::OPENCODE_VERSION
    ));
    binary::install(&host.config.paths).await.map_err(not_found)
}

/// Looks for the program where a launch looks (stats files, so off the async threads).
async fn find(
    host: &Host,
    env: &ProjectEnv,
) -> Result<Option<std::path::PathBuf>, binary::NotFound> {
    let own = env.opencode_bin.clone();
    let configured = host.config.opencode_bin.clone();
    let paths = host.config.paths.clone();
    tokio::task::spawn_blocking(move || {
        binary::find(own.as_deref(), configured.as_deref(), &paths)
            .map(|found| found.map(|(program, _)| program))
    })
    .await
    .unwrap_or(Ok(None))
}
