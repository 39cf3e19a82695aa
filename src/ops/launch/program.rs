//! The agent program of a launch: found (`OPENCODE_BIN`, `PATH`, the managed copy, installed with
//! npm on first need), refused when another user could have replaced it, and refused when it is
//! not OpenCode 1.x. It starts nothing but `--version` (through `instance::binary`).

use super::super::{Manager, Progress};
use crate::error::ErrorCode;
use crate::instance::binary;
use crate::project_env::ProjectEnv;
use crate::reply::Reply;

/// Finds the agent program (installing the managed copy on first need), refuses one another user
/// could have replaced, and refuses a major version this manager cannot drive.
pub(super) async fn resolve_program(
    manager: &Manager,
    env: &ProjectEnv,
    progress: &Progress,
) -> Result<std::path::PathBuf, Reply> {
    let program = find_program(manager, env, progress).await?;
    crate::trust::check_program(&program).map_err(|err| {
        Reply::error(
            ErrorCode::OpencodeUntrusted,
            format!("refusing to run {}: {err}", program.display()),
            err.fix,
        )
    })?;
    let version = manager
        .program_version(&program)
        .await
        .map_err(|why| Reply::error(ErrorCode::OpencodeStartFailed, why, "check OPENCODE_BIN"))?;
    if !binary::is_supported(&version) {
        return Err(Reply::error(
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
    manager: &Manager,
    env: &ProjectEnv,
    progress: &Progress,
) -> Result<std::path::PathBuf, Reply> {
    let config = manager.config();
    let not_found =
        |err: binary::NotFound| Reply::error(ErrorCode::OpencodeNotFound, err.message, err.hint);
    if let Some((program, _)) = binary::find(
        env.opencode_bin.as_deref(),
        config.opencode_bin.as_deref(),
        &config.paths,
    )
    .map_err(not_found)?
    {
        return Ok(program);
    }
    let _guard = manager.install_lock().lock().await;
    if let Some((program, _)) = binary::find(
        env.opencode_bin.as_deref(),
        config.opencode_bin.as_deref(),
        &config.paths,
    )
    .map_err(not_found)?
    {
        return Ok(program);
    }
    progress.step(format!(
        "opencode not found; installing opencode-ai@{} with npm (once)",
        crate::config::OPENCODE_VERSION
    ));
    binary::install(&config.paths).await.map_err(not_found)
}
