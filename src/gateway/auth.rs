//! Who a gateway request speaks for: the global token reaches every Project, a Project's own
//! `MCP_TOOL_BEARER_TOKEN` (from its `.env`) reaches only that Project.
//!
//! Tokens are compared in constant time and never logged; 401 answers keep the Node tool's JSON
//! bodies. The resulting [`Scope`] travels in the request's extensions to the tool handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::ops::Manager;
use crate::secrets::Secret;

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The global token: every Project.
    All,
    /// A Project's own token: that Project only.
    Project(String),
}

/// The global token: `GLOBAL_MCP_BEARER_TOKEN`, else one generated once into
/// `<home>/global-mcp-token` (0600).
pub fn global_token(manager: &Manager) -> std::io::Result<Secret> {
    if let Some(token) = std::env::var("GLOBAL_MCP_BEARER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(Secret::new(token));
    }
    let path = manager.config().paths.global_token_file();
    let fresh = crate::secrets::random_hex(32);
    match crate::atomic_file::create_new(
        &path,
        format!("{}\n", fresh.expose()).as_bytes(),
        crate::atomic_file::PRIVATE,
    ) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    let token = std::fs::read_to_string(&path)?.trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} is empty; delete it to have a new token generated",
            path.display()
        )));
    }
    Ok(Secret::new(token))
}

/// State of the auth layer.
pub struct Auth {
    pub manager: Manager,
    pub global: Secret,
}

fn matches(presented: &str, token: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

impl Auth {
    /// The scope of a presented token, if it is one of ours.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        if matches(presented, self.global.expose()) {
            return Some(Scope::All);
        }
        let paths = &self.manager.config().paths;
        let mut found = None;
        // Every Project is checked (no early exit), so timing does not tell which one matched.
        for name in self.manager.known_projects() {
            let Ok(project) = crate::project::ProjectName::parse(&name) else {
                continue;
            };
            if let Ok(env) = crate::project_env::load(&paths.env_file(&project))
                && matches(presented, env.bearer_token.expose())
            {
                found = Some(Scope::Project(name));
            }
        }
        found
    }
}

fn unauthorized(reason: &str) -> Response {
    let body = serde_json::json!({ "error": format!("Unauthorized: {reason}") });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Axum middleware: requires a known bearer token and records its [`Scope`].
pub async fn bearer(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let Some(value) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("Missing Authorization header");
    };
    let Some(presented) = value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| &value[7..])
    else {
        return unauthorized("Invalid Authorization type (expected Bearer token)");
    };
    let Some(scope) = auth.scope_of(presented.trim()) else {
        return unauthorized("Invalid bearer token");
    };
    request.extensions_mut().insert(scope);
    next.run(request).await
}
