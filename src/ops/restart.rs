//! `restart`: stop the Instance, then launch it again on the same port, without the git steps.
//!
//! The `.env` is read again, so changed provider keys take effect. A Project whose repository was
//! never cloned goes through the full `start` workflow instead.

use super::{CallerSettings, Manager, Progress, launch, start};
use crate::error::ErrorCode;
use crate::project::ProjectName;
use crate::reply::{Reply, Status};

pub async fn restart(
    manager: &Manager,
    project_name: &str,
    caller: CallerSettings,
    progress: Progress,
) -> Reply {
    let project = match ProjectName::parse(project_name) {
        Ok(project) => project,
        Err(err) => return err.into(),
    };
    let Some(record) = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()
    else {
        return Reply::not_found(project.as_str(), &manager.known_projects());
    };
    if !crate::git::is_repository(&manager.config().paths.repo_dir(&project)) {
        let args = start::StartArgs {
            project_name: project.to_string(),
            git_url: record.git_url,
            user_ssh_key: None,
        };
        return start::start(manager, args, caller, progress).await;
    }
    let _guard = manager.lock_project(&project).await;
    let _restarting = manager.restart_guard();
    // Read the .env first: a broken one must not leave a running Project stopped.
    let env = match crate::project_env::load(&manager.config().paths.env_file(&project)) {
        Ok(env) => env,
        Err(err) => {
            return Manager::env_failure(err).with_project(project.as_str());
        }
    };
    if let Err(reply) = super::stop::stop_locked(manager, &project, "restarting").await {
        return reply.with_project(project.as_str());
    }
    let launched = match launch::launch(manager, &project, &env, &progress).await {
        Ok(launched) => launched,
        Err(reply) => return reply.with_project(project.as_str()),
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
            "the project vanished from state during restart",
            "see manager.log",
        );
    };
    let mut reply = start::running_reply(
        manager,
        &project,
        &record,
        Status::Success,
        "Project restarted",
    );
    reply.provider = launched.provider.clone();
    let reply = start::provider_warning(reply, launched.provider.as_ref(), manager);
    let reply = launch::isolation_warning(reply, &launched.isolation);
    manager
        .sync_gateway(reply, crate::gateway::Trigger::Open)
        .with_project(project.as_str())
}
