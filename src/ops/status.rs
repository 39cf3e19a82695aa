//! `status`: what is known about one Project, checked against the living process and its HTTP API.
//!
//! Read-only except for `last_health_check`, which records a real health probe (the original
//! stamped the time of the query). Never overwrites a `failed` record.

use std::time::Duration;

use super::Manager;
use crate::instance::process;
use crate::project::ProjectName;
use crate::reply::{OpencodeInfo, ProviderReport, Reply, Status};
use crate::state::InstanceRecord;

pub async fn status(manager: &Manager, project_name: &str) -> Reply {
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
    let alive = record
        .instance
        .proc()
        .filter(|(proc, _)| process::is_alive(*proc));
    let (pid, status_word) = match (&record.instance, alive) {
        (InstanceRecord::Running { .. } | InstanceRecord::Starting { .. }, None) => {
            (None, "stopped")
        }
        (instance, _) => (alive.map(|(p, _)| p.pid), instance.status_word()),
    };
    // The supervisor's view (backoff, unhealthy, idle, …) for Projects the user wants running.
    let view = (record.desired == crate::state::Desired::Running)
        .then(|| manager.supervision().view(project.as_str()))
        .flatten();
    // A start on demand may have just revived a parked Project: the living process wins.
    let status_word = match &view {
        Some(v) if crate::supervisor::view_agrees(v.state, alive.is_some()) => v.state,
        _ => status_word,
    };
    let mut reply = Reply::new(Status::Ok, format!("Project {project} is {status_word}"))
        .with_project(project.as_str());
    reply.opencode = Some(OpencodeInfo {
        pid,
        port: record.port,
        status: status_word.to_owned(),
        running: alive.is_some(),
    });
    reply.opencode_pid = pid;
    reply.restarts = view.map(|v| v.restarts);
    reply.interrupted_sessions =
        (!record.interrupted_sessions.is_empty()).then(|| record.interrupted_sessions.clone());
    reply.memory_bytes = pid.map(crate::instance::enforce::tree_rss);
    reply.isolation = record.isolation.clone();
    if let (InstanceRecord::Running { started_at, .. }, Some(_)) = (&record.instance, pid) {
        reply.uptime_secs = crate::timestamp::parse(started_at)
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
    }
    reply.opencode_port = record.port;
    reply.sandbox_dir = Some(manager.sandbox_display(&project));
    reply.git_url = Some(record.git_url.clone());
    reply.created_at = Some(record.created_at.clone());
    reply.last_health_check = record.last_health_check.clone();
    match &record.instance {
        InstanceRecord::Running { started_at, .. } => reply.started_at = Some(started_at.clone()),
        InstanceRecord::Stopped { last_exit } => reply.last_exit = last_exit.clone(),
        InstanceRecord::Failed { error, .. } => reply.last_error = Some(error.clone()),
        InstanceRecord::Starting { .. } | InstanceRecord::Idle { .. } => {}
    }
    let (mcp_tool_url, mcp_tool_port) = manager.gateway_url();
    reply.mcp_tool_url = Some(mcp_tool_url);
    reply.mcp_tool_port = Some(mcp_tool_port);
    if let (Some(_), Some(port)) = (alive, record.port) {
        reply.opencode_url = Some(format!("http://127.0.0.1:{port}"));
        if let Some(api) = manager.instance_api(&project) {
            match api.health(Duration::from_secs(2)).await {
                Ok(()) => {
                    let now = crate::timestamp::now();
                    reply.last_health_check = Some(now.clone());
                    let _ = manager.store().update(|s| {
                        if let Some(r) = s.projects.get_mut(project.as_str()) {
                            r.last_health_check = Some(now);
                        }
                    });
                    if let Ok(info) = api.providers(Duration::from_secs(5)).await {
                        reply.provider = Some(ProviderReport {
                            providers: info.providers,
                            model: info.default_model,
                        });
                    }
                }
                Err(err) => {
                    reply = reply.warn(format!(
                        "the instance is running but its health check failed: {err}"
                    ))
                }
            }
        }
    }
    for notice in manager.take_notices() {
        reply = reply.warn(notice);
    }
    reply
}
