//! Bringing recorded state and living processes into agreement: once when the daemon starts
//! (adopt what is alive and provably ours, mark the rest stopped, sweep strays), and periodically
//! for Instances the daemon adopted and so cannot `wait` for.
//!
//! Never signals a process unless it is provably ours: the recorded identity (pid + start time) for
//! an Instance, or this home's marker for processes an earlier daemon started.

use std::time::Duration;

use super::Manager;
use crate::instance::process;
use crate::project::ProjectName;
use crate::state::InstanceRecord;

/// Adopts living Instances, records dead ones, and kills unrecorded processes of this home.
pub async fn on_daemon_start(manager: &Manager) {
    let paths = &manager.config().paths;
    let state = manager.store().snapshot();
    let mut keep = std::collections::HashSet::new();
    for (name, record) in &state.projects {
        let Ok(project) = ProjectName::parse(name) else {
            continue;
        };
        let current_marker = record
            .instance
            .proc()
            .map(|(_, launch_id)| crate::sandbox::marker(paths, &project, launch_id));
        match record.instance.proc() {
            Some((proc, launch_id)) if process::is_alive(proc) => {
                let ready = match (&record.instance, manager.instance_api(&project)) {
                    (InstanceRecord::Running { .. }, _) => true,
                    (_, Some(api)) => api.health(Duration::from_secs(2)).await.is_ok(),
                    (_, None) => false,
                };
                if ready {
                    tracing::info!(project = %project, pid = proc.pid, "adopted running opencode");
                    let launch_id = launch_id.to_owned();
                    let _ = manager.store().update(|s| {
                        if let Some(r) = s.projects.get_mut(name)
                            && let InstanceRecord::Starting { proc, .. } = r.instance
                        {
                            r.instance = InstanceRecord::Running {
                                proc,
                                launch_id,
                                started_at: crate::timestamp::now(),
                            };
                        }
                    });
                } else {
                    tracing::warn!(project = %project, pid = proc.pid, "an earlier daemon stopped during this instance's start; stopping it");
                    let marker = current_marker.clone().unwrap_or_default();
                    process::terminate(proc, &marker, Duration::from_secs(2)).await;
                    let _ = manager.store().update(|s| {
                        if let Some(r) = s.projects.get_mut(name) {
                            r.instance = InstanceRecord::Failed {
                                error: "the daemon stopped while this instance was starting, and it was not healthy afterwards".into(),
                                at: crate::timestamp::now(),
                            };
                        }
                    });
                }
            }
            Some(_) => {
                mark_exited(manager, name, "exited while no daemon was watching it");
            }
            None => {}
        }
        if let Some(marker) = current_marker
            && record
                .instance
                .proc()
                .is_some_and(|(p, _)| process::is_alive(p))
        {
            keep.insert(marker);
        }
    }
    // One pass over /proc for the whole home: anything carrying this home's marker that is not a
    // living, recorded launch was started by an earlier daemon that never recorded it.
    let home_prefix = crate::sandbox::home_marker_prefix(paths);
    let swept =
        process::sweep(|value| value.starts_with(&home_prefix) && !keep.contains(value)).await;
    if swept > 0 {
        tracing::warn!(
            swept,
            "killed unrecorded processes left by an earlier daemon"
        );
    }
}

/// Records Instances that died without the daemon seeing them (adopted ones are not its children).
pub fn check_liveness(manager: &Manager) {
    let state = manager.store().snapshot();
    let mut changed = false;
    for (name, record) in &state.projects {
        // A launch with an exit watcher gets its exact exit status from it, not from here.
        if let Some((proc, launch_id)) = record.instance.proc()
            && !manager.is_watched(launch_id)
            && !process::is_alive(proc)
        {
            changed |= mark_exited(
                manager,
                name,
                "exited unexpectedly (exit status unknown: the process was adopted)",
            );
        }
    }
    if changed {
        crate::gateway::servers_file::update(manager);
    }
}

fn mark_exited(manager: &Manager, name: &str, why: &str) -> bool {
    let marked = manager.store().update(|s| match s.projects.get_mut(name) {
        Some(r)
            if r.instance
                .proc()
                .is_some_and(|(proc, _)| !process::is_alive(proc)) =>
        {
            tracing::warn!(project = name, "opencode {why}");
            r.instance = InstanceRecord::Stopped {
                last_exit: Some(format!("{why} (noticed at {})", crate::timestamp::now())),
            };
            true
        }
        _ => false,
    });
    marked.unwrap_or(false)
}

/// Stops the per-project MCP tool processes of the original's v1.0 (ports 5100+) recorded in a
/// migrated state file, but only a process whose command line proves it is that tool on that
/// port; anything else is left alone and reported.
pub async fn stop_legacy_mcp_tools(manager: &Manager) {
    let tools = manager.store().snapshot().legacy_mcp_tools;
    for tool in &tools {
        let Some(pid) = tool.pid else { continue };
        let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let cmdline = args.join(" ");
        // The exact `--port N` (or `--port=N`) argument, not a prefix of another number.
        let on_port = |port: u16| {
            let wanted = port.to_string();
            args.windows(2).any(|w| w[0] == "--port" && w[1] == wanted)
                || args.iter().any(|a| *a == format!("--port={wanted}"))
        };
        let is_the_tool = ["opencode-mcp-tool", "index-http.js", "dev:http"]
            .iter()
            .any(|m| cmdline.contains(m))
            && tool.port.is_none_or(on_port);
        if is_the_tool && let Some(id) = process::identity(pid) {
            tracing::warn!(project = %tool.project_name, pid, "stopping the original's v1.0 per-project MCP tool; the gateway replaces it");
            let _ = rustix::process::Pid::from_raw(id.pid)
                .map(|p| rustix::process::kill_process(p, rustix::process::Signal::TERM));
            process::wait_for(|| !process::is_alive(id), Duration::from_secs(5)).await;
        } else if !cmdline.is_empty() {
            tracing::warn!(project = %tool.project_name, pid, "pid of the original's v1.0 MCP tool now belongs to another process; left alone");
        }
    }
    if !tools.is_empty() {
        let _ = manager.store().update(|s| s.legacy_mcp_tools.clear());
    }
}
