//! `start`: bootstrap or resume a Project, idempotently (product.md §4 steps 1–8 and 10). The best
//! file to read first.
//!
//! Each step checks whether it is already done, so a caller simply calls `start` again after doing
//! what a `waiting_*` reply asked. Input is validated before anything is created. Concurrent starts
//! of one Project join the one in flight and get the same reply.

use std::path::PathBuf;
use std::time::Duration;

use super::{CallerSettings, Manager, Progress, launch};
use crate::deploy_key::{self, DeployKey};
use crate::error::ErrorCode;
use crate::git::{self, GitError, Remote};
use crate::project::{GitUrl, ProjectName};
use crate::project_env::{self, Mode};
use crate::reply::{Reply, Status};
use crate::state::{Desired, InstanceRecord, ProjectRecord};

/// Arguments of `start`, as a client sends them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StartArgs {
    pub project_name: String,
    pub git_url: String,
    #[serde(default)]
    pub user_ssh_key: Option<String>,
}

const ACCESS_TIMEOUT: Duration = Duration::from_secs(30);
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn start(
    manager: &Manager,
    args: StartArgs,
    caller: CallerSettings,
    progress: Progress,
) -> Reply {
    let project = match ProjectName::parse(&args.project_name) {
        Ok(project) => project,
        Err(err) => return err.into(),
    };
    let url = match GitUrl::parse(&args.git_url, manager.config().url_policy) {
        Ok(url) => url,
        Err(err) => return Reply::from(err).with_project(project.as_str()),
    };
    let user_key = match args.user_ssh_key.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(raw) => match check_user_key(raw) {
            Ok(key) => Some(key),
            Err(reply) => return reply.with_project(project.as_str()),
        },
    };
    let manager_for_task = manager.clone();
    let task_project = project.clone();
    super::join_in_flight(manager, &project, async move {
        let _guard = manager_for_task.lock_project(&task_project).await;
        let reply = bootstrap(
            &manager_for_task,
            &task_project,
            &url,
            user_key,
            caller.mode(),
            &progress,
        )
        .await;
        reply.with_project(task_project.as_str())
    })
    .await
}

fn check_user_key(raw: &str) -> Result<DeployKey, Reply> {
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(Reply::error(
            ErrorCode::InvalidSshKey,
            format!("user_ssh_key must be an absolute path, got {raw:?}"),
            "give the full path of a private key file",
        ));
    }
    deploy_key::check(&path)
        .map_err(|err| Reply::error(ErrorCode::InvalidSshKey, err.message, err.hint))
}

async fn bootstrap(
    manager: &Manager,
    project: &ProjectName,
    url: &GitUrl,
    user_key: Option<DeployKey>,
    mode: Mode,
    progress: &Progress,
) -> Reply {
    let paths = &manager.config().paths;
    let existing = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned();
    if let Some(record) = &existing {
        if record.git_url != url.as_str() {
            return Reply::error(
                ErrorCode::InvalidGitUrl,
                format!(
                    "project {project} already exists with another git URL ({})",
                    record.git_url
                ),
                "use the same git_url, choose another project name, or destroy the project first",
            );
        }
        if let Some((proc, _)) = record.instance.proc()
            && crate::instance::process::is_alive(proc)
            && matches!(record.instance, InstanceRecord::Running { .. })
        {
            return running_reply(
                manager,
                project,
                record,
                Status::AlreadyRunning,
                "Project is already running",
            );
        }
    }

    // Step 2: the Sandbox and its .env. From here on the Project exists (so `destroy` can clean it up).
    progress.step("preparing the sandbox");
    let sandbox = match crate::sandbox::create(paths, project) {
        Ok(dir) => dir,
        Err(err) => {
            return Reply::error(
                ErrorCode::Internal,
                format!("creating the sandbox: {err}"),
                "check the manager home's permissions",
            );
        }
    };
    let default_key = paths.deploy_key(project);
    let env_path = paths.env_file(project);
    let key_for_env = user_key
        .as_ref()
        .map_or(default_key.clone(), |k| k.private_path.clone());
    let created_env = match project_env::write_initial(&env_path, mode, project, url, &key_for_env)
    {
        Ok(created) => created,
        Err(err) => {
            return Reply::error(
                ErrorCode::Internal,
                format!("writing {}: {err}", env_path.display()),
                "check the sandbox's permissions",
            );
        }
    };
    if existing.is_none() {
        let record = ProjectRecord {
            project_name: project.to_string(),
            sandbox_dir: sandbox.clone(),
            git_url: url.to_string(),
            ssh_key_path: Some(key_for_env.clone()),
            port: None,
            desired: Desired::Stopped,
            instance: InstanceRecord::Stopped { last_exit: None },
            created_at: crate::timestamp::now(),
            last_health_check: None,
            interrupted_sessions: Vec::new(),
            isolation: None,
        };
        if let Err(err) = manager.store().update(|s| {
            s.projects
                .entry(project.to_string())
                .or_insert(record)
                .clone()
        }) {
            return Manager::store_failure(err);
        }
    }
    let env_shown = env_path.display().to_string();
    if created_env && mode == Mode::Production {
        let mut reply = Reply::new(
            Status::WaitingForPasswords,
            format!(
                "Configuration file created at: {env_shown}\n\nPlease set secure passwords in the .env file:\n  \
                 - OPENCODE_SERVER_PASSWORD (generate: openssl rand -hex 16)\n  \
                 - MCP_TOOL_BEARER_TOKEN (generate: openssl rand -hex 32)\n\n\
                 SSH key will be auto-generated automatically.\n\n\
                 After setting passwords, call opencode_start again to continue."
            ),
        );
        reply.env_path = Some(env_shown);
        reply.hint = Some("ask the user to edit the .env file (never paste secrets into the chat), then call opencode_start again".into());
        return reply;
    }

    // Step 2b: load and validate.
    let env = match project_env::load(&env_path) {
        Ok(env) => env,
        Err(err) => {
            let mut reply = Manager::env_failure(err);
            reply.env_path = Some(env_shown);
            return reply;
        }
    };
    if env.git_url != url.as_str() {
        let mut reply = Reply::error(
            ErrorCode::InvalidConfig,
            format!("GIT_URL in {env_shown} differs from the git_url given"),
            "make GIT_URL in .env and git_url agree",
        );
        reply.env_path = Some(env_shown);
        return reply;
    }

    // Step 3: the deploy key.
    progress.step("checking the deploy key");
    let key = match user_key {
        Some(key) if key.private_path == env.ssh_key_path => Ok(key),
        _ if env.ssh_key_path == default_key => deploy_key::ensure_generated(&default_key, project),
        _ => deploy_key::check(&env.ssh_key_path),
    };
    let key = match key {
        Ok(key) => key,
        Err(err) => return Reply::error(ErrorCode::InvalidSshKey, err.message, err.hint),
    };

    // Steps 4–5: access test and clone, unless the repository is already here.
    // The development-mode notice goes with the first reply a user sees after the .env was made
    // (waiting_for_key or success), as the original README shows it. It names no secret.
    let dev_note = |reply: Reply| {
        if created_env && mode == Mode::Development {
            reply.warn(format!(
                "Development mode: {env_shown} was generated with random secrets; review it before production use"
            ))
        } else {
            reply
        }
    };
    let repo = paths.repo_dir(project);
    if !git::is_repository(&repo) {
        let known_hosts = paths.known_hosts();
        let remote = Remote {
            url,
            key: &key.private_path,
            known_hosts: &known_hosts,
        };
        progress.step("testing access to the repository");
        if let Err(err) = git::test_access(&remote, ACCESS_TIMEOUT).await {
            return dev_note(git_failure(err, &key, ErrorCode::GitUnreachable));
        }
        progress.step("cloning the repository");
        if let Err(err) = git::clone_atomic(&remote, &repo, CLONE_TIMEOUT).await {
            return dev_note(git_failure(err, &key, ErrorCode::CloneFailed));
        }
    }

    // Steps 6–8: launch and wait until ready.
    let launched = match launch::launch(manager, project, &env, progress).await {
        Ok(launched) => launched,
        Err(reply) => return reply,
    };
    let Some(record) = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()
    else {
        return Reply::error(
            ErrorCode::Internal,
            "the project vanished from state during start",
            "see manager.log",
        );
    };
    let mut reply = running_reply(
        manager,
        project,
        &record,
        Status::Success,
        &format!("Project {project} started successfully"),
    );
    reply.provider = launched.provider.clone();
    reply = provider_warning(reply, launched.provider.as_ref(), manager);
    reply = launch::isolation_warning(reply, &launched.isolation);
    debug_assert_eq!(reply.opencode_port, Some(launched.port));
    let reply = manager.sync_gateway(reply, crate::gateway::Trigger::Open);
    dev_note(reply)
}

/// The reply for a running Project (`success`, `already_running`).
pub(crate) fn running_reply(
    manager: &Manager,
    project: &ProjectName,
    record: &ProjectRecord,
    status: Status,
    message: &str,
) -> Reply {
    let (mcp_tool_url, mcp_tool_port) = manager.gateway_url();
    let mut reply = Reply::new(status, message);
    reply.opencode_port = record.port;
    reply.opencode_url = record.port.map(|p| format!("http://127.0.0.1:{p}"));
    reply.opencode_pid = record.instance.proc().map(|(p, _)| p.pid);
    reply.mcp_tool_url = Some(mcp_tool_url);
    reply.mcp_tool_port = Some(mcp_tool_port);
    reply.sandbox_dir = Some(manager.sandbox_display(project));
    if let InstanceRecord::Running { started_at, .. } = &record.instance {
        reply.started_at = Some(started_at.clone());
    }
    reply
}

/// Warns when the Instance has no usable model provider, so it is known now and not at the first prompt.
pub(crate) fn provider_warning(
    reply: Reply,
    provider: Option<&crate::reply::ProviderReport>,
    manager: &Manager,
) -> Reply {
    match provider {
        Some(p) if p.providers.is_empty() => reply.warn(format!(
            "no model provider is configured for this instance, so prompts will fail; add a key such as ANTHROPIC_API_KEY or OPENAI_API_KEY \
             to the project's .env, or providers to {}, then restart the project",
            manager.config().paths.opencode_config().display()
        )),
        Some(p) if p.providers == ["opencode"] => reply.warn(
            "only OpenCode's built-in free provider (opencode) is available; it needs internet access. Add your own provider key to the project's .env",
        ),
        None => reply.warn("could not ask OpenCode which model provider it will use"),
        Some(_) => reply,
    }
}

fn git_failure(err: GitError, key: &DeployKey, code: ErrorCode) -> Reply {
    match err {
        GitError::NoAccess { detail } => {
            let mut reply = Reply::new(
                Status::WaitingForKey,
                format!(
                    "SSH key does not have access to repository yet.\n\nPlease add this public key to your Git repository:\n\n{}\n\n\
                     Public key location: {}\n\nAfter adding the key, run this command again to retry.",
                    key.public_key,
                    key.public_path.display()
                ),
            );
            reply.public_key = Some(key.public_key.clone());
            reply.public_key_path = Some(key.public_path.display().to_string());
            reply.hint = Some(format!(
                "show the public key to the user, ask them to add it as a deploy key (with write access if the agent should push), then call opencode_start again. git said: {detail}"
            ));
            reply
        }
        GitError::HostKey { .. } => Reply::error(
            ErrorCode::GitUnreachable,
            err.to_string(),
            "the server's host key does not match the manager's known_hosts; if the change is expected, remove the host's line from known_hosts in the manager home",
        ),
        GitError::NotFound { .. } => Reply::error(
            code,
            err.to_string(),
            "check the repository path in git_url",
        ),
        GitError::Unreachable { .. } | GitError::Timeout(_) => Reply::error(
            code,
            err.to_string(),
            "check the host, port and network, then call opencode_start again",
        ),
        GitError::Failed { .. } => Reply::error(code, err.to_string(), "see the git message above"),
    }
}

/// Starts a parked Project on demand (a gateway call for it) and returns its port. Joins a start
/// already under way; a Project that is no longer parked is left as it is.
pub(crate) async fn resume(manager: &Manager, project: &ProjectName) -> Result<u16, String> {
    let _guard = manager.lock_project(project).await;
    let record = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned();
    match record {
        Some(r) if matches!(r.instance, InstanceRecord::Idle { .. }) => {}
        Some(r)
            if r.instance
                .proc()
                .is_some_and(|(p, _)| crate::instance::process::is_alive(p)) =>
        {
            return r
                .port
                .ok_or_else(|| format!("project {project} has no port"));
        }
        _ => {
            return Err(format!(
                "project {project} is not parked any more; check opencode_status"
            ));
        }
    }
    tracing::info!(project = %project, "starting parked opencode on demand");
    let env =
        project_env::load(&manager.config().paths.env_file(project)).map_err(|err| err.message)?;
    let launched = launch::launch(manager, project, &env, &Progress::default())
        .await
        .map_err(|reply| {
            format!(
                "starting the parked project failed: {}",
                reply.message.unwrap_or_default()
            )
        })?;
    Ok(launched.port)
}
