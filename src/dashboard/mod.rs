//! The health dashboard: a live page of every Project, served by the daemon on
//! `http://127.0.0.1:<dashboard_port>/` (3006 unless configured; 0 turns it off), behind the same
//! Host/Origin guard as every HTTP door.
//!
//! `opencode-manager dashboard` prints a login URL with a one-time code (`ops::dashboard_login`);
//! visiting it opens a session (`sessions`). Pages (`page`) are built from the snapshot (`view`)
//! and complete without JavaScript; `live` streams every snapshot change (and a Project's log,
//! sessions and permission requests) as Server-Sent Events; `actions` runs Start, Stop, Restart
//! and permission answers through the same operations as the CLI and MCP, audited as the
//! dashboard's. `/metrics` serves the Prometheus exposition to a session or to the HTTP token.
//! The dashboard reads the snapshot and the Instances' APIs; it keeps nothing but sessions.

mod actions;
mod assets;
mod live;
mod page;
mod project;
mod sessions;
mod view;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::clients::Clients;
use crate::front_door::{self, Door};
use crate::ops::Manager;
use crate::ops::dashboard_login::Listening;
use crate::secrets::Secret;
use sessions::{Session, Sessions};

/// What every handler shares.
struct Dashboard {
    manager: Manager,
    sessions: Sessions,
    daemon: view::Daemon,
    started: Instant,
    /// The HTTP token (`OPENCODE_MANAGER_TOKEN` or `<home>/mcp-http-token`), for `/metrics`.
    metrics_token: Option<Secret>,
    /// The daemon's clients: an open live stream is one, so the daemon does not linger away.
    clients: Arc<Clients>,
    /// Fires when the daemon stops: live streams end with it.
    cancel: CancellationToken,
}

type Shared = Arc<Dashboard>;

/// Serves the dashboard until `cancel` fires; says why when it cannot.
pub(crate) async fn run(manager: Manager, clients: Arc<Clients>, cancel: CancellationToken) {
    let (port, host) = (
        manager.config().dashboard_port,
        manager.config().dashboard_host,
    );
    if port == 0 {
        manager.logins().set_listening(Listening::No(
            "it is turned off (dashboard_port = 0)".into(),
        ));
        return;
    }
    let listener = match tokio::net::TcpListener::bind((host, port)).await {
        Ok(listener) => listener,
        Err(err) => {
            let why = format!("it cannot listen on {host}:{port}: {err}");
            tracing::error!("dashboard: {why}");
            manager.logins().set_listening(Listening::No(why));
            return;
        }
    };
    let Ok(address) = listener.local_addr() else {
        return;
    };
    let dashboard = Arc::new(Dashboard {
        daemon: daemon_facts(&manager).await,
        metrics_token: metrics_token(&manager).await,
        manager: manager.clone(),
        sessions: load_sessions(&manager).await,
        started: Instant::now(),
        clients,
        cancel: cancel.clone(),
    });
    let door = Door::new(
        front_door::hosts_for(host, &manager.config().allowed_hosts),
        |_| None,
    );
    let app = router(dashboard).layer(middleware::from_fn_with_state(door, front_door::host_guard));
    if !host.is_loopback() {
        tracing::warn!(
            "the dashboard listens on {address}, beyond loopback, over plain HTTP: put it behind a TLS proxy or reach it through an SSH tunnel"
        );
    }
    manager.logins().set_listening(Listening::Yes(address));
    tracing::info!("dashboard listening on http://{address}/");
    let served = axum::serve(front_door::without_delay(listener), app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::error!("dashboard stopped serving: {err}");
    }
}

fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/events", get(live::board))
        .route("/project/{name}", get(project::page))
        .route("/project/{name}/events", get(live::project))
        .route("/project/{name}/{action}", post(actions::lifecycle))
        .route("/project/{name}/permission/{id}", post(actions::permission))
        .route("/metrics", get(metrics))
        .route("/assets/{file}", get(assets::serve))
        .with_state(dashboard)
}

/// The daemon's own facts for the header, found once.
async fn daemon_facts(manager: &Manager) -> view::Daemon {
    let host = manager.host();
    let detection = host.limit_mechanism().await;
    let isolation =
        crate::sandbox::expected_isolation(&host.config, host.isolation_support()).describe();
    view::Daemon {
        version: crate::version().to_owned(),
        started_at: crate::timestamp::now(),
        limits: detection.mechanism.word().to_owned(),
        limits_reason: detection.reason.clone(),
        isolation,
        memory_budget: host.config.memory_budget,
    }
}

async fn load_sessions(manager: &Manager) -> Sessions {
    let file = manager.config().paths.home().join("dashboard-sessions");
    let now = crate::timestamp::now_millis();
    tokio::task::spawn_blocking(move || Sessions::load(file, now))
        .await
        .unwrap_or_default()
}

async fn metrics_token(manager: &Manager) -> Option<Secret> {
    let file = manager.config().paths.home().join("mcp-http-token");
    tokio::task::spawn_blocking(move || {
        front_door::load_token("OPENCODE_MANAGER_TOKEN", &file).ok()
    })
    .await
    .ok()
    .flatten()
    .map(|(token, _)| token)
}

impl Dashboard {
    /// The board now.
    fn board(&self) -> view::Board {
        let snapshot = self.manager.subscribe();
        let snapshot = snapshot.borrow();
        view::board(
            &snapshot,
            &self.daemon,
            self.started.elapsed().as_secs(),
            crate::timestamp::now_millis(),
            crate::timestamp::seconds_since,
        )
    }

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.sessions.find(headers, crate::timestamp::now_millis())
    }
}

/// The page for a visitor without a session (401, so scripts can tell).
fn login_needed() -> Response {
    (StatusCode::UNAUTHORIZED, Html(page::login_needed())).into_response()
}

async fn index(State(d): State<Shared>, headers: HeaderMap) -> Response {
    match d.session(&headers) {
        Some(session) => Html(page::board(&d.board(), &session.csrf)).into_response(),
        None => login_needed(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    code: String,
}

/// Redeems a login code: opens a session and sends the browser to `/` (so the code leaves the
/// address bar). A used, expired or unknown code gets the login page.
async fn login(State(d): State<Shared>, Query(query): Query<LoginQuery>) -> Response {
    let Some(uid) = d.manager.logins().redeem(&query.code, Instant::now()) else {
        return (StatusCode::FORBIDDEN, Html(page::login_needed())).into_response();
    };
    let id = d.sessions.open(uid, crate::timestamp::now_millis());
    let writer = d.clone();
    match tokio::task::spawn_blocking(move || writer.sessions.persist()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!("dashboard sessions not kept for the next daemon ({err})"),
        Err(err) => tracing::warn!("dashboard sessions not kept for the next daemon ({err})"),
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = sessions::set_cookie(&id).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// `/metrics`: for a session, or for `Authorization: Bearer <HTTP token>`.
async fn metrics(State(d): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(front_door::bearer_token);
    let allowed = d.session(&headers).is_some()
        || matches!((bearer, &d.metrics_token), (Some(presented), Some(token)) if front_door::matches(presented, token.expose()));
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            "log in (opencode-manager dashboard) or send Authorization: Bearer <the HTTP token>",
        )
            .into_response();
    }
    let text = {
        let snapshot = d.manager.subscribe();
        let snapshot = snapshot.borrow();
        d.manager.host().metrics.encode(&snapshot)
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
