//! `status`: what is known about one Project, from the published snapshot: its wish, its
//! Instance's state, process and port, the Supervisor's counters and the last observations. It
//! reads neither the state file nor `/proc`, and asks the Instance nothing.

use super::{Failure, Manager};
use crate::project::ProjectName;
use crate::snapshot::ProjectView;

/// One Project's status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectStatus {
    pub project: String,
    pub view: ProjectView,
    /// Seconds since the Instance became ready, while it runs.
    pub uptime_secs: Option<u64>,
    pub sandbox_dir: String,
    pub gateway_url: String,
    pub gateway_port: u16,
    /// Notices told once (a migrated state file).
    pub warnings: Vec<String>,
}

pub(crate) fn status(manager: &Manager, project_name: &str) -> Result<ProjectStatus, Failure> {
    let project = ProjectName::parse(project_name)?;
    let snapshot = manager.snapshot();
    let Some(view) = snapshot.projects.get(project.as_str()).cloned() else {
        return Err(manager.not_found(&project));
    };
    let uptime_secs = view
        .started_at
        .as_deref()
        .filter(|_| view.pid.is_some())
        .and_then(crate::timestamp::parse)
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs());
    let (gateway_url, gateway_port) = manager.gateway_url();
    Ok(ProjectStatus {
        project: project.to_string(),
        view,
        uptime_secs,
        sandbox_dir: manager.sandbox_display(&project),
        gateway_url,
        gateway_port,
        warnings: manager.take_notices(),
    })
}
