//! Launching an Instance and waiting until it is ready (steps 6–8 of the start workflow).
//!
//! Choose the port, spawn `opencode serve` confined and detached, put it under its limits,
//! record it as `starting` *before* waiting (so a daemon killed now can adopt it), then wait for
//! the listening line and a healthy answer. A process that exits first is reported with its exit
//! status and log tail. The caller gets the Instance and a future that resolves when it exits;
//! this module watches nothing afterwards. Finding and vetting the program is `program`; waiting
//! for readiness is `ready`.

use std::path::PathBuf;
use std::time::Duration;

use super::timeline::Timeline;
use super::{ExitWatch, Host, Instance, LaunchRequest, Launched, program, ready};
use crate::error::{ErrorCode, OpError};
use crate::instance::api::InstanceApi;
use crate::instance::confine::Isolation;
use crate::instance::enforce::{Enforced, Mechanism};
use crate::instance::process::{self, LaunchSpec};
use crate::instance::{ports, priority};
use crate::limits::Limits;
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::sandbox::{self, InstanceDirs, InstanceEnvSpec};
use crate::state::InstanceRecord;

/// Launches the Instance of `request.project` and waits until it answers; records its launch
/// identity (and a failure) in the state file.
pub(crate) async fn launch(host: &Host, request: LaunchRequest) -> Result<Launched, OpError> {
    let LaunchRequest {
        project,
        id,
        env,
        progress,
        ask_provider,
    } = request;
    let config = &host.config;
    let paths = &config.paths;
    let mut timeline = Timeline::new();
    let kind = host
        .store
        .snapshot()
        .projects
        .get(project.as_str())
        .map(|r| r.agent)
        .unwrap_or_default();
    let repo = paths.repo_dir(&project);
    let agent = if kind.is_acp() {
        Some(
            program::resolve_acp_agent(host, &env, kind, &repo.to_string_lossy(), &progress)
                .await?,
        )
    } else {
        None
    };
    let program = match &agent {
        Some(_) => bridge_program()?,
        None => program::resolve_program(host, &env, &progress).await?,
    };
    let limits = effective_limits(host, &env)?;
    timeline.mark("program");
    let _slot = host.start_slot(&progress).await;
    timeline.mark("slot");
    let mechanism = host.limit_mechanism().await.mechanism.clone();
    let port = choose_port(host, &project, &env).await?;
    timeline.mark("port");
    progress.step(match kind {
        crate::agent::AgentKind::Opencode => format!("starting OpenCode on 127.0.0.1:{port}"),
        _ => format!("starting the {kind} agent behind the ACP bridge on 127.0.0.1:{port}"),
    });

    let dirs = InstanceDirs::of(paths, &project);
    let (log, log_start) = prepare_files(host, &project, dirs.clone(), kind).await?;
    let marker = sandbox::marker(paths, &project, &id);
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
    let mut env_vars = env_vars;
    env_vars.extend(
        kind.fixed_env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    // `opencode acp` also serves its own HTTP API, on a port of its own.
    let agent_port = match kind {
        crate::agent::AgentKind::OpencodeAcp => Some(
            tokio::task::spawn_blocking(crate::instance::ports::ephemeral)
                .await
                .map_err(|err| OpError::internal(format!("choosing a port: {err}")))?
                .map_err(|err| OpError::internal(format!("choosing a port: {err}")))?,
        ),
        _ => None,
    };
    let args = match &agent {
        Some((agent_program, agent_args)) => {
            let mut args = [
                "acp-bridge",
                "--kind",
                kind.as_str(),
                "--port",
                &port.to_string(),
                "--cwd",
                &repo.to_string_lossy(),
                "--",
            ]
            .map(String::from)
            .to_vec();
            args.push(agent_program.to_string_lossy().into_owned());
            args.extend(agent_args.iter().cloned());
            if let Some(agent_port) = agent_port {
                args.extend(["--port".to_owned(), agent_port.to_string()]);
            }
            args
        }
        None => [
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec(),
    };
    let spec = LaunchSpec {
        program,
        args,
        cwd: paths.repo_dir(&project),
        env: env_vars,
        log: log.clone(),
        // Without a cgroup, rlimits are what the kernel offers (never RLIMIT_AS: Bun reserves
        // tens of GB of address space).
        rlimits: if matches!(mechanism, Mechanism::Rlimit) {
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
        &project,
        &sandbox::Reach {
            key: Some(&env.ssh_key_path),
            programs: &match &agent {
                Some((agent_program, _)) => vec![spec.program.as_path(), agent_program.as_path()],
                None => vec![spec.program.as_path()],
            },
            path_var,
            bind_ports: &[Some(port), agent_port]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
        },
    );
    let confinement =
        sandbox::confine(config, host.isolation_support(), &plan).map_err(|reason| {
            OpError::new(
                ErrorCode::IsolationUnavailable,
                format!("cannot confine the instance of {project}: {reason}"),
                "see docs/security.md; run opencode-manager doctor to see what this machine offers",
            )
        })?;
    let isolation = confinement.isolation.clone();
    let (mut child, proc) = process::spawn_detached(&spec, confinement).map_err(|err| {
        OpError::new(
            ErrorCode::OpencodeStartFailed,
            format!("could not start {}: {err}", spec.program.display()),
            "check OPENCODE_BIN and the log",
        )
    })?;
    timeline.mark("spawn");
    tracing::info!(project = %project, pid = proc.pid, port, isolation = %isolation.describe(), "spawned opencode");
    // Its start yields the CPU to the running Instances (back to normal once it is ready).
    let lowered = priority::set(proc.pid, priority::STARTING, Duration::from_millis(300))
        .await
        .inspect_err(|err| {
            tracing::debug!(project = %project, "could not lower the CPU priority of the start: {err}");
        })
        .is_ok();
    let enforced = enforce(&mechanism, &marker, proc.pid, &limits, &project).await;
    let pid_file = paths.pid_file(&project);
    let _ = tokio::task::spawn_blocking(move || process::write_pid_file(&pid_file, proc.pid)).await;
    let record_start = host
        .store
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.port = Some(port);
                r.isolation = Some(isolation.describe());
                r.instance = InstanceRecord::Starting {
                    proc,
                    launch_id: id.clone(),
                    since: crate::timestamp::now(),
                };
            }
        })
        .await;
    if let Err(err) = record_start {
        process::terminate(proc, &marker, Duration::from_secs(2)).await;
        return Err(store_failure(err));
    }

    timeline.mark("recorded");
    let api = InstanceApi::new(port, env.password.clone());
    let ready = ready::wait_ready(&mut child, &api, &log, log_start, config.ready_timeout).await;
    if let Err(failure) = ready {
        if failure.still_running {
            process::terminate(proc, &marker, Duration::from_secs(2)).await;
            let _ = child.wait().await;
        }
        if let Some(enforced) = enforced {
            enforced.remove().await;
        }
        let message = failure.error.message.clone();
        let _ = host
            .store
            .update(|s| {
                if let Some(r) = s.projects.get_mut(project.as_str()) {
                    r.instance = InstanceRecord::Failed {
                        error: message,
                        at: crate::timestamp::now(),
                    };
                }
            })
            .await;
        let pid_file = paths.pid_file(&project);
        let _ =
            tokio::task::spawn_blocking(move || crate::atomic_file::remove_if_present(&pid_file))
                .await;
        return Err(failure.error);
    }
    timeline.mark("healthy");
    if lowered && let Err(err) = priority::set(proc.pid, 0, Duration::from_secs(3)).await {
        tracing::warn!(project = %project, "could not restore the CPU priority of the ready instance: {err}");
    }
    timeline.mark("priority");
    let started_at = crate::timestamp::now();
    host.store
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.instance = InstanceRecord::Running {
                    proc,
                    launch_id: id.clone(),
                    started_at: started_at.clone(),
                };
            }
        })
        .await
        .map_err(store_failure)?;
    timeline.mark("stored");
    progress.step(match kind {
        crate::agent::AgentKind::Opencode => "OpenCode is ready".to_owned(),
        _ => format!("the {kind} agent is ready"),
    });
    let provider = if ask_provider {
        let provider = super::probe::provider_of(&api, Duration::from_secs(10)).await;
        timeline.mark("provider");
        provider
    } else {
        None
    };
    let exit = exit_watch(child, enforced.clone());
    let memory = memory_of(proc.pid, enforced.clone()).await;
    timeline.mark("memory");
    tracing::info!(project = %project, took = %timeline, "opencode ready");
    Ok(Launched {
        instance: Instance {
            project,
            id,
            proc,
            port,
            enforced,
            memory_limit: limits.memory_bytes,
        },
        started_at,
        isolation,
        provider,
        memory,
        exit,
    })
}

/// The memory of an Instance's cgroup, else of its process tree.
pub(crate) async fn memory_of(pid: i32, enforced: Option<Enforced>) -> Option<u64> {
    tokio::task::spawn_blocking(move || {
        enforced
            .as_ref()
            .and_then(Enforced::memory_current)
            .or_else(|| Some(crate::instance::enforce::tree_rss(pid)).filter(|m| *m > 0))
    })
    .await
    .ok()
    .flatten()
}

/// Warns when an Instance runs unconfined: its agent can then read every Project's secrets.
pub(crate) fn isolation_warning(isolation: &Isolation) -> Option<String> {
    match isolation {
        Isolation::Landlock { .. } => None,
        Isolation::None { reason } => Some(format!(
            "the agent runs without isolation ({reason}): it can read other projects' .env files, keys and the manager's tokens; \
             set isolation = \"required\" in opencode-manager.toml to refuse such starts (see docs/security.md)"
        )),
    }
}

/// Resolves when the child ends, with how: its exit status, and whether the kernel's OOM killer
/// ended it in its cgroup.
fn exit_watch(mut child: tokio::process::Child, enforced: Option<Enforced>) -> ExitWatch {
    Box::pin(async move {
        let how = match child.wait().await {
            Ok(status) => ready::describe_exit(status),
            Err(err) => format!("exit status unknown ({err})"),
        };
        let oom = match enforced {
            Some(enforced) => tokio::task::spawn_blocking(move || enforced.oom_killed())
                .await
                .unwrap_or(false),
            None => false,
        };
        if oom {
            format!("{how}, killed by the kernel's OOM killer: the memory limit was reached")
        } else {
            how
        }
    })
}

/// The Instance's directories (TMPDIR emptied: Bun leaves ~5 MB of extracted libraries there per
/// start) and its log (rotated when large); returns the log and where this launch's part begins.
async fn prepare_files(
    host: &Host,
    project: &ProjectName,
    dirs: InstanceDirs,
    kind: crate::agent::AgentKind,
) -> Result<(PathBuf, u64), OpError> {
    let paths = host.config.paths.clone();
    let seed = host.config.seed_plugin_stub;
    let log = paths.project_log(project);
    let prepared = tokio::task::spawn_blocking(move || {
        dirs.create(seed)
            .map_err(|err| format!("creating the instance directories: {err}"))?;
        dirs.clear_tmp();
        if let Some((file, contents)) = crate::agent::home_seed(kind) {
            let path = dirs.home.join(file);
            if !path.exists() {
                let made = path
                    .parent()
                    .map_or(Ok(()), crate::atomic_file::private_dir)
                    .and_then(|()| {
                        crate::atomic_file::create_new(
                            &path,
                            contents.as_bytes(),
                            crate::atomic_file::PRIVATE,
                        )
                    });
                made.map_err(|err| format!("writing {}: {err}", path.display()))?;
            }
        }
        crate::atomic_file::private_dir(&paths.logs_dir())
            .map_err(|err| format!("creating the log directory: {err}"))?;
        let _ = crate::logs::rotate_if_large(&log, crate::logs::ROTATE_AT_BYTES);
        let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        Ok::<_, String>((log, start))
    })
    .await
    .map_err(|err| OpError::internal(format!("preparing the instance: {err}")))?;
    prepared.map_err(|message| {
        tracing::error!("{message}");
        OpError::internal(message)
    })
}

/// Puts the Instance under its limits, where a cgroup can; a failure is logged, not fatal (the
/// RSS watchdog still applies the memory limit).
async fn enforce(
    mechanism: &Mechanism,
    marker: &str,
    pid: i32,
    limits: &Limits,
    project: &ProjectName,
) -> Option<Enforced> {
    if limits.is_empty() {
        return None;
    }
    let name = marker.replace(':', ".");
    match crate::instance::enforce::enforce(mechanism, &name, pid, limits).await {
        Ok(cgroup) if !cgroup.paths().is_empty() => Some(cgroup),
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(project = %project, "could not apply resource limits: {err}");
            None
        }
    }
}

/// Picks the Instance's port and records it, under the port lock so two Projects starting at once
/// never pick the same one. The remembered port gets a moment to be released by a process that
/// just exited (a restart) before another port is chosen.
async fn choose_port(host: &Host, project: &ProjectName, env: &ProjectEnv) -> Result<u16, OpError> {
    let config = &host.config;
    if let Some(port) = env.opencode_port {
        if ports::wait_free(port, Duration::from_secs(3)).await {
            return Ok(port);
        }
        return Err(OpError::new(
            ErrorCode::PortUnavailable,
            format!("OPENCODE_PORT {port} from the project's .env is in use by another process"),
            "free that port, or remove OPENCODE_PORT from .env to let the manager choose one",
        ));
    }
    let remembered = host
        .store
        .snapshot()
        .projects
        .get(project.as_str())
        .and_then(|r| r.port);
    if let Some(port) = remembered {
        ports::wait_free(port, Duration::from_secs(3)).await;
    }
    let _guard = host.port_lock().lock().await;
    let state = host.store.snapshot();
    let port = ports::choose(
        project.as_str(),
        remembered,
        &config.port_range,
        &state.reserved_ports(project.as_str()),
    )
    .ok_or_else(|| {
        OpError::new(
            ErrorCode::PortUnavailable,
            format!(
                "no free port in {}-{}",
                config.port_range.start(),
                config.port_range.end()
            ),
            "stop other projects or widen port_min/port_max in opencode-manager.toml",
        )
    })?;
    host.store
        .update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.port = Some(port);
            }
        })
        .await
        .map_err(store_failure)?;
    Ok(port)
}

/// The Project's limits (`MEMORY_MAX`, `CPU_MAX`, `TASKS_MAX` in its `.env`), each falling back
/// to the daemon-wide default.
pub(crate) fn effective_limits(host: &Host, env: &ProjectEnv) -> Result<Limits, OpError> {
    let own = Limits::parse(
        env.memory_max.as_deref(),
        env.cpu_max.as_deref(),
        env.tasks_max.as_deref(),
    )
    .map_err(|err| {
        OpError::new(
            ErrorCode::InvalidConfig,
            format!("{err} (in the project's .env)"),
            "use values like MEMORY_MAX=2G, CPU_MAX=150%, TASKS_MAX=512",
        )
    })?;
    let default = &host.config.limits;
    Ok(Limits {
        memory_bytes: own.memory_bytes.or(default.memory_bytes),
        cpu_percent: own.cpu_percent.or(default.cpu_percent),
        tasks: own.tasks.or(default.tasks),
    })
}

/// A state write that failed.
pub(crate) fn store_failure(err: crate::state::store::StoreError) -> OpError {
    tracing::error!("{err}");
    OpError::new(
        err.code(),
        err.to_string(),
        "check the manager home's permissions and free space; see manager.log",
    )
}

/// This very program, which also serves as the ACP bridge (`opencode-manager acp-bridge`).
fn bridge_program() -> Result<std::path::PathBuf, OpError> {
    std::env::current_exe().map_err(|err| {
        OpError::new(
            ErrorCode::OpencodeStartFailed,
            format!("cannot find this program's own path to run the ACP bridge: {err}"),
            "run opencode-manager from a path that exists (not a deleted or replaced file)",
        )
    })
}
