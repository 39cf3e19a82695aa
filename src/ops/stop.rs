//! `stop` and `stop --all`: end a Project's Instance and everything it started; keep the Sandbox.
//! The user's wish is recorded first, so the Supervisor never starts it again. Stopping a stopped
//! Project succeeds and changes nothing.

use super::{Failure, Manager};
use crate::error::OpError;
use crate::project::ProjectName;

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stopped {
    pub project: String,
    pub was_running: bool,
}

pub(crate) async fn stop(manager: &Manager, project_name: &str) -> Result<Stopped, Failure> {
    let project = ProjectName::parse(project_name)?;
    if !manager.snapshot().projects.contains_key(project.as_str()) {
        return Err(manager.not_found(&project));
    }
    let _guard = manager.lock_project(&project).await;
    let was_running = manager
        .supervisor()
        .stop(project.clone(), "stopped by user")
        .await;
    // The Gateway closes with the last Project before the answer goes out.
    manager.gateway_settled().await;
    Ok(Stopped {
        project: project.to_string(),
        was_running,
    })
}

/// Stops every Project; returns the names of those that were running.
pub(crate) async fn stop_all(manager: &Manager) -> Result<Vec<String>, OpError> {
    let mut stopped = Vec::new();
    for name in manager.known_projects() {
        let Ok(project) = ProjectName::parse(&name) else {
            continue;
        };
        let _guard = manager.lock_project(&project).await;
        if manager
            .supervisor()
            .stop(project, "stopped by user (stop --all)")
            .await
        {
            stopped.push(name);
        }
    }
    manager.gateway_settled().await;
    Ok(stopped)
}
