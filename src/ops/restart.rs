//! `restart`: end the Instance, then launch it again on the same port, without the git steps.
//!
//! The `.env` is read again first, so changed provider keys take effect and a broken one leaves
//! a running Project running. A Project whose repository was never cloned goes through the full
//! `start` workflow instead.

use std::sync::Arc;

use super::start::{self, StartReply};
use super::{CallerSettings, Failure, Manager};
use crate::lifecycle::Progress;
use crate::project::ProjectName;

pub(crate) async fn restart(
    manager: &Manager,
    project_name: &str,
    caller: CallerSettings,
    progress: Progress,
) -> Result<StartReply, Failure> {
    let project = ProjectName::parse(project_name)?;
    let Some(record) = manager
        .host()
        .store
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()
    else {
        return Err(manager.not_found(&project));
    };
    if !crate::git::is_repository(&manager.config().paths.repo_dir(&project)) {
        let args = start::StartArgs {
            project_name: project.to_string(),
            git_url: record.git_url,
            user_ssh_key: None,
            agent: None,
        };
        return Ok(start::start(manager, args, caller, progress).await?);
    }
    let _guard = manager.lock_project(&project).await;
    let env = manager
        .load_env(&project)
        .await
        .map_err(|err| err.for_project(project.as_str()))?;
    let started = manager
        .supervisor()
        .restart(project.clone(), Arc::new(env), progress)
        .await
        .map_err(|err| err.for_project(project.as_str()))?;
    Ok(start::started_reply(manager, &project, started, Vec::new()).await)
}
