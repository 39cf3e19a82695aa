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
    crate::trust::check_program(&program).map_err(|err| {
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
    let config = &host.config;
    let not_found =
        |err: binary::NotFound| OpError::new(ErrorCode::OpencodeNotFound, err.message, err.hint);
    if let Some((program, _)) = binary::find(
        env.opencode_bin.as_deref(),
        config.opencode_bin.as_deref(),
        &config.paths,
    )
    .map_err(not_found)?
    {
        return Ok(program);
    }
    let _guard = host.install_lock().lock().await;
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
