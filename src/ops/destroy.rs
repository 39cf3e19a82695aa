//! `destroy`: stop the Instance, then delete the Sandbox and the generated Deploy key.
//!
//! Refuses while `repo/` holds uncommitted changes or commits no remote branch has, unless `force`,
//! and says what would be lost. Paths to delete are recomputed from the home and the validated name,
//! never taken from the state file, and a key the user supplied is never deleted. Logs are kept.
//! The unsaved-work check runs git inside the clone, whose config the agent writes, so it runs
//! confined like the agent, with hooks and fsmonitor off.

use super::Manager;
use crate::error::ErrorCode;
use crate::project::ProjectName;
use crate::reply::{Reply, Status};

pub async fn destroy(manager: &Manager, project_name: &str, force: bool) -> Reply {
    let project = match ProjectName::parse(project_name) {
        Ok(project) => project,
        Err(err) => return err.into(),
    };
    let paths = &manager.config().paths;
    if !manager
        .store()
        .snapshot()
        .projects
        .contains_key(project.as_str())
        && !paths.sandbox(&project).exists()
    {
        return Reply::not_found(project.as_str(), &manager.known_projects());
    }
    let _guard = manager.lock_project(&project).await;
    let repo = paths.repo_dir(&project);
    if !force && crate::git::is_repository(&repo) {
        // The agent writes the clone's config: git runs there as confined as the agent itself.
        let path_var = std::env::var("PATH").ok();
        let plan = crate::sandbox::confinement_plan(
            manager.config(),
            &project,
            &crate::sandbox::Reach {
                key: None,
                program: None,
                path_var: path_var.as_deref(),
                bind_port: None,
            },
        );
        let confinement =
            match crate::sandbox::confine(manager.config(), manager.isolation_support(), &plan) {
                Ok(confinement) => confinement,
                Err(reason) => {
                    return Reply::error(
                        ErrorCode::IsolationUnavailable,
                        format!("cannot check {project}'s clone for unsaved work: {reason}"),
                        "destroy with force to delete it unchecked",
                    )
                    .with_project(project.as_str());
                }
            };
        let lost = match crate::git::unsaved_work(&repo, &confinement).await {
            Ok(lost) => lost,
            Err(err) => vec![format!(
                "could not check the repository for unsaved work: {err}"
            )],
        };
        if !lost.is_empty() {
            let mut reply = Reply::error(
                ErrorCode::UnsavedWork,
                format!(
                    "refusing to destroy {project}: repo/ holds work that would be lost: {}",
                    lost.join("; ")
                ),
                "push or discard the work first, or destroy with force",
            );
            reply.items = Some(lost);
            return reply.with_project(project.as_str());
        }
    }
    if let Err(reply) = super::stop::stop_locked(manager, &project, "destroying").await {
        return reply.with_project(project.as_str());
    }
    let sandbox = paths.sandbox(&project);
    if let Err(err) = std::fs::remove_dir_all(&sandbox)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        return Reply::error(
            ErrorCode::Internal,
            format!("deleting {}: {err}", sandbox.display()),
            "check the sandbox's permissions",
        )
        .with_project(project.as_str());
    }
    let key = paths.deploy_key(&project);
    for path in [
        key.clone(),
        std::path::PathBuf::from(format!("{}.pub", key.display())),
    ] {
        let _ = crate::atomic_file::remove_if_present(&path);
    }
    if let Err(err) = manager
        .store()
        .update(|s| s.projects.remove(project.as_str()))
    {
        return Manager::store_failure(err);
    }
    tracing::info!(project = %project, force, "destroyed");
    let reply = Reply::new(Status::Success, "Project destroyed").with_project(project.as_str());
    manager.sync_gateway(reply, crate::gateway::Trigger::Follow)
}
