//! `start`: bootstrap or resume a Project, idempotently (the original's workflow, steps 1–10).
//! The best file to read first.
//!
//! Each step checks whether it is already done, so a caller simply calls `start` again after doing
//! what a `waiting_*` answer asked. Input is validated before anything is created. Concurrent
//! starts of one Project join the one in flight and get the same answer. The launch itself is the
//! Supervisor's: this operation prepares the Sandbox, `.env`, Deploy key and clone, then asks it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CallerSettings, Manager};
use crate::agent::AgentKind;
use crate::deploy_key::{self, DeployKey};
use crate::error::{ErrorCode, OpError};
use crate::git::{self, GitError, Remote};
use crate::lifecycle::Progress;
use crate::project::{GitUrl, ProjectName};
use crate::project_env::{self, Mode};
use crate::snapshot::ProviderView;
use crate::state::{Desired, InstanceRecord, ProjectRecord};
use crate::supervisor::Started;

/// Arguments of `start`, as a client sends them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StartArgs {
    pub project_name: String,
    pub git_url: String,
    #[serde(default)]
    pub user_ssh_key: Option<String>,
    /// The agent kind (`opencode` when absent); a Project keeps the kind of its first start.
    #[serde(default)]
    pub agent: Option<String>,
}

/// What a start (or restart) did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StartReply {
    pub project: String,
    pub outcome: StartOutcome,
    /// One sentence each: development mode, no usable provider, no isolation, the Gateway.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartOutcome {
    Started(Running),
    AlreadyRunning(Running),
    /// A production `.env` was created: the user sets its secrets, then starts again.
    WaitingForPasswords {
        env_path: String,
    },
    /// The repository refused the Deploy key: the user adds it, then starts again.
    WaitingForKey {
        public_key: String,
        public_key_path: String,
        /// git's own words.
        detail: String,
    },
}

/// A running Project, as start and restart report it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running {
    pub agent: AgentKind,
    pub pid: i32,
    pub port: u16,
    pub started_at: Option<String>,
    pub provider: Option<ProviderView>,
    pub sandbox_dir: String,
    pub gateway_url: String,
    pub gateway_port: u16,
}

/// `opencode acp` 1.18 also serves OpenCode's API on a port of its own, without a password.
const OPENCODE_ACP_WARNING: &str = "opencode acp also serves its own API on 127.0.0.1 without a password (OpenCode 1.18 ignores OPENCODE_SERVER_PASSWORD there), so another project's agent could drive this one through it; run untrusted text with the opencode kind instead (docs/agents.md)";

const ACCESS_TIMEOUT: Duration = Duration::from_secs(30);
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) async fn start(
    manager: &Manager,
    args: StartArgs,
    caller: CallerSettings,
    progress: Progress,
) -> Result<StartReply, OpError> {
    let project = ProjectName::parse(&args.project_name)?;
    let url = GitUrl::parse(&args.git_url, manager.config().url_policy)
        .map_err(|err| err.for_project(project.as_str()))?;
    let user_key = match args.user_ssh_key.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(raw) => Some(
            check_user_key(raw)
                .await
                .map_err(|err| err.for_project(project.as_str()))?,
        ),
    };
    let agent = match args.agent.as_deref().filter(|a| !a.is_empty()) {
        Some(raw) => Some(AgentKind::parse(raw).map_err(|err| err.for_project(project.as_str()))?),
        None => None,
    };
    let manager_for_task = manager.clone();
    let task_project = project.clone();
    super::join_in_flight(manager, &project, async move {
        let _guard = manager_for_task.lock_project(&task_project).await;
        bootstrap(
            &manager_for_task,
            &task_project,
            &url,
            agent,
            user_key,
            caller.mode(),
            &progress,
        )
        .await
        .map_err(|err| err.for_project(task_project.as_str()))
    })
    .await
}

async fn check_user_key(raw: &str) -> Result<DeployKey, OpError> {
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(OpError::new(
            ErrorCode::InvalidSshKey,
            format!("user_ssh_key must be an absolute path, got {raw:?}"),
            "give the full path of a private key file",
        ));
    }
    blocking(move || deploy_key::check(&path))
        .await?
        .map_err(|err| OpError::new(ErrorCode::InvalidSshKey, err.message, err.hint))
}

async fn bootstrap(
    manager: &Manager,
    project: &ProjectName,
    url: &GitUrl,
    agent: Option<AgentKind>,
    user_key: Option<DeployKey>,
    mode: Mode,
    progress: &Progress,
) -> Result<StartReply, OpError> {
    let paths = manager.config().paths.clone();
    let existing = manager
        .host()
        .store
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned();
    if let Some(record) = &existing {
        if record.git_url != url.as_str() {
            return Err(OpError::new(
                ErrorCode::InvalidGitUrl,
                format!(
                    "project {project} already exists with another git URL ({})",
                    record.git_url
                ),
                "use the same git_url, choose another project name, or destroy the project first",
            ));
        }
        if let Some(asked) = agent
            && asked != record.agent
        {
            return Err(OpError::new(
                ErrorCode::AgentMismatch,
                format!(
                    "project {project} runs the {} agent, not {asked}",
                    record.agent
                ),
                format!(
                    "start it without --agent (or with --agent {}), or destroy it first to change its agent",
                    record.agent
                ),
            ));
        }
        if let Some(running) = running(manager, project) {
            return Ok(StartReply {
                project: project.to_string(),
                outcome: StartOutcome::AlreadyRunning(running),
                warnings: Vec::new(),
            });
        }
    }

    // Step 2: the Sandbox and its .env. From here on the Project exists (so `destroy` can clean it up).
    progress.step("preparing the sandbox");
    let default_key = paths.deploy_key(project);
    let env_path = paths.env_file(project);
    let key_for_env = user_key
        .as_ref()
        .map_or(default_key.clone(), |k| k.private_path.clone());
    let created_env = {
        let (paths, project, url, key, env_path) = (
            paths.clone(),
            project.clone(),
            url.clone(),
            key_for_env.clone(),
            env_path.clone(),
        );
        blocking(move || {
            crate::sandbox::create(&paths, &project)
                .map_err(|err| OpError::internal(format!("creating the sandbox: {err}")))?;
            project_env::write_initial(&env_path, mode, &project, &url, &key)
                .map_err(|err| OpError::internal(format!("writing {}: {err}", env_path.display())))
        })
        .await??
    };
    if existing.is_none() {
        let record = ProjectRecord {
            project_name: project.to_string(),
            sandbox_dir: paths.sandbox(project),
            git_url: url.to_string(),
            ssh_key_path: Some(key_for_env.clone()),
            port: None,
            desired: Desired::Stopped,
            instance: InstanceRecord::Stopped { last_exit: None },
            created_at: crate::timestamp::now(),
            isolation: None,
            agent: agent.unwrap_or_default(),
        };
        manager
            .host()
            .store
            .update(|s| {
                s.projects.entry(project.to_string()).or_insert(record);
            })
            .await
            .map_err(crate::lifecycle::launch::store_failure)?;
        manager.supervisor().register(project.clone());
    }
    let env_shown = env_path.display().to_string();
    if created_env && mode == Mode::Production {
        return Ok(StartReply {
            project: project.to_string(),
            outcome: StartOutcome::WaitingForPasswords {
                env_path: env_shown,
            },
            warnings: Vec::new(),
        });
    }

    // Step 2b: load and validate.
    let env = manager.load_env(project).await?;
    if env.git_url != url.as_str() {
        return Err(OpError::new(
            ErrorCode::InvalidConfig,
            format!("GIT_URL in {env_shown} differs from the git_url given"),
            "make GIT_URL in .env and git_url agree",
        )
        .with_env_path(env_shown));
    }
    // The development-mode notice goes with the first answer a user sees after the .env was made
    // (waiting_for_key or success), as the original README shows it. It names no secret.
    let mut warnings = Vec::new();
    if created_env && mode == Mode::Development {
        warnings.push(format!(
            "Development mode: {env_shown} was generated with random secrets; review it before production use"
        ));
    }

    // Step 3: the deploy key.
    progress.step("checking the deploy key");
    let key = {
        let (path, default_key, project) = (
            env.ssh_key_path.clone(),
            default_key.clone(),
            project.clone(),
        );
        let user_key = user_key.filter(|k| k.private_path == path);
        blocking(move || match user_key {
            Some(key) => Ok(key),
            None if path == default_key => deploy_key::ensure_generated(&default_key, &project),
            None => deploy_key::check(&path),
        })
        .await?
        .map_err(|err| OpError::new(ErrorCode::InvalidSshKey, err.message, err.hint))?
    };

    // Steps 4–5: access test and clone, unless the repository is already here.
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
            return git_failure(err, &key, ErrorCode::GitUnreachable, project, warnings);
        }
        progress.step("cloning the repository");
        if let Err(err) = git::clone_atomic(&remote, &repo, CLONE_TIMEOUT).await {
            return git_failure(err, &key, ErrorCode::CloneFailed, project, warnings);
        }
    }

    // Steps 6–9: the Supervisor launches it and waits until it is ready; the Gateway opens.
    let started = manager
        .supervisor()
        .start(project.clone(), Arc::new(env), progress.clone())
        .await?;
    Ok(started_reply(manager, project, started, warnings).await)
}

/// The answer for a ready Instance, once the Gateway has caught up with it.
pub(crate) async fn started_reply(
    manager: &Manager,
    project: &ProjectName,
    started: Started,
    mut warnings: Vec<String>,
) -> StartReply {
    let snapshot = manager.gateway_settled().await;
    warnings.extend(provider_warning(started.provider.as_ref(), manager));
    warnings.extend(crate::lifecycle::launch::isolation_warning(
        &started.isolation,
    ));
    if let crate::snapshot::GatewayView::Stopped {
        error: Some(error), ..
    } = &snapshot.gateway
    {
        warnings.push(error.clone());
    }
    let (gateway_url, gateway_port) = manager.gateway_url();
    let agent = snapshot
        .projects
        .get(project.as_str())
        .map(|v| v.agent)
        .unwrap_or_default();
    if agent == AgentKind::OpencodeAcp {
        warnings.push(OPENCODE_ACP_WARNING.to_owned());
    }
    StartReply {
        project: project.to_string(),
        outcome: StartOutcome::Started(Running {
            agent,
            pid: started.pid,
            port: started.port,
            started_at: Some(started.started_at),
            provider: started.provider,
            sandbox_dir: manager.sandbox_display(project),
            gateway_url,
            gateway_port,
        }),
        warnings,
    }
}

/// The Project's running Instance, from the snapshot.
fn running(manager: &Manager, project: &ProjectName) -> Option<Running> {
    let snapshot = manager.snapshot();
    let view = snapshot.projects.get(project.as_str())?;
    let (pid, port) = (view.pid?, view.port?);
    (view.state == crate::snapshot::InstanceState::Running
        || view.state == crate::snapshot::InstanceState::Unhealthy)
        .then_some(())?;
    let (gateway_url, gateway_port) = manager.gateway_url();
    Some(Running {
        agent: view.agent,
        pid,
        port,
        started_at: view.started_at.clone(),
        provider: view.provider.clone(),
        sandbox_dir: manager.sandbox_display(project),
        gateway_url,
        gateway_port,
    })
}

/// Warns when the Instance has no usable model provider, so it is known now and not at the first prompt.
fn provider_warning(provider: Option<&ProviderView>, manager: &Manager) -> Option<String> {
    match provider {
        Some(p) if p.providers.is_empty() => Some(format!(
            "no model provider is configured for this instance, so prompts will fail; add a key such as ANTHROPIC_API_KEY or OPENAI_API_KEY \
             to the project's .env, or providers to {}, then restart the project",
            manager.config().paths.opencode_config().display()
        )),
        Some(p) if p.providers == ["opencode"] => Some(
            "only OpenCode's built-in free provider (opencode) is available; it needs internet access. Add your own provider key to the project's .env".into(),
        ),
        None => Some("could not ask OpenCode which model provider it will use".into()),
        Some(_) => None,
    }
}

fn git_failure(
    err: GitError,
    key: &DeployKey,
    code: ErrorCode,
    project: &ProjectName,
    warnings: Vec<String>,
) -> Result<StartReply, OpError> {
    match err {
        GitError::NoAccess { detail } => Ok(StartReply {
            project: project.to_string(),
            outcome: StartOutcome::WaitingForKey {
                public_key: key.public_key.clone(),
                public_key_path: key.public_path.display().to_string(),
                detail,
            },
            warnings,
        }),
        GitError::HostKey { .. } => Err(OpError::new(
            ErrorCode::GitUnreachable,
            err.to_string(),
            "the server's host key does not match the manager's known_hosts; if the change is expected, remove the host's line from known_hosts in the manager home",
        )),
        GitError::NotFound { .. } => Err(OpError::new(
            code,
            err.to_string(),
            "check the repository path in git_url",
        )),
        GitError::Unreachable { .. } | GitError::Timeout(_) => Err(OpError::new(
            code,
            err.to_string(),
            "check the host, port and network, then call opencode_start again",
        )),
        GitError::Failed { .. } => Err(OpError::new(
            code,
            err.to_string(),
            "see the git message above",
        )),
    }
}

/// Runs blocking file work (the Sandbox, keys) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| OpError::internal(format!("a blocking task failed: {err}")))
}
