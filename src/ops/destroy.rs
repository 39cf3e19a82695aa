//! `destroy`: stop the Instance, then delete the Sandbox and the generated Deploy key.
//!
//! Refuses while `repo/` holds uncommitted changes or commits no remote branch has, unless `force`,
//! and says what would be lost. Paths to delete are recomputed from the home and the validated name,
//! never taken from the state file, and a key the user supplied is never deleted. Logs are kept.
//! The unsaved-work check runs git inside the clone, whose config the agent writes, so it runs
//! confined like the agent, with hooks and fsmonitor off.

use super::{Failure, Manager};
use crate::error::{ErrorCode, OpError};
use crate::project::ProjectName;

pub(crate) async fn destroy(
    manager: &Manager,
    project_name: &str,
    force: bool,
) -> Result<String, Failure> {
    let project = ProjectName::parse(project_name)?;
    let paths = manager.config().paths.clone();
    let known = manager
        .host()
        .store
        .snapshot()
        .projects
        .contains_key(project.as_str());
    if !known && !paths.sandbox(&project).exists() {
        return Err(manager.not_found(&project));
    }
    let _guard = manager.lock_project(&project).await;
    let failed = |err: OpError| Failure::Error(err.for_project(project.as_str()));
    let repo = paths.repo_dir(&project);
    if !force && crate::git::is_repository(&repo) {
        let lost = unsaved_work(manager, &project).await.map_err(failed)?;
        if !lost.is_empty() {
            return Err(failed(
                OpError::new(
                    ErrorCode::UnsavedWork,
                    format!(
                        "refusing to destroy {project}: repo/ holds work that would be lost: {}",
                        lost.join("; ")
                    ),
                    "push or discard the work first, or destroy with force",
                )
                .with_items(lost),
            ));
        }
    }
    manager
        .supervisor()
        .stop(project.clone(), "destroying")
        .await;
    let (sandbox, key) = (paths.sandbox(&project), paths.deploy_key(&project));
    super::start::blocking(move || {
        match std::fs::remove_dir_all(&sandbox) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(OpError::internal(format!(
                    "deleting {}: {err}",
                    sandbox.display()
                )));
            }
            _ => {}
        }
        for path in [
            key.clone(),
            std::path::PathBuf::from(format!("{}.pub", key.display())),
        ] {
            let _ = crate::atomic_file::remove_if_present(&path);
        }
        Ok(())
    })
    .await
    .and_then(|deleted| deleted)
    .map_err(failed)?;
    manager
        .host()
        .store
        .update(|s| s.projects.remove(project.as_str()))
        .await
        .map_err(|err| failed(crate::lifecycle::launch::store_failure(err)))?;
    manager.supervisor().forget(project.as_str());
    tracing::info!(project = %project, force, "destroyed");
    Ok(project.to_string())
}

/// What would be lost, checked by a git confined like the agent (its config is the agent's).
async fn unsaved_work(manager: &Manager, project: &ProjectName) -> Result<Vec<String>, OpError> {
    let path_var = std::env::var("PATH").ok();
    let plan = crate::sandbox::confinement_plan(
        manager.config(),
        project,
        &crate::sandbox::Reach {
            key: None,
            programs: &[],
            path_var: path_var.as_deref(),
            bind_ports: &[],
        },
    );
    let confinement =
        crate::sandbox::confine(manager.config(), manager.host().isolation_support(), &plan)
            .map_err(|reason| {
                OpError::new(
                    ErrorCode::IsolationUnavailable,
                    format!("cannot check {project}'s clone for unsaved work: {reason}"),
                    "destroy with force to delete it unchecked",
                )
            })?;
    let repo = manager.config().paths.repo_dir(project);
    Ok(match crate::git::unsaved_work(&repo, &confinement).await {
        Ok(lost) => lost,
        Err(err) => vec![format!(
            "could not check the repository for unsaved work: {err}"
        )],
    })
}
