//! The global MCP gateway (port 3005): every Project's coding sessions behind one Streamable HTTP
//! endpoint, served by the daemon itself (the original ran a separate Node process).
//!
//! [`run`] is a task that subscribes to the snapshot: it opens the listener with the first Project
//! a user wants running and closes it after the last (the pure table in `lifecycle`), answers the
//! requests of `mcp_restart` and `stop_mcp_tool` (the channel `ops` owns), publishes its own state
//! into the snapshot, and keeps the original's compatibility files current
//! (`global-mcp-tool.pid`, `opencode-mcp-tool-servers.json`). Tools live in `tools` (with the
//! session lists they keep in `session_lists`), tokens in `auth`, behind the shared `front_door`.
//! Only this module and `mcp` know rmcp; only these and `front_door` know axum.

pub(crate) mod auth;
pub(crate) mod in_flight;
pub(crate) mod lifecycle;
pub(crate) mod params;
mod results;
mod route;
pub(crate) mod servers_file;
mod session_lists;
pub(crate) mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ops::{GatewayRequest, Manager};
use crate::secrets::Secret;
use crate::snapshot::{GatewayView, Snapshot};
use lifecycle::{Cause, State, Transition};

/// How long after a failed attempt to listen the next one is made, while Projects want it.
const RETRY: Duration = Duration::from_secs(1);

/// The listener, as the task holds it.
enum Listener {
    NotStarted,
    Running {
        serving: in_flight::Serving,
        port: u16,
        since: std::time::Instant,
        started_at: String,
    },
    Stopped {
        by_user: bool,
        error: Option<String>,
    },
}

impl Listener {
    fn state(&self) -> State {
        match self {
            Listener::NotStarted => State::NotStarted,
            Listener::Running { .. } => State::Running,
            Listener::Stopped { by_user, error } => State::Stopped {
                by_user: *by_user,
                failed: error.is_some(),
            },
        }
    }

    fn view(&self) -> GatewayView {
        match self {
            Listener::NotStarted => GatewayView::NotStarted,
            Listener::Running {
                port,
                since,
                started_at,
                ..
            } => GatewayView::Running {
                port: *port,
                since: *since,
                started_at: started_at.clone(),
            },
            Listener::Stopped { by_user, error } => GatewayView::Stopped {
                by_user: *by_user,
                error: error.clone(),
            },
        }
    }
}

/// Serves the Gateway's lifecycle until `cancel` fires.
pub(crate) async fn run(
    manager: Manager,
    publish: Arc<watch::Sender<Snapshot>>,
    mut requests: mpsc::UnboundedReceiver<GatewayRequest>,
    cancel: CancellationToken,
) {
    let mut snapshots = manager.subscribe();
    let mut listener = Listener::NotStarted;
    let mut seen_starts = 0u64;
    let mut servers = servers_file::Servers::default();
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        servers.update(&manager, &snapshot).await;
        let cause = Cause::Projects {
            wanted: snapshot.gateway_wanted(),
            user_started: snapshot.user_starts > seen_starts,
        };
        seen_starts = snapshot.user_starts;
        let seen_revision = snapshot.revision;
        let transition = lifecycle::decide(listener.state(), cause);
        apply(&manager, &mut listener, transition).await;
        retry = next_retry(&listener, snapshot.gateway_wanted(), retry);
        publish_view(&publish, &listener, seen_revision);
        let retry_at = retry.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(request) = requests.recv() => {
                let wanted = manager.snapshot().gateway_wanted();
                // The reply goes out once the change is made and published.
                let answer = match request {
                    GatewayRequest::Stop(reply) => {
                        let transition = lifecycle::decide(listener.state(), Cause::UserStop);
                        apply(&manager, &mut listener, transition).await;
                        Answer::Stop(reply, transition != Transition::Nothing)
                    }
                    GatewayRequest::Restart(reply) => {
                        let transition = lifecycle::decide(listener.state(), Cause::UserRestart);
                        apply(&manager, &mut listener, transition).await;
                        let result = match &listener {
                            Listener::Stopped { error: Some(error), .. } => Err(error.clone()),
                            _ => Ok(()),
                        };
                        Answer::Restart(reply, result)
                    }
                };
                retry = next_retry(&listener, wanted, None);
                publish_view(&publish, &listener, seen_revision);
                answer.send();
            }
            () = tokio::time::sleep_until(retry_at), if retry.is_some() => {
                let wanted = manager.snapshot().gateway_wanted();
                let transition = lifecycle::decide(listener.state(), Cause::RetryDue { wanted });
                apply(&manager, &mut listener, transition).await;
                retry = next_retry(&listener, wanted, None);
                publish_view(&publish, &listener, seen_revision);
            }
            () = cancel.cancelled() => break,
        }
    }
    if let Listener::Running { serving, .. } = listener {
        serving.close();
    }
    let pid_file = manager.config().paths.gateway_pid_file();
    let _ =
        tokio::task::spawn_blocking(move || crate::atomic_file::remove_if_present(&pid_file)).await;
}

/// A reply to `mcp_restart` or `stop_mcp_tool`, sent after the change is published.
enum Answer {
    Stop(tokio::sync::oneshot::Sender<bool>, bool),
    Restart(
        tokio::sync::oneshot::Sender<Result<(), String>>,
        Result<(), String>,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Stop(reply, was_open) => {
                let _ = reply.send(was_open);
            }
            Answer::Restart(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// When to try to listen again: after a failure, while Projects want the Gateway.
fn next_retry(
    listener: &Listener,
    wanted: bool,
    pending: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match listener {
        Listener::Stopped { error: Some(_), .. } if wanted => {
            Some(pending.unwrap_or_else(|| tokio::time::Instant::now() + RETRY))
        }
        _ => None,
    }
}

fn publish_view(publish: &watch::Sender<Snapshot>, listener: &Listener, seen: u64) {
    let view = listener.view();
    publish.send_if_modified(|s| {
        if s.gateway == view && s.gateway_seen == seen {
            return false;
        }
        s.gateway = view;
        s.gateway_seen = seen;
        true
    });
}

async fn apply(manager: &Manager, listener: &mut Listener, transition: Transition) {
    match transition {
        Transition::Nothing => {}
        Transition::Open => open(manager, listener).await,
        Transition::Close { by_user } => close(manager, listener, by_user).await,
        Transition::Reopen => {
            close(manager, listener, false).await;
            open(manager, listener).await;
        }
    }
}

async fn open(manager: &Manager, listener: &mut Listener) {
    let port = manager.config().gateway_port;
    match bind_and_serve(manager, port).await {
        Ok(serving) => {
            let started_at = crate::timestamp::now();
            let pid_file = manager.config().paths.gateway_pid_file();
            let _ = tokio::task::spawn_blocking(move || {
                crate::atomic_file::replace(
                    &pid_file,
                    format!("{}\n", std::process::id()).as_bytes(),
                    crate::atomic_file::PRIVATE,
                )
            })
            .await;
            record(manager, "running", Some(started_at.clone()), None).await;
            tracing::info!(port, "gateway listening on http://127.0.0.1:{port}/mcp");
            *listener = Listener::Running {
                serving,
                port,
                since: std::time::Instant::now(),
                started_at,
            };
        }
        Err(err) => {
            let message = format!("the gateway could not start on 127.0.0.1:{port}: {err}");
            // A failure is retried every second; say it once per distinct failure.
            let repeated = matches!(&*listener, Listener::Stopped { error: Some(previous), .. } if *previous == message);
            if !repeated {
                tracing::error!("{message}");
                record(manager, "failed", None, Some(message.clone())).await;
            }
            *listener = Listener::Stopped {
                by_user: false,
                error: Some(message),
            };
        }
    }
}

async fn close(manager: &Manager, listener: &mut Listener, by_user: bool) {
    let previous = std::mem::replace(
        listener,
        Listener::Stopped {
            by_user,
            error: None,
        },
    );
    if let Listener::Running { serving, port, .. } = previous {
        // Calls under way still get their answers; only new connections are refused.
        serving.close();
        tracing::info!(port, by_user, "gateway closed");
    }
    let pid_file = manager.config().paths.gateway_pid_file();
    let _ =
        tokio::task::spawn_blocking(move || crate::atomic_file::remove_if_present(&pid_file)).await;
    record(manager, "stopped", None, None).await;
}

/// The original's `global_mcp_tool` record in the state file.
async fn record(
    manager: &Manager,
    status: &str,
    started_at: Option<String>,
    error: Option<String>,
) {
    let port = manager.config().gateway_port;
    let _ = manager
        .host()
        .store
        .update(|s| {
            s.gateway = Some(crate::state::GatewayRecord {
                port: Some(port),
                status: status.to_owned(),
                started_at,
                error,
            });
        })
        .await;
}

/// Binds (a busy port is reported at once, after a short retry for a listener just closed), then
/// serves in a task. Accepted sockets set `TCP_NODELAY`: a reply written in several small pieces
/// must not wait for the client's delayed ACK.
async fn bind_and_serve(manager: &Manager, port: u16) -> std::io::Result<in_flight::Serving> {
    let paths = manager.config().paths.clone();
    let (global, source) = tokio::task::spawn_blocking(move || auth::global_token(&paths))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|err| std::io::Error::other(format!("reading the gateway token: {err}")))?;
    if let Ok(Some(warning)) =
        crate::front_door::check_strength(&global, &source, std::net::Ipv4Addr::LOCALHOST.into())
    {
        tracing::warn!("gateway: {warning}");
    }
    let mut attempts = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await {
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    let serving = in_flight::Serving::default();
    let app = router(
        manager.clone(),
        global,
        serving.sessions.clone(),
        serving.in_flight.clone(),
    );
    let shutdown = serving.accept.clone();
    tokio::spawn(async move {
        let served = axum::serve(crate::front_door::without_delay(listener), app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!("gateway stopped serving: {err}");
        }
    });
    Ok(serving)
}

/// `/mcp` behind the bearer check, and an unauthenticated `/health`; both behind the Host/Origin guard.
fn router(
    manager: Manager,
    global: Secret,
    sessions: CancellationToken,
    in_flight: Arc<in_flight::InFlight>,
) -> Router {
    let door = crate::front_door::Door::new(
        crate::front_door::hosts_for(
            std::net::Ipv4Addr::LOCALHOST.into(),
            &manager.config().allowed_hosts,
        ),
        auth::authorizer(manager.host().envs.clone(), global),
    );
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(door.hosts().iter().cloned())
        .with_allowed_origins(door.origin_patterns())
        .with_json_response(true)
        .with_cancellation_token(sessions.child_token());
    let for_service = manager.clone();
    let lists = Arc::new(session_lists::SessionLists::default());
    let service = StreamableHttpService::new(
        move || {
            Ok(tools::GatewayServer::new(
                for_service.clone(),
                lists.clone(),
            ))
        },
        LocalSessionManager::default().into(),
        config,
    );
    let protected = Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(
            door.clone(),
            crate::front_door::bearer,
        ))
        .layer(middleware::from_fn_with_state(in_flight, in_flight::count));
    Router::new()
        .route(
            "/health",
            get(move || {
                let active = manager.snapshot().running_count();
                async move {
                    axum::Json(serde_json::json!({
                        "status": "ok", "server": "opencode-manager-gateway",
                        "version": env!("CARGO_PKG_VERSION"), "active_projects": active,
                    }))
                }
            }),
        )
        .merge(protected)
        .layer(middleware::from_fn_with_state(
            door,
            crate::front_door::host_guard,
        ))
}
