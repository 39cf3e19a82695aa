//! Launching a Project's Instance and waiting until it is ready; shared by `start` and `restart`.
//!
//! Steps 6–8 of the start workflow: choose the port, spawn `opencode serve` isolated and detached,
//! record it as `starting` *before* waiting (so a daemon killed now can adopt it), then wait for the
//! listening line and a healthy answer. A process that exits first is reported with its exit status
//! and log tail. Afterwards an exit watcher records how the Instance ended. Finding and vetting the
//! program is `program`; waiting for readiness is `ready`.

mod program;
mod ready;

use std::time::Duration;

use super::{Manager, Progress};
use crate::error::ErrorCode;
use crate::instance::api::InstanceApi;
use crate::instance::confine::Isolation;
use crate::instance::ports;
use crate::instance::process::{self, LaunchSpec};
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::reply::{ProviderReport, Reply};
use crate::sandbox::{self, InstanceDirs, InstanceEnvSpec};
use crate::state::{Desired, InstanceRecord};

/// A ready Instance.
pub(crate) struct Launched {
    pub port: u16,
    pub provider: Option<ProviderReport>,
    /// How it is confined; callers warn when it is not.
    pub isolation: Isolation,
}

/// Launches the Instance of `project` and waits until it answers; records every step in state.
pub(crate) async fn launch(
    manager: &Manager,
    project: &ProjectName,
    env: &ProjectEnv,
    progress: &Progress,
) -> Result<Launched, Reply> {
    let config = manager.config();
    let paths = &config.paths;
    let program = program::resolve_program(manager, env, progress).await?;

    let limits = effective_limits(manager, env)?;
    check_budget(manager, project, &limits)?;
    let mechanism = manager.limit_mechanism().await.mechanism.clone();
    let port = choose_port(manager, project, env).await?;
    progress.step(format!("starting OpenCode on 127.0.0.1:{port}"));

    let dirs = InstanceDirs::of(paths, project);
    dirs.create(config.seed_plugin_stub)
        .map_err(|err| internal(format!("creating the instance directories: {err}")))?;
    // TMPDIR is the Instance's own; Bun leaves ~5 MB of extracted libraries there per start.
    dirs.clear_tmp();
    let launch_id = crate::secrets::random_id();
    let marker = sandbox::marker(paths, project, &launch_id);
    let env_vars = sandbox::instance_env(
        &InstanceEnvSpec {
            config,
            dirs: &dirs,
            password: &env.password,
            marker: &marker,
            project_vars: env.instance_vars(),
        },
        |key| std::env::var(key).ok(),
    );
    let log = paths.project_log(project);
    crate::atomic_file::private_dir(&paths.logs_dir())
        .map_err(|err| internal(format!("creating the log directory: {err}")))?;
    let _ = crate::logs::rotate_if_large(&log, crate::logs::ROTATE_AT_BYTES);
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let spec = LaunchSpec {
        program,
        args: [
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        cwd: paths.repo_dir(project),
        env: env_vars,
        log: log.clone(),
        // Without a cgroup, rlimits are what the kernel offers (never RLIMIT_AS: Bun reserves
        // tens of GB of address space).
        rlimits: if matches!(mechanism, crate::instance::enforce::Mechanism::Rlimit) {
            crate::instance::enforce::rlimits()
        } else {
            Vec::new()
        },
    };
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let plan = sandbox::confinement_plan(
        config,
        project,
        &sandbox::Reach {
            key: Some(&env.ssh_key_path),
            program: Some(&spec.program),
            path_var,
            bind_port: Some(port),
        },
    );
    let confinement =
        sandbox::confine(config, manager.isolation_support(), &plan).map_err(|reason| {
            Reply::error(
                ErrorCode::IsolationUnavailable,
                format!("cannot confine the instance of {project}: {reason}"),
                "see docs/security.md; run opencode-manager doctor to see what this machine offers",
            )
        })?;
    let isolation = confinement.isolation.clone();
    let (mut child, proc) = process::spawn_detached(&spec, confinement).map_err(|err| {
        Reply::error(
            ErrorCode::OpencodeStartFailed,
            format!("could not start {}: {err}", spec.program.display()),
            "check OPENCODE_BIN and the log",
        )
    })?;
    tracing::info!(project = %project, pid = proc.pid, port, isolation = %isolation.describe(), "spawned opencode");
    let cgroup = if limits.is_empty() {
        None
    } else {
        let name = marker.replace(':', ".");
        match crate::instance::enforce::enforce(&mechanism, &name, proc.pid, &limits) {
            Ok(cgroup) => Some(cgroup),
            Err(err) => {
                tracing::warn!(project = %project, "could not apply resource limits: {err}");
                None
            }
        }
    };
    manager.set_enforcement(
        project.as_str(),
        Some(super::Enforcement {
            limits: limits.clone(),
            cgroup,
        }),
    );
    let _ = process::write_pid_file(&paths.pid_file(project), proc.pid);
    manager
        .store()
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.port = Some(port);
                r.isolation = Some(isolation.describe());
                r.desired = Desired::Running;
                r.instance = InstanceRecord::Starting {
                    proc,
                    launch_id: launch_id.clone(),
                    since: crate::timestamp::now(),
                };
            }
        })
        .map_err(Manager::store_failure)?;

    let api = InstanceApi::new(port, env.password.clone());
    let ready = ready::wait_ready(&mut child, &api, &log, log_start, config.ready_timeout).await;
    if let Err(failure) = ready {
        if failure.still_running {
            process::terminate(proc, &marker, Duration::from_secs(2)).await;
            let _ = child.wait().await;
        }
        let message = failure.reply.message.clone().unwrap_or_default();
        let _ = manager.store().update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.instance = InstanceRecord::Failed {
                    error: message,
                    at: crate::timestamp::now(),
                };
            }
        });
        let _ = crate::atomic_file::remove_if_present(&paths.pid_file(project));
        return Err(failure.reply);
    }
    let now = crate::timestamp::now();
    manager
        .store()
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.instance = InstanceRecord::Running {
                    proc,
                    launch_id: launch_id.clone(),
                    started_at: now.clone(),
                };
                r.last_health_check = Some(now.clone());
            }
        })
        .map_err(Manager::store_failure)?;
    watch_exit(manager.clone(), project.clone(), launch_id, child);
    progress.step("OpenCode is ready");
    let provider = api
        .providers(Duration::from_secs(10))
        .await
        .ok()
        .map(|info| ProviderReport {
            providers: info.providers,
            model: info.default_model,
        });
    Ok(Launched {
        port,
        provider,
        isolation,
    })
}

/// Warns when an Instance runs unconfined: its agent can then read every Project's secrets.
pub(crate) fn isolation_warning(reply: Reply, isolation: &Isolation) -> Reply {
    match isolation {
        Isolation::Landlock { .. } => reply,
        Isolation::None { reason } => reply.warn(format!(
            "the agent runs without isolation ({reason}): it can read other projects' .env files, keys and the manager's tokens; \
             set isolation = \"required\" in opencode-manager.toml to refuse such starts (see docs/security.md)"
        )),
    }
}

/// Picks the Instance's port and records it, under the manager's port lock so two Projects starting
/// at once never pick the same one. The remembered port gets a moment to be released by a process
/// that just exited (a restart) before another port is chosen.
async fn choose_port(
    manager: &Manager,
    project: &ProjectName,
    env: &ProjectEnv,
) -> Result<u16, Reply> {
    let config = manager.config();
    if let Some(port) = env.opencode_port {
        if process::wait_for(|| ports::is_free(port), Duration::from_secs(3)).await {
            return Ok(port);
        }
        return Err(Reply::error(
            ErrorCode::PortUnavailable,
            format!("OPENCODE_PORT {port} from the project's .env is in use by another process"),
            "free that port, or remove OPENCODE_PORT from .env to let the manager choose one",
        ));
    }
    let remembered = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .and_then(|r| r.port);
    if let Some(port) = remembered {
        process::wait_for(|| ports::is_free(port), Duration::from_secs(3)).await;
    }
    let _guard = manager.port_lock().lock().await;
    let state = manager.store().snapshot();
    let port = ports::choose(
        project.as_str(),
        remembered,
        &config.port_range,
        &state.reserved_ports(project.as_str()),
    )
    .ok_or_else(|| {
        Reply::error(
            ErrorCode::PortUnavailable,
            format!(
                "no free port in {}-{}",
                config.port_range.start(),
                config.port_range.end()
            ),
            "stop other projects or widen port_min/port_max in opencode-manager.toml",
        )
    })?;
    manager
        .store()
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.port = Some(port);
            }
        })
        .map_err(Manager::store_failure)?;
    Ok(port)
}

/// The Project's limits (`MEMORY_MAX`, `CPU_MAX`, `TASKS_MAX` in its `.env`), each falling back
/// to the daemon-wide default.
fn effective_limits(manager: &Manager, env: &ProjectEnv) -> Result<crate::limits::Limits, Reply> {
    let own = crate::limits::Limits::parse(
        env.memory_max.as_deref(),
        env.cpu_max.as_deref(),
        env.tasks_max.as_deref(),
    )
    .map_err(|err| {
        Reply::error(
            ErrorCode::InvalidConfig,
            format!("{err} (in the project's .env)"),
            "use values like MEMORY_MAX=2G, CPU_MAX=150%, TASKS_MAX=512",
        )
    })?;
    let default = &manager.config().limits;
    Ok(crate::limits::Limits {
        memory_bytes: own.memory_bytes.or(default.memory_bytes),
        cpu_percent: own.cpu_percent.or(default.cpu_percent),
        tasks: own.tasks.or(default.tasks),
    })
}

/// What an Instance without a memory limit is assumed to need (design Part B.4: about 0.5 GiB).
const ASSUMED_INSTANCE_MEMORY: u64 = 512 * 1024 * 1024;

/// Refuses a start that would take the Instances past the aggregate memory budget, naming what runs.
fn check_budget(
    manager: &Manager,
    project: &ProjectName,
    limits: &crate::limits::Limits,
) -> Result<(), Reply> {
    let Some(budget) = manager.config().memory_budget else {
        return Ok(());
    };
    let state = manager.store().snapshot();
    let mut running = Vec::new();
    let mut committed = 0u64;
    for (name, record) in &state.projects {
        if name == project.as_str()
            || !record
                .instance
                .proc()
                .is_some_and(|(p, _)| process::is_alive(p))
        {
            continue;
        }
        let need = manager
            .enforcement_facts(name)
            .1
            .unwrap_or(ASSUMED_INSTANCE_MEMORY);
        committed += need;
        running.push(format!("{name} ({} MiB)", need / (1024 * 1024)));
    }
    let need = limits.memory_bytes.unwrap_or(ASSUMED_INSTANCE_MEMORY);
    if committed + need <= budget {
        return Ok(());
    }
    Err(Reply::error(
        ErrorCode::OverBudget,
        format!(
            "starting {project} ({} MiB) would exceed the memory budget of {} MiB; running: {}",
            need / (1024 * 1024),
            budget / (1024 * 1024),
            if running.is_empty() {
                "nothing".to_owned()
            } else {
                running.join(", ")
            }
        ),
        "stop a project, lower MEMORY_MAX, or raise memory_budget in opencode-manager.toml",
    ))
}

/// Records how a spawned Instance ends, if it is still the recorded launch.
fn watch_exit(
    manager: Manager,
    project: ProjectName,
    launch_id: String,
    mut child: tokio::process::Child,
) {
    manager.set_watched(&launch_id, true);
    tokio::spawn(async move {
        let Ok(status) = child.wait().await else {
            manager.set_watched(&launch_id, false);
            return;
        };
        let mut how = ready::describe_exit(status);
        if manager.enforcement_facts(project.as_str()).0 {
            how.push_str(", killed by the kernel's OOM killer: the memory limit was reached");
        }
        let crashed = manager.store().update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str())
                && r.instance.proc().is_some_and(|(_, id)| id == launch_id)
            {
                if r.desired == Desired::Stopped {
                    // A stop is under way; it records the outcome itself.
                    tracing::info!(project = %project, "opencode exited ({how})");
                    return false;
                }
                tracing::warn!(project = %project, "opencode exited unexpectedly ({how})");
                r.instance = InstanceRecord::Stopped {
                    last_exit: Some(format!(
                        "exited unexpectedly ({how}) at {}",
                        crate::timestamp::now()
                    )),
                };
                return true;
            }
            false
        });
        // Only now may the liveness check look at this launch: its outcome is recorded.
        manager.set_watched(&launch_id, false);
        if crashed.unwrap_or(false) {
            // What the dead Instance's tools started (in their own sessions) must not outlive it.
            let marker = crate::sandbox::marker(&manager.config().paths, &project, &launch_id);
            let swept = process::sweep(|value| value == marker).await;
            if swept > 0 {
                tracing::warn!(project = %project, swept, "killed processes the crashed instance left behind");
            }
        }
    });
}

fn internal(message: String) -> Reply {
    tracing::error!("{message}");
    Reply::error(ErrorCode::Internal, message, "see manager.log")
}
