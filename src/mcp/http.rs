//! Streamable HTTP for the manager's MCP server: `POST/GET/DELETE /mcp` behind a bearer token and
//! a Host/Origin guard, plus an unauthenticated `GET /health`.
//!
//! Binds 127.0.0.1 by default. The token is `OPENCODE_MANAGER_TOKEN`, else one generated on first
//! use into `<home>/mcp-http-token` (0600); only its path is ever printed. Binding a non-loopback
//! address without an explicit token is refused. Tokens are compared in constant time and never
//! logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::McpServer;
use crate::config::Paths;
use crate::ops::CallerSettings;
use crate::secrets::Secret;

/// Where the HTTP server listens.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub host: IpAddr,
    pub port: u16,
}

/// Where the bearer token came from, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Environment,
    File(std::path::PathBuf),
}

/// The token clients must present: the environment's, else the home's token file (created on first use).
pub fn load_token(paths: &Paths, host: IpAddr) -> anyhow::Result<(Secret, TokenSource)> {
    if let Some(token) = std::env::var("OPENCODE_MANAGER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok((Secret::new(token), TokenSource::Environment));
    }
    if !host.is_loopback() {
        bail!(
            "refusing to listen on {host} without an explicit token: set OPENCODE_MANAGER_TOKEN, or bind 127.0.0.1"
        );
    }
    let path = paths.home().join("mcp-http-token");
    crate::atomic_file::private_dir(paths.home())
        .with_context(|| format!("creating {}", paths.home().display()))?;
    let fresh = crate::secrets::random_hex(32);
    match crate::atomic_file::create_new(
        &path,
        format!("{}\n", fresh.expose()).as_bytes(),
        crate::atomic_file::PRIVATE,
    ) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("writing {}", path.display())),
    }
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        bail!(
            "{} is empty; delete it to have a new token generated",
            path.display()
        );
    }
    Ok((Secret::new(token), TokenSource::File(path)))
}

/// The router: `/mcp` (authenticated) and `/health`, both behind the Host/Origin guard.
pub fn router(
    paths: Paths,
    caller: CallerSettings,
    token: Secret,
    cancel: CancellationToken,
) -> Router {
    let hosts = crate::http_guard::allowed_hosts();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts.iter().cloned())
        .with_allowed_origins(["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"])
        .with_json_response(true)
        .with_cancellation_token(cancel.child_token());
    let service = StreamableHttpService::new(
        move || Ok(McpServer::new(paths.clone(), caller.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    let protected = Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(Arc::new(token), bearer));
    Router::new()
        .route(
            "/health",
            get(|| async {
                axum::Json(serde_json::json!({"status": "ok", "server": env!("CARGO_PKG_NAME")}))
            }),
        )
        .merge(protected)
        .layer(middleware::from_fn_with_state(
            crate::http_guard::Guard::loopback(),
            crate::http_guard::local_only,
        ))
}

/// Serves until `cancel` fires.
pub async fn serve(
    paths: Paths,
    caller: CallerSettings,
    options: HttpOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (token, source) = load_token(&paths, options.host)?;
    let address = SocketAddr::new(options.host, options.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let bound = listener.local_addr()?;
    let where_token = match &source {
        TokenSource::Environment => "from OPENCODE_MANAGER_TOKEN".to_owned(),
        TokenSource::File(path) => format!("in {}", path.display()),
    };
    tracing::warn!("MCP server listening on http://{bound}/mcp (bearer token {where_token})");
    let app = router(paths, caller, token, cancel.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .context("serving HTTP")
}

async fn bearer(State(token): State<Arc<Secret>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())));
    if !ok {
        let reason = if presented.is_none() {
            "missing bearer token"
        } else {
            "invalid bearer token"
        };
        let mut response = (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": format!("Unauthorized: {reason}")})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}
