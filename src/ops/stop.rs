//! `stop` and `stop --all`: end a Project's Instance and everything it started; keep the Sandbox.
//!
//! The verified sequence (testing-recipes §4): `POST /global/dispose` so OpenCode ends its tools,
//! SIGTERM to the group, SIGKILL after a grace period, then a sweep of processes carrying the
//! Instance's marker. Stopping a stopped Project succeeds and changes nothing. A process that cannot
//! be proven to be ours is never signalled.

use std::time::Duration;

use super::Manager;
use crate::error::ErrorCode;
use crate::instance::process;
use crate::project::ProjectName;
use crate::reply::{Reply, Status};
use crate::state::{Desired, InstanceRecord};

/// How long an Instance gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

pub async fn stop(manager: &Manager, project_name: &str) -> Reply {
    let project = match ProjectName::parse(project_name) {
        Ok(project) => project,
        Err(err) => return err.into(),
    };
    if !manager
        .store()
        .snapshot()
        .projects
        .contains_key(project.as_str())
    {
        return Reply::not_found(project.as_str(), &manager.known_projects());
    }
    let _guard = manager.lock_project(&project).await;
    let reply = match stop_locked(manager, &project, "stopped by user").await {
        Ok(true) => Reply::new(Status::Success, "Project stopped").with_project(project.as_str()),
        Ok(false) => Reply::new(Status::Success, "Project was not running; nothing to stop")
            .with_project(project.as_str()),
        Err(reply) => reply.with_project(project.as_str()),
    };
    // The gateway closes with the last running Project.
    manager.sync_gateway(reply, crate::gateway::Trigger::Follow)
}

pub async fn stop_all(manager: &Manager) -> Reply {
    let names: Vec<String> = manager.known_projects();
    let mut stopped = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let Ok(project) = ProjectName::parse(&name) else {
            continue;
        };
        let _guard = manager.lock_project(&project).await;
        match stop_locked(manager, &project, "stopped by user (stop --all)").await {
            Ok(true) => stopped.push(name),
            Ok(false) => {}
            Err(reply) => failed.push(format!("{name}: {}", reply.message.unwrap_or_default())),
        }
    }
    if !failed.is_empty() {
        let mut reply = Reply::error(
            ErrorCode::Internal,
            format!(
                "{} project(s) stopped; could not stop: {}",
                stopped.len(),
                failed.join("; ")
            ),
            "see manager.log",
        );
        reply.items = Some(stopped);
        return reply;
    }
    let mut reply = Reply::new(
        Status::Success,
        format!("{} project(s) stopped", stopped.len()),
    );
    reply.items = Some(stopped);
    manager.sync_gateway(reply, crate::gateway::Trigger::Follow)
}

/// Stops the Instance of a Project whose lock the caller holds, and records that the user wants
/// it stopped. Returns whether one was running.
pub(crate) async fn stop_locked(
    manager: &Manager,
    project: &ProjectName,
    reason: &str,
) -> Result<bool, Reply> {
    let Some(record) = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()
    else {
        return Ok(false);
    };
    if record.desired != Desired::Stopped {
        // Recorded first, so the exit watcher and the supervisor see a wanted stop, not a crash.
        manager
            .store()
            .update(|s| {
                if let Some(r) = s.projects.get_mut(project.as_str()) {
                    r.desired = Desired::Stopped;
                }
            })
            .map_err(Manager::store_failure)?;
    }
    let settled = matches!(
        record.instance,
        InstanceRecord::Stopped { .. } | InstanceRecord::Failed { .. }
    );
    let outcome = InstanceRecord::Stopped {
        last_exit: Some(format!("{reason} at {}", crate::timestamp::now())),
    };
    end_instance(manager, project, (!settled).then_some(outcome)).await
}

/// Ends a Project's Instance and everything it started (the lock is the caller's), then records
/// `outcome` as its state (when given). The user's wish (`desired`) is left as it is, so the
/// supervisor can use this to recycle or park. Returns whether an Instance was running.
pub(crate) async fn end_instance(
    manager: &Manager,
    project: &ProjectName,
    outcome: Option<InstanceRecord>,
) -> Result<bool, Reply> {
    let paths = &manager.config().paths;
    let Some(record) = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()
    else {
        return Ok(false);
    };
    let record_outcome = |outcome: &Option<InstanceRecord>| -> Result<(), Reply> {
        if let Some(outcome) = outcome {
            manager
                .store()
                .update(|s| {
                    if let Some(r) = s.projects.get_mut(project.as_str()) {
                        r.instance = outcome.clone();
                    }
                })
                .map_err(Manager::store_failure)?;
        }
        Ok(())
    };
    let mut was_running = false;
    if let Some((proc, launch_id)) = record.instance.proc()
        && process::is_alive(proc)
    {
        was_running = true;
        // Recorded before the signal: the exit watcher then sees another launch and stays quiet.
        record_outcome(&outcome)?;
        if let Some(api) = manager.instance_api(project) {
            let _ = api.dispose(Duration::from_secs(2)).await;
        }
        let marker = crate::sandbox::marker(paths, project, launch_id);
        let report = process::terminate(proc, &marker, GRACE).await;
        manager.set_enforcement(project.as_str(), None);
        tracing::info!(project = %project, killed = report.killed, swept = report.swept, "stopped opencode");
        // The kernel releases the listening socket a moment after the process is gone; a stop
        // returns only once the port is free again, so it can be reused at once.
        if let Some(port) = record.port {
            process::wait_for(
                || crate::instance::ports::is_free(port),
                Duration::from_secs(3),
            )
            .await;
        }
    }
    // Anything else that carries this Project's marker (an earlier launch a crashed daemon never
    // recorded) is ours too, and must not outlive a stop.
    let prefix = crate::sandbox::marker_prefix(paths, project);
    let swept = process::sweep(|value| value.starts_with(&prefix)).await;
    if swept > 0 {
        tracing::warn!(project = %project, swept, "killed leftover processes of earlier launches");
    }
    if !was_running {
        record_outcome(&outcome)?;
    }
    let _ = crate::atomic_file::remove_if_present(&paths.pid_file(project));
    Ok(was_running)
}
