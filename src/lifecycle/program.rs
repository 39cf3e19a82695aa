//! The agent program of a launch: found (its `*_BIN`, `PATH`, the managed copy, installed with
//! npm on first need; `AGENT_COMMAND` for a custom ACP agent), refused when another user could
//! have replaced it, and for OpenCode refused when it is not 1.x. It starts nothing but
//! `--version` (through `instance::binary`).

use super::{Host, Progress};
use crate::agent::{AgentKind, Package};
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

/// The command an ACP agent of `kind` runs as (its program and arguments), working in `cwd`:
/// found like OpenCode (its `*_BIN`, `PATH`, the managed copy of its pinned npm package, installed
/// on first need), or `AGENT_COMMAND` for `custom`. Refuses a program another user could replace.
pub(super) async fn resolve_acp_agent(
    host: &Host,
    env: &ProjectEnv,
    kind: AgentKind,
    cwd: &str,
    progress: &Progress,
) -> Result<(std::path::PathBuf, Vec<String>), OpError> {
    let (program, mut args) = match (kind, kind.package(), kind.bin_var()) {
        (AgentKind::Opencode | AgentKind::OpencodeAcp, _, _) => {
            (resolve_program(host, env, progress).await?, Vec::new())
        }
        (AgentKind::Custom, _, _) | (_, None, _) | (_, _, None) => custom_command(env)?,
        (_, Some(package), Some(var)) => (
            find_package(host, env, package, var, progress).await?,
            Vec::new(),
        ),
    };
    if !matches!(kind, AgentKind::Opencode | AgentKind::OpencodeAcp) {
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
    }
    args.extend(kind.acp_args(cwd));
    Ok((program, args))
}

/// `AGENT_COMMAND`, split as a shell would (no expansion), its first word found on `PATH`.
fn custom_command(env: &ProjectEnv) -> Result<(std::path::PathBuf, Vec<String>), OpError> {
    let missing = || {
        OpError::new(
            ErrorCode::AgentNotFound,
            "a custom agent needs AGENT_COMMAND in the project's .env",
            "add AGENT_COMMAND='<program> <arguments>' (an ACP agent on its stdio) to the .env, then start again",
        )
    };
    let raw = env.agent_command.as_deref().ok_or_else(missing)?;
    let mut words = shlex::split(raw).ok_or_else(|| {
        OpError::new(
            ErrorCode::InvalidConfig,
            "AGENT_COMMAND is not a valid command line (unbalanced quotes)",
            "quote it as a shell would: AGENT_COMMAND='my-agent --acp'",
        )
    })?;
    if words.is_empty() {
        return Err(missing());
    }
    let first = words.remove(0);
    let program = binary::find_command(&first).ok_or_else(|| {
        OpError::new(
            ErrorCode::AgentNotFound,
            format!("the custom agent's program {first:?} is not an executable file or on PATH"),
            "fix AGENT_COMMAND in the project's .env",
        )
    })?;
    Ok((program, words))
}

async fn find_package(
    host: &Host,
    env: &ProjectEnv,
    package: Package,
    var: &'static str,
    progress: &Progress,
) -> Result<std::path::PathBuf, OpError> {
    let not_found =
        |err: binary::NotFound| OpError::new(ErrorCode::AgentNotFound, err.message, err.hint);
    let own = env
        .agent_bins
        .iter()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v.clone());
    let configured = host.config.agent_bins.get(var).cloned();
    let paths = host.config.paths.clone();
    let look = move || {
        let (own, configured, paths) = (own.clone(), configured.clone(), paths.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                binary::find_package(package, var, own.as_deref(), configured.as_deref(), &paths)
                    .map(|found| found.map(|(program, _)| program))
            })
            .await
            .unwrap_or(Ok(None))
        }
    };
    if let Some(program) = look().await.map_err(not_found)? {
        return Ok(program);
    }
    let _guard = host.install_lock().lock().await;
    if let Some(program) = look().await.map_err(not_found)? {
        return Ok(program);
    }
    progress.step(format!(
        "{} not found; installing {}@{} with npm (once)",
        package.bin, package.name, package.version
    ));
    binary::install_package(package, var, &host.config.paths)
        .await
        .map_err(not_found)
}
