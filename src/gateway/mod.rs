//! The global MCP gateway (port 3005): every Project's coding sessions behind one Streamable HTTP
//! endpoint, served by the daemon itself (the original ran a separate Node process).
//!
//! [`Gateway`] owns the listener and its lifecycle: open while at least one Project runs, closed
//! after the last stops (the original's auto-lifecycle), or closed on request until a Project
//! starts or `mcp_restart`. It also keeps the original's compatibility files current
//! (`global-mcp-tool.pid`, `opencode-mcp-tool-servers.json`). Tools live in `tools`, tokens in
//! `auth` (behind the shared `front_door`); only this module and `mcp` know rmcp, only these and
//! `front_door` know axum.

pub mod auth;
pub mod in_flight;
pub mod params;
pub mod servers_file;
pub mod tools;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::ops::Manager;
use crate::secrets::Secret;

/// The listener's lifecycle. Each variant carries what is valid in it.
#[derive(Debug)]
enum Listener {
    NotStarted,
    Running {
        serving: in_flight::Serving,
        port: u16,
        since: Instant,
        started_at: String,
    },
    Stopped {
        by_user: bool,
        error: Option<String>,
    },
}

/// What `mcp_status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayView {
    NotStarted,
    Running {
        port: u16,
        uptime_secs: u64,
        started_at: String,
    },
    Stopped {
        error: Option<String>,
    },
}

/// Why the gateway is being synchronised with the running Projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A periodic check or a stop: follow the running Projects, but respect a user's stop.
    Follow,
    /// A Project was started (or the user asked for a restart): open even after a user's stop.
    Open,
}

/// The gateway's listener, owned by the daemon.
pub struct Gateway {
    // A std mutex: held only to read or swap the lifecycle value, never across an `.await`.
    listener: Mutex<Listener>,
    /// Project tokens, kept in step with the `.env` files by `auth::follow`.
    tokens: Arc<auth::TokenIndex>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            listener: Mutex::new(Listener::NotStarted),
            tokens: Arc::default(),
        }
    }
}

impl Gateway {
    pub fn tokens(&self) -> &auth::TokenIndex {
        &self.tokens
    }

    pub fn view(&self) -> GatewayView {
        match &*self.lock() {
            Listener::NotStarted => GatewayView::NotStarted,
            Listener::Running {
                port,
                since,
                started_at,
                ..
            } => GatewayView::Running {
                port: *port,
                uptime_secs: since.elapsed().as_secs(),
                started_at: started_at.clone(),
            },
            Listener::Stopped { error, .. } => GatewayView::Stopped {
                error: error.clone(),
            },
        }
    }

    /// Opens or closes the listener to match the running Projects. Returns an error text when it
    /// should be open but cannot listen.
    pub fn sync(&self, manager: &Manager, trigger: Trigger) -> Result<(), String> {
        // A restart in progress counts as running, so restarting the only Project never closes
        // the gateway (which would end 2025-era clients' sessions).
        let wanted = manager.running_projects() > 0
            || manager.parked_projects() > 0
            || manager.restarts_in_flight() > 0;
        let mut listener = self.lock();
        match (&*listener, wanted) {
            (Listener::Running { .. }, true) => Ok(()),
            (Listener::Running { .. }, false) => {
                close(&mut listener, manager, false);
                Ok(())
            }
            (Listener::Stopped { by_user: true, .. }, true) if trigger == Trigger::Follow => Ok(()),
            (_, true) => open(&mut listener, manager),
            (_, false) => Ok(()),
        }
    }

    /// Closes the listener on the user's request; it stays closed until a Project starts or `mcp_restart`.
    pub fn stop_by_user(&self, manager: &Manager) -> bool {
        let mut listener = self.lock();
        if !matches!(*listener, Listener::Running { .. }) {
            return false;
        }
        close(&mut listener, manager, true);
        true
    }

    /// Closes and reopens the listener.
    pub fn restart(&self, manager: &Manager) -> Result<(), String> {
        let mut listener = self.lock();
        if matches!(*listener, Listener::Running { .. }) {
            close(&mut listener, manager, false);
        }
        open(&mut listener, manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listener> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn open(listener: &mut Listener, manager: &Manager) -> Result<(), String> {
    let port = manager.config().gateway_port;
    let result = bind_and_serve(manager, port);
    let paths = &manager.config().paths;
    match result {
        Ok(serving) => {
            let started_at = crate::timestamp::now();
            let _ = crate::atomic_file::replace(
                &paths.gateway_pid_file(),
                format!("{}\n", std::process::id()).as_bytes(),
                crate::atomic_file::PRIVATE,
            );
            record(manager, "running", Some(started_at.clone()), None);
            tracing::info!(port, "gateway listening on http://127.0.0.1:{port}/mcp");
            *listener = Listener::Running {
                serving,
                port,
                since: Instant::now(),
                started_at,
            };
            Ok(())
        }
        Err(err) => {
            let message = format!("the gateway could not start on 127.0.0.1:{port}: {err}");
            // The periodic check retries every second; say it once per distinct failure.
            let repeated = matches!(&*listener, Listener::Stopped { error: Some(previous), .. } if *previous == message);
            if !repeated {
                tracing::error!("{message}");
            }
            record(manager, "failed", None, Some(message.clone()));
            *listener = Listener::Stopped {
                by_user: false,
                error: Some(message.clone()),
            };
            Err(message)
        }
    }
}

fn close(listener: &mut Listener, manager: &Manager, by_user: bool) {
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
    let _ = crate::atomic_file::remove_if_present(&manager.config().paths.gateway_pid_file());
    record(manager, "stopped", None, None);
}

fn record(manager: &Manager, status: &str, started_at: Option<String>, error: Option<String>) {
    let port = manager.config().gateway_port;
    let _ = manager.store().update(|s| {
        s.gateway = Some(crate::state::GatewayRecord {
            port: Some(port),
            status: status.to_owned(),
            started_at,
            error,
        });
    });
}

/// Binds synchronously (so a busy port is reported at once), then serves in a task.
fn bind_and_serve(manager: &Manager, port: u16) -> std::io::Result<in_flight::Serving> {
    let (global, source) = auth::global_token(&manager.config().paths)
        .map_err(|err| std::io::Error::other(format!("reading the gateway token: {err}")))?;
    if let Ok(Some(warning)) =
        crate::front_door::check_strength(&global, &source, std::net::Ipv4Addr::LOCALHOST.into())
    {
        tracing::warn!("gateway: {warning}");
    }
    // Right after a close the old server task may still hold the port for a moment.
    let mut attempts = 0;
    let std_listener = loop {
        match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other?,
        }
    };
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let serving = in_flight::Serving::default();
    let app = router(
        manager.clone(),
        global,
        serving.sessions.clone(),
        serving.in_flight.clone(),
    );
    let shutdown = serving.accept.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
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
    in_flight: std::sync::Arc<in_flight::InFlight>,
) -> Router {
    let door = crate::front_door::Door::new(
        crate::front_door::hosts_for(
            std::net::Ipv4Addr::LOCALHOST.into(),
            &manager.config().allowed_hosts,
        ),
        auth::authorizer(manager.gateway().tokens.clone(), global),
    );
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(door.hosts().iter().cloned())
        .with_allowed_origins(door.origin_patterns())
        .with_json_response(true)
        .with_cancellation_token(sessions.child_token());
    let for_service = manager.clone();
    let service = StreamableHttpService::new(
        move || Ok(tools::GatewayServer::new(for_service.clone())),
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
                let active = manager.running_projects();
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
