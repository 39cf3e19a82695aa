//! `list`: every Project with its Instance's observed state. Reads state and `/proc` only, no HTTP,
//! so it stays fast with many Projects.

use super::Manager;
use crate::instance::process;
use crate::reply::{ProjectSummary, Reply, Status};
use crate::state::InstanceRecord;

pub fn list(manager: &Manager) -> Reply {
    let state = manager.store().snapshot();
    let projects: Vec<ProjectSummary> = state
        .projects
        .iter()
        .map(|(name, record)| {
            let alive = record
                .instance
                .proc()
                .filter(|(proc, _)| process::is_alive(*proc));
            let status = match (&record.instance, alive) {
                (InstanceRecord::Running { .. } | InstanceRecord::Starting { .. }, None) => {
                    "stopped"
                }
                (instance, _) => instance.status_word(),
            };
            let status = match manager.supervision().view(name) {
                Some(view)
                    if record.desired == crate::state::Desired::Running
                        && crate::supervisor::view_agrees(view.state, alive.is_some()) =>
                {
                    view.state
                }
                _ => status,
            };
            ProjectSummary {
                name: name.clone(),
                status: status.to_owned(),
                opencode_running: alive.is_some(),
                opencode_port: record.port,
                opencode_pid: alive.map(|(p, _)| p.pid),
                sandbox_dir: crate::project::ProjectName::parse(name)
                    .map(|p| manager.sandbox_display(&p))
                    .unwrap_or_else(|_| record.sandbox_dir.display().to_string()),
            }
        })
        .collect();
    let running = projects.iter().filter(|p| p.opencode_running).count();
    let mut reply = Reply::new(
        Status::Success,
        format!("{} project(s), {running} running", projects.len()),
    );
    reply.projects = Some(projects);
    for notice in manager.take_notices() {
        reply = reply.warn(notice);
    }
    reply
}
