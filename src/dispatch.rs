//! Runs the operation a request names and builds the [`Reply`] a client sees from its outcome,
//! for every door that asks for operations (the control socket, for the CLI and the MCP server;
//! the dashboard's buttons), and records each state-changing one in the audit log. Replies are
//! made here, at the edge, and nowhere in `ops`; the original's keys and words are kept.

use crate::audit::Caller;
use crate::error::OpError;
use crate::lifecycle::Progress;
use crate::ops::start::{Running, StartOutcome, StartReply};
use crate::ops::{self, Failure, Manager};
use crate::protocol::{Envelope, Frame, Request};
use crate::reply::{OpencodeInfo, ProjectSummary, ProviderReport, Reply, Status};
use crate::snapshot::{GatewayView, InstanceState, ProjectView, ProviderView};
use crate::state::Desired;

/// Runs `envelope` for `caller` (the local user behind the socket, a dashboard session) and
/// records it in the audit log, with the envelope's door, when it changes something.
pub(crate) async fn dispatch(
    manager: Manager,
    envelope: Envelope,
    progress: Progress,
    caller: Caller,
) -> Frame {
    let since = std::time::Instant::now();
    let audited = envelope
        .request
        .audited()
        .map(|(action, project)| (action, project.map(str::to_owned)));
    let door = envelope.caller.door;
    let uid = match caller {
        Caller::LocalUser { uid } | Caller::DashboardSession { uid } => Some(uid),
        _ => None,
    };
    let frame = run(&manager, envelope, progress, uid).await;
    if let (Some((action, project)), Frame::Reply(reply)) = (audited, &frame) {
        manager.audit().record(
            door,
            caller,
            action,
            project.as_deref(),
            &outcome(reply),
            since,
        );
    }
    frame
}

/// How a reply reads in the audit log: `ok`, another status word, or the error code.
pub(crate) fn outcome(reply: &Reply) -> String {
    let word = |value: serde_json::Result<serde_json::Value>| {
        value
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    match (reply.status(), reply.error) {
        (Status::Error, Some(code)) => word(serde_json::to_value(code)),
        (Status::Success | Status::Ok, _) => "ok".into(),
        (status, _) => word(serde_json::to_value(status)),
    }
}

async fn run(manager: &Manager, envelope: Envelope, progress: Progress, uid: Option<u32>) -> Frame {
    let caller = envelope.caller;
    let differences = caller.differences(manager.config());
    let reply = match envelope.request {
        Request::Ping => {
            return Frame::Hello {
                version: crate::version().to_owned(),
                pid: std::process::id(),
                gateway_port: manager.config().gateway_port,
            };
        }
        Request::Start(args) => start(
            ops::start::start(manager, args, caller, progress).await,
            Begun::Started,
        ),
        Request::Status { project_name } => {
            looked_up(ops::status::status(manager, &project_name), status)
        }
        Request::Stop { project_name } => {
            looked_up(ops::stop::stop(manager, &project_name).await, |s| {
                let message = if s.was_running {
                    "Project stopped"
                } else {
                    "Project was not running; nothing to stop"
                };
                Reply::new(Status::Success, message).with_project(&s.project)
            })
        }
        Request::StopAll => match ops::stop::stop_all(manager).await {
            Ok(stopped) => {
                let mut reply = Reply::new(
                    Status::Success,
                    format!("{} project(s) stopped", stopped.len()),
                );
                reply.items = Some(stopped);
                reply
            }
            Err(err) => err.into(),
        },
        Request::Restart { project_name } => {
            match ops::restart::restart(manager, &project_name, caller, progress).await {
                Ok(reply) => start(Ok(reply), Begun::Restarted),
                Err(failure) => not_found_or(failure),
            }
        }
        Request::Destroy {
            project_name,
            force,
        } => looked_up(
            ops::destroy::destroy(manager, &project_name, force).await,
            |project| Reply::new(Status::Success, "Project destroyed").with_project(&project),
        ),
        Request::List => list(manager, ops::list::list(manager)),
        Request::Doctor => {
            let checks = ops::doctor::doctor(manager.host()).await;
            let mut reply = Reply::new(
                Status::Success,
                format!(
                    "{} checks, {} problems",
                    checks.lines.len(),
                    checks.problems
                ),
            );
            reply.items = Some(checks.lines);
            reply
        }
        Request::McpStatus => mcp_status(ops::mcp_status::mcp_status(manager)),
        Request::Audit {
            project_name,
            since,
        } => {
            let filter = crate::audit::Filter {
                project: project_name,
                since,
            };
            match ops::audit::audit(manager, filter).await {
                Ok(entries) => {
                    let mut reply = Reply::new(
                        Status::Success,
                        format!("{} audited call(s)", entries.len()),
                    );
                    reply.entries = Some(entries);
                    reply
                }
                Err(err) => err.into(),
            }
        }
        Request::DashboardLogin => match ops::dashboard_login::login(manager, uid).await {
            Ok(url) => {
                let mut reply = Reply::new(
                    Status::Success,
                    format!(
                        "open this URL within {} seconds; it works once",
                        ops::dashboard_login::CODE_VALID.as_secs()
                    ),
                );
                reply.url = Some(url);
                reply
            }
            Err(err) => err.into(),
        },
        Request::McpRestart => match ops::mcp_restart::mcp_restart(manager).await {
            Ok(restarted) => {
                let mut reply = Reply::new(Status::Success, "Global MCP tool restarted");
                reply.pid = Some(std::process::id());
                reply.port = Some(restarted.port);
                reply.active_projects = Some(restarted.active_projects);
                reply
            }
            Err(err) => err.into(),
        },
        Request::StopMcpTool => match ops::stop_mcp_tool::stop_mcp_tool(manager).await {
            Ok(active) => {
                let mut reply = Reply::new(Status::Success, "Global MCP tool stopped");
                reply.active_projects = Some(active);
                reply
            }
            Err(err) => err.into(),
        },
        Request::Logs {
            project_name,
            lines,
        } => looked_up(
            ops::logs::logs(manager, project_name.as_deref(), lines).await,
            |tail| {
                let mut reply = Reply::new(
                    Status::Success,
                    format!("last {} line(s) of {}", tail.lines.len(), tail.path),
                );
                reply.project = tail.project;
                reply.log_path = Some(tail.path);
                reply.lines = Some(tail.lines);
                reply
            },
        ),
    };
    let reply = differences.into_iter().fold(reply, Reply::warn);
    Frame::Reply(Box::new(reply))
}

fn looked_up<T>(result: Result<T, Failure>, found: impl FnOnce(T) -> Reply) -> Reply {
    match result {
        Ok(value) => found(value),
        Err(failure) => not_found_or(failure),
    }
}

fn not_found_or(failure: Failure) -> Reply {
    match failure {
        Failure::NotFound { project, known } => Reply::not_found(&project, &known),
        Failure::Error(err) => err.into(),
    }
}

/// Which operation launched the Instance a start reply reports.
enum Begun {
    Started,
    Restarted,
}

fn start(result: Result<StartReply, OpError>, begun: Begun) -> Reply {
    let StartReply {
        project,
        outcome,
        warnings,
    } = match result {
        Ok(reply) => reply,
        Err(err) => return err.into(),
    };
    let reply = match outcome {
        StartOutcome::Started(running) => running_reply(
            Status::Success,
            &match begun {
                Begun::Started => format!("Project {project} started successfully"),
                Begun::Restarted => "Project restarted".to_owned(),
            },
            running,
            true,
        ),
        StartOutcome::AlreadyRunning(running) => running_reply(
            Status::AlreadyRunning,
            "Project is already running",
            running,
            false,
        ),
        StartOutcome::WaitingForPasswords { env_path } => {
            let mut reply = Reply::new(
                Status::WaitingForPasswords,
                format!(
                    "Configuration file created at: {env_path}\n\nPlease set secure passwords in the .env file:\n  \
                     - OPENCODE_SERVER_PASSWORD (generate: openssl rand -hex 16)\n  \
                     - MCP_TOOL_BEARER_TOKEN (generate: openssl rand -hex 32)\n\n\
                     SSH key will be auto-generated automatically.\n\n\
                     After setting passwords, call opencode_start again to continue."
                ),
            );
            reply.env_path = Some(env_path);
            reply.hint = Some("ask the user to edit the .env file (never paste secrets into the chat), then call opencode_start again".into());
            reply
        }
        StartOutcome::WaitingForKey {
            public_key,
            public_key_path,
            detail,
        } => {
            let mut reply = Reply::new(
                Status::WaitingForKey,
                format!(
                    "SSH key does not have access to repository yet.\n\nPlease add this public key to your Git repository:\n\n{public_key}\n\n\
                     Public key location: {public_key_path}\n\nAfter adding the key, run this command again to retry."
                ),
            );
            reply.public_key = Some(public_key);
            reply.public_key_path = Some(public_key_path);
            reply.hint = Some(format!(
                "show the public key to the user, ask them to add it as a deploy key (with write access if the agent should push), then call opencode_start again. git said: {detail}"
            ));
            reply
        }
    };
    warnings
        .into_iter()
        .fold(reply.with_project(&project), Reply::warn)
}

/// The reply for a running Project (`success`, `already_running`).
fn running_reply(status: Status, message: &str, running: Running, with_provider: bool) -> Reply {
    let mut reply = Reply::new(status, message);
    reply.agent = Some(running.agent.to_string());
    reply.opencode_port = Some(running.port);
    reply.opencode_url = Some(format!("http://127.0.0.1:{}", running.port));
    reply.opencode_pid = Some(running.pid);
    reply.mcp_tool_url = Some(running.gateway_url);
    reply.mcp_tool_port = Some(running.gateway_port);
    reply.sandbox_dir = Some(running.sandbox_dir);
    reply.started_at = running.started_at;
    if with_provider {
        reply.provider = running.provider.map(provider);
    }
    reply
}

fn provider(view: ProviderView) -> ProviderReport {
    ProviderReport {
        providers: view.providers,
        model: view.model,
    }
}

fn status(status: ops::status::ProjectStatus) -> Reply {
    let ops::status::ProjectStatus {
        project,
        view,
        uptime_secs,
        sandbox_dir,
        gateway_url,
        gateway_port,
        warnings,
    } = status;
    let word = view.state.word();
    let mut reply =
        Reply::new(Status::Ok, format!("Project {project} is {word}")).with_project(&project);
    let alive = view.pid.is_some();
    reply.opencode = Some(OpencodeInfo {
        pid: view.pid,
        port: view.port,
        status: word.to_owned(),
        running: alive,
    });
    reply.opencode_pid = view.pid;
    reply.restarts = (view.desired == Desired::Running).then_some(view.restarts);
    reply.interrupted_sessions =
        (!view.interrupted_sessions.is_empty()).then(|| view.interrupted_sessions.clone());
    reply.memory_bytes = view.memory_bytes;
    reply.isolation = view.isolation.clone();
    reply.agent = Some(view.agent.to_string());
    reply.uptime_secs = uptime_secs;
    reply.opencode_port = view.port;
    reply.sandbox_dir = Some(sandbox_dir);
    reply.git_url = Some(view.git_url.clone());
    reply.created_at = Some(view.created_at.clone());
    reply.last_health_check = view.last_health_check.clone();
    reply.started_at = view.started_at.clone();
    // How the previous Instance ended stays visible after the next one is up (a recycle, a crash).
    reply.last_exit = view.last_exit.clone();
    reply.last_error = view
        .last_error
        .clone()
        .filter(|_| view.state == InstanceState::Failed);
    reply.mcp_tool_url = Some(gateway_url);
    reply.mcp_tool_port = Some(gateway_port);
    if let (true, Some(port)) = (alive, view.port) {
        reply.opencode_url = Some(format!("http://127.0.0.1:{port}"));
        reply.provider = view.provider.clone().map(provider);
    }
    if view.state == InstanceState::Unhealthy {
        reply = reply.warn("the instance is running but does not answer its health checks");
    }
    warnings.into_iter().fold(reply, Reply::warn)
}

fn list(manager: &Manager, list: ops::list::ProjectList) -> Reply {
    let projects: Vec<ProjectSummary> = list
        .projects
        .into_iter()
        .map(|(name, view)| {
            let sandbox = crate::project::ProjectName::parse(&name)
                .map(|p| manager.config().paths.sandbox(&p))
                .unwrap_or_else(|_| view.sandbox_dir.clone());
            summary(name, &view, sandbox.display().to_string())
        })
        .collect();
    let running = projects.iter().filter(|p| p.opencode_running).count();
    let mut reply = Reply::new(
        Status::Success,
        format!("{} project(s), {running} running", projects.len()),
    );
    reply.projects = Some(projects);
    list.warnings.into_iter().fold(reply, Reply::warn)
}

fn summary(name: String, view: &ProjectView, sandbox_dir: String) -> ProjectSummary {
    ProjectSummary {
        name,
        agent: view.agent.to_string(),
        status: view.state.word().to_owned(),
        opencode_running: view.pid.is_some(),
        opencode_port: view.port,
        opencode_pid: view.pid,
        sandbox_dir,
    }
}

fn mcp_status(status: ops::mcp_status::GatewayStatus) -> Reply {
    let mut reply = match status.view {
        GatewayView::NotStarted => {
            Reply::new(Status::NotStarted, "Global MCP tool has never been started")
        }
        GatewayView::Running {
            port,
            since,
            started_at,
        } => {
            let mut reply = Reply::new(
                Status::Running,
                format!("Global MCP gateway is serving http://127.0.0.1:{port}/mcp"),
            );
            reply.pid = Some(std::process::id());
            reply.uptime_secs = Some(since.elapsed().as_secs());
            reply.started_at = Some(started_at);
            reply.mcp_tool_url = Some(format!("http://127.0.0.1:{port}/mcp"));
            reply
        }
        GatewayView::Stopped { error, .. } => {
            let mut reply = Reply::new(Status::Stopped, "Global MCP gateway is stopped");
            reply.last_error = error;
            reply
        }
    };
    reply.port = Some(status.port);
    reply.active_projects = Some(status.active_projects);
    reply
}
