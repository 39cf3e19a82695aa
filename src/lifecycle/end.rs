//! Ending an Instance and everything it started, then recording why.
//!
//! The verified sequence: `POST /global/dispose` so OpenCode ends its tools (not for a park: an
//! idle Instance has nothing under way), SIGTERM to the group, SIGKILL after a grace period, a sweep of processes carrying the Instance's marker, the
//! removal of its cgroups, and a short wait until its port is free again (so a restart can reuse
//! it at once). Waits on pidfds, never by polling `/proc`. A process that cannot be proven to be
//! ours is never signalled.

use std::time::Duration;

use super::{Ending, Host, Instance};
use crate::instance::api::InstanceApi;
use crate::instance::{ports, process};
use crate::project::ProjectName;
use crate::state::InstanceRecord;

/// How long an Instance gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Ends `instance` and records the outcome `why` (stopped, parked, failed) in the state file.
pub(crate) async fn end(host: &Host, instance: Instance, why: Ending) {
    let Instance {
        project,
        id,
        proc,
        port,
        enforced,
        ..
    } = instance;
    let paths = &host.config.paths;
    let mut timeline = super::timeline::Timeline::new();
    // A parked Instance had no busy session: nothing to dispose of gracefully, and its memory
    // is wanted at once (a launch may wait for it); the marker sweep still ends its tools.
    if why != Ending::Park
        && let Some(env) = host.envs.get(project.as_str())
    {
        let api = InstanceApi::new(port, env.password.clone());
        let _ = api.dispose(Duration::from_secs(2)).await;
    }
    let marker = crate::sandbox::marker(paths, &project, &id);
    timeline.mark("dispose");
    let report = process::terminate(proc, &marker, GRACE).await;
    timeline.mark("exit");
    if let Some(enforced) = enforced {
        enforced.remove().await;
    }
    timeline.mark("limits");
    ports::wait_free(port, Duration::from_secs(3)).await;
    timeline.mark("port");
    clean_up(host, &project).await;
    timeline.mark("sweep");
    let said = why.to_string();
    let outcome = match why {
        Ending::Stop(_) | Ending::Recycle(_) => InstanceRecord::Stopped {
            last_exit: why
                .last_exit()
                .map(|exit| format!("{exit} at {}", crate::timestamp::now())),
        },
        Ending::Park => InstanceRecord::Idle {
            since: crate::timestamp::now(),
        },
        Ending::GiveUp(reason) => InstanceRecord::Failed {
            error: with_log_tail(host, &project, &reason).await,
            at: crate::timestamp::now(),
        },
    };
    record(host, &project, Some(&id), outcome).await;
    timeline.mark("recorded");
    tracing::info!(project = %project, killed = report.killed, swept = report.swept, took = %timeline, "ended opencode: {said}");
}

/// Records `outcome` as the Project's Instance, if the record still names launch `id` (or
/// whatever it names, without one); removes the pid file.
pub(crate) async fn record(
    host: &Host,
    project: &ProjectName,
    id: Option<&str>,
    outcome: InstanceRecord,
) {
    let pid_file = host.config.paths.pid_file(project);
    let _ =
        tokio::task::spawn_blocking(move || crate::atomic_file::remove_if_present(&pid_file)).await;
    let _ = host
        .store
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str())
                && id.is_none_or(|id| r.instance.proc().is_none_or(|(_, current)| current == id))
            {
                r.instance = outcome;
            }
        })
        .await;
}

/// `reason`, with the end of the Project's log.
pub(crate) async fn with_log_tail(host: &Host, project: &ProjectName, reason: &str) -> String {
    let log = host.config.paths.project_log(project);
    let tail = tokio::task::spawn_blocking(move || crate::logs::tail(&log, 10))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    format!("{reason}; log tail: {}", tail.join(" | "))
}

/// Kills whatever still carries any of the Project's markers: the tools of an Instance that
/// crashed, or of launches an earlier daemon never recorded.
pub(crate) async fn clean_up(host: &Host, project: &ProjectName) {
    let prefix = crate::sandbox::marker_prefix(&host.config.paths, project);
    let swept = process::sweep(move |value| value.starts_with(&prefix)).await;
    if swept > 0 {
        tracing::warn!(project = %project, swept, "killed processes the project's earlier instances left behind");
    }
}
