//! Taking over what an earlier daemon left running, once, when the daemon starts: adopt every
//! recorded Instance that is alive and provably ours (held by a pidfd from then on), record the
//! dead ones, kill unrecorded processes of this home, and stop the original's v1.0 per-project
//! MCP tools when their command line proves what they are.
//!
//! Never signals a process unless it is provably ours: the recorded identity (pid + start time)
//! for an Instance, this home's marker for processes an earlier daemon started.

use std::collections::HashSet;
use std::time::Duration;

use super::{Host, Instance, Launched};
use crate::instance::api::InstanceApi;
use crate::instance::confine::Isolation;
use crate::instance::process;
use crate::project::ProjectName;
use crate::state::{InstanceRecord, ProjectRecord};

/// Adopts living Instances and returns them, each with the future of its exit.
pub(crate) async fn adopt(host: &Host) -> Vec<Launched> {
    let paths = &host.config.paths;
    let state = host.store.snapshot();
    let mechanism = host.limit_mechanism().await.mechanism.clone();
    let mut adopted = Vec::new();
    let mut keep = HashSet::new();
    for (name, record) in &state.projects {
        let Ok(project) = ProjectName::parse(name) else {
            continue;
        };
        let Some((proc, launch_id)) = record.instance.proc() else {
            continue;
        };
        let launch_id = launch_id.to_owned();
        let pidfd = tokio::task::spawn_blocking(move || process::pidfd(proc))
            .await
            .ok()
            .flatten();
        let Some(pidfd) = pidfd else {
            super::end::record(
                host,
                &project,
                Some(&launch_id),
                InstanceRecord::Stopped {
                    last_exit: Some(format!(
                        "exited while no daemon was watching it (noticed at {})",
                        crate::timestamp::now()
                    )),
                },
            )
            .await;
            tracing::warn!(project = %project, "opencode exited while no daemon was watching it");
            continue;
        };
        let marker = crate::sandbox::marker(paths, &project, &launch_id);
        let port = record.port.unwrap_or_default();
        if !ready(host, &project, record, port).await {
            tracing::warn!(project = %project, pid = proc.pid, "an earlier daemon stopped during this instance's start; stopping it");
            process::terminate(proc, &marker, Duration::from_secs(2)).await;
            super::end::record(
                host,
                &project,
                Some(&launch_id),
                InstanceRecord::Failed {
                    error: "the daemon stopped while this instance was starting, and it was not healthy afterwards".into(),
                    at: crate::timestamp::now(),
                },
            )
            .await;
            continue;
        }
        let started_at = match &record.instance {
            InstanceRecord::Running { started_at, .. } => started_at.clone(),
            _ => {
                // An earlier daemon stopped during its start: its CPU share is still lowered.
                let _ = crate::instance::priority::set(proc.pid, 0, Duration::from_secs(3)).await;
                crate::timestamp::now()
            }
        };
        let _ = host
            .store
            .update(|s| {
                if let Some(r) = s.projects.get_mut(name)
                    && let InstanceRecord::Starting { proc, .. } = r.instance
                {
                    r.instance = InstanceRecord::Running {
                        proc,
                        launch_id: launch_id.clone(),
                        started_at: started_at.clone(),
                    };
                }
            })
            .await;
        tracing::info!(project = %project, pid = proc.pid, "adopted running opencode");
        keep.insert(marker.clone());
        let (memory_limit, enforced) = limits_of(host, &project, &mechanism, &marker).await;
        let memory = super::launch::memory_of(proc.pid, enforced.clone()).await;
        let provider = provider_of(host, &project, port).await;
        adopted.push(Launched {
            instance: Instance {
                project,
                id: launch_id,
                proc,
                port,
                enforced,
                memory_limit,
            },
            started_at,
            isolation: record
                .isolation
                .as_deref()
                .map(Isolation::parse)
                .unwrap_or_else(|| Isolation::None {
                    reason: "launched before isolation was recorded".into(),
                }),
            provider,
            memory,
            exit: Box::pin(async move {
                let _ = process::until_exit(pidfd).await;
                "exited (exit status unknown: the process was adopted)".to_owned()
            }),
        });
    }
    // One pass over /proc for the whole home: anything carrying this home's marker that is not a
    // living, recorded launch was started by an earlier daemon that never recorded it.
    let home_prefix = crate::sandbox::home_marker_prefix(paths);
    let swept =
        process::sweep(move |value| value.starts_with(&home_prefix) && !keep.contains(value)).await;
    if swept > 0 {
        tracing::warn!(
            swept,
            "killed unrecorded processes left by an earlier daemon"
        );
    }
    stop_legacy_mcp_tools(host).await;
    adopted
}

/// A `running` record is ready; a `starting` one only if it answers its health check now.
async fn ready(host: &Host, project: &ProjectName, record: &ProjectRecord, port: u16) -> bool {
    if matches!(record.instance, InstanceRecord::Running { .. }) {
        return true;
    }
    let paths = host.config.paths.clone();
    let env_path = paths.env_file(project);
    let env = tokio::task::spawn_blocking(move || crate::project_env::load(&env_path))
        .await
        .ok()
        .and_then(Result::ok);
    match env {
        Some(env) => InstanceApi::new(port, env.password)
            .health(Duration::from_secs(2))
            .await
            .is_ok(),
        None => false,
    }
}

/// Which model provider an adopted Instance uses, as it says now.
async fn provider_of(
    host: &Host,
    project: &ProjectName,
    port: u16,
) -> Option<crate::snapshot::ProviderView> {
    let env = host.envs.get(project.as_str())?;
    let api = InstanceApi::new(port, env.password.clone());
    super::probe::provider_of(&api, Duration::from_secs(5)).await
}

/// The adopted Instance's memory limit and its cgroups (found again by name).
async fn limits_of(
    host: &Host,
    project: &ProjectName,
    mechanism: &crate::instance::enforce::Mechanism,
    marker: &str,
) -> (Option<u64>, Option<crate::instance::enforce::Enforced>) {
    let memory_limit = host
        .envs
        .get(project.as_str())
        .and_then(|env| super::launch::effective_limits(host, &env).ok())
        .or_else(|| Some(host.config.limits.clone()))
        .and_then(|limits| limits.memory_bytes);
    let (mechanism, name) = (mechanism.clone(), marker.replace(':', "."));
    let enforced =
        tokio::task::spawn_blocking(move || crate::instance::enforce::reopen(&mechanism, &name))
            .await
            .ok()
            .flatten();
    (memory_limit, enforced)
}

/// Stops the per-project MCP tool processes of the original's v1.0 (ports 5100+) recorded in a
/// migrated state file, but only a process whose command line proves it is that tool on that
/// port; anything else is left alone and reported.
async fn stop_legacy_mcp_tools(host: &Host) {
    let tools = host.store.snapshot().legacy_mcp_tools;
    for tool in &tools {
        let Some(pid) = tool.pid else { continue };
        let port = tool.port;
        let proven = tokio::task::spawn_blocking(move || legacy_tool(pid, port))
            .await
            .unwrap_or(Legacy::Gone);
        match proven {
            Legacy::Tool(id) => {
                tracing::warn!(project = %tool.project_name, pid, "stopping the original's v1.0 per-project MCP tool; the gateway replaces it");
                if let Some(pidfd) = process::pidfd(id) {
                    let _ =
                        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::TERM);
                    process::exited(&pidfd, Duration::from_secs(5)).await;
                }
            }
            Legacy::Other => {
                tracing::warn!(project = %tool.project_name, pid, "pid of the original's v1.0 MCP tool now belongs to another process; left alone");
            }
            Legacy::Gone => {}
        }
    }
    if !tools.is_empty() {
        let _ = host.store.update(|s| s.legacy_mcp_tools.clear()).await;
    }
}

enum Legacy {
    Tool(crate::state::ProcIdentity),
    Other,
    Gone,
}

/// Whether `pid` is the original's MCP tool on `port`, judged by its command line: the exact
/// `--port N` (or `--port=N`) argument, not a prefix of another number.
fn legacy_tool(pid: i32, port: Option<u16>) -> Legacy {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Legacy::Gone;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let joined = args.join(" ");
    let on_port = |port: u16| {
        let wanted = port.to_string();
        args.windows(2).any(|w| w[0] == "--port" && w[1] == wanted)
            || args.iter().any(|a| *a == format!("--port={wanted}"))
    };
    let is_the_tool = ["opencode-mcp-tool", "index-http.js", "dev:http"]
        .iter()
        .any(|m| joined.contains(m))
        && port.is_none_or(on_port);
    match (is_the_tool, process::identity(pid)) {
        (true, Some(id)) => Legacy::Tool(id),
        (_, None) => Legacy::Gone,
        (false, Some(_)) if joined.is_empty() => Legacy::Gone,
        (false, Some(_)) => Legacy::Other,
    }
}
