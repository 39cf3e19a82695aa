//! Streamable HTTP for the manager's MCP server: `POST/GET/DELETE /mcp` behind the front door
//! (Host/Origin allowlist and bearer token), plus an unauthenticated `GET /health`.
//!
//! Binds 127.0.0.1 by default. The token is `OPENCODE_MANAGER_TOKEN`, else one generated on first
//! use into `<home>/mcp-http-token` (0600); only its path is ever printed. Binding a non-loopback
//! address needs an explicit token of at least 32 characters; a shorter one is warned about on
//! loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::middleware;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::McpServer;
use crate::config::Paths;
use crate::front_door::{self, Door, TokenSource};
use crate::ops::CallerSettings;
use crate::secrets::Secret;

/// Where the HTTP server listens and which names it answers to.
#[derive(Debug, Clone)]
pub(crate) struct HttpOptions {
    pub host: IpAddr,
    pub port: u16,
    /// Host names besides the loopback names and `host` (`--allowed-host`, `allowed_hosts`).
    pub allowed_hosts: Vec<String>,
}

/// The token clients must present: the environment's, else the home's token file (created on
/// first use). A non-loopback address needs the environment's, of at least 32 characters.
pub(crate) fn load_token(paths: &Paths, host: IpAddr) -> anyhow::Result<(Secret, TokenSource)> {
    if !host.is_loopback()
        && std::env::var("OPENCODE_MANAGER_TOKEN")
            .ok()
            .is_none_or(|t| t.is_empty())
    {
        bail!(
            "refusing to listen on {host} without an explicit token: set OPENCODE_MANAGER_TOKEN (32 characters or more), or bind 127.0.0.1"
        );
    }
    let path = paths.home().join("mcp-http-token");
    front_door::load_token("OPENCODE_MANAGER_TOKEN", &path)
        .with_context(|| format!("reading the token ({})", path.display()))
}

/// The router: `/mcp` (authenticated) and `/health`, both behind the Host/Origin guard.
pub(crate) fn router(
    paths: Paths,
    caller: CallerSettings,
    door: Arc<Door>,
    cancel: CancellationToken,
) -> Router {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(door.hosts().iter().cloned())
        .with_allowed_origins(door.origin_patterns())
        .with_json_response(true)
        .with_cancellation_token(cancel.child_token());
    let service = StreamableHttpService::new(
        move || Ok(McpServer::new(paths.clone(), caller.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    let protected =
        Router::new()
            .nest_service("/mcp", service)
            .layer(middleware::from_fn_with_state(
                door.clone(),
                front_door::bearer,
            ));
    Router::new()
        .route(
            "/health",
            get(|| async {
                axum::Json(serde_json::json!({"status": "ok", "server": env!("CARGO_PKG_NAME")}))
            }),
        )
        .merge(protected)
        .layer(middleware::from_fn_with_state(door, front_door::host_guard))
}

/// Serves until `cancel` fires.
pub(crate) async fn serve(
    paths: Paths,
    caller: CallerSettings,
    options: HttpOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    crate::trust::ensure_home(&paths)
        .map_err(|err| anyhow::anyhow!("the manager home is unsafe: {err} ({})", err.fix))?;
    let (token, source) = load_token(&paths, options.host)?;
    if let Some(warning) = front_door::check_strength(&token, &source, options.host)
        .map_err(|refusal| anyhow::anyhow!(refusal))?
    {
        tracing::warn!("{warning}");
    }
    let address = SocketAddr::new(options.host, options.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let bound = listener.local_addr()?;
    let where_token = match &source {
        TokenSource::Environment(var) => format!("from {var}"),
        TokenSource::File(path) => format!("in {}", path.display()),
    };
    tracing::warn!("MCP server listening on http://{bound}/mcp (bearer token {where_token})");
    let door = Door::single(
        front_door::hosts_for(options.host, &options.allowed_hosts),
        token,
    );
    let app = router(paths, caller, door, cancel.clone());
    axum::serve(front_door::without_delay(listener), app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .context("serving HTTP")
}
