//! A Project's page: its row, the end of its log, its sessions with their state, and the
//! permission requests waiting for an answer, asked of its Instance when the page is built (and
//! again by `live` when the Instance reports a change).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use super::page::{self, PermissionItem, SessionItem};
use super::{Shared, view};
use crate::instance::api::InstanceApi;
use crate::ops::Manager;
use crate::project::ProjectName;

/// How many log lines a page starts with.
pub(super) const LOG_LINES: usize = 200;
/// How many sessions a page lists (newest first).
const SESSIONS: usize = 50;

pub(super) async fn page(
    State(d): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(session) = d.session(&headers) else {
        return super::login_needed();
    };
    let Some((project, row)) = row(&d.manager, &name) else {
        return (StatusCode::NOT_FOUND, format!("no project named {name:?}")).into_response();
    };
    let log_path = d.manager.config().paths.project_log(&project);
    let log = tokio::task::spawn_blocking(move || crate::logs::tail(&log_path, LOG_LINES))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (sessions, permissions) = activity(&d.manager, &project).await;
    Html(page::project(
        &row,
        &log,
        &sessions,
        &permissions,
        &session.csrf,
    ))
    .into_response()
}

/// The Project named `name` and its row now, if it exists.
pub(super) fn row(manager: &Manager, name: &str) -> Option<(ProjectName, view::Row)> {
    let project = ProjectName::parse(name).ok()?;
    let snapshot = manager.subscribe();
    let snapshot = snapshot.borrow();
    let row = view::row(
        name,
        snapshot.projects.get(name)?,
        crate::timestamp::seconds_since,
    );
    Some((project, row))
}

/// A client for the Project's running Instance, if it runs.
pub(super) fn instance(manager: &Manager, project: &ProjectName) -> Option<InstanceApi> {
    let port = {
        let snapshot = manager.subscribe();
        let snapshot = snapshot.borrow();
        let view = snapshot.projects.get(project.as_str())?;
        view.pid.and(view.port)?
    };
    let env = manager.envs().get(project.as_str())?;
    Some(InstanceApi::new(port, env.password.clone()))
}

/// The Instance's sessions (newest first) and pending permission requests; empty when it does
/// not run or does not answer.
pub(super) async fn activity(
    manager: &Manager,
    project: &ProjectName,
) -> (Vec<SessionItem>, Vec<PermissionItem>) {
    let Some(api) = instance(manager, project) else {
        return (Vec::new(), Vec::new());
    };
    let timeout = Duration::from_secs(3);
    let get = |path: &'static str| {
        let api = api.clone();
        async move {
            api.call(reqwest::Method::GET, path, None, timeout)
                .await
                .unwrap_or(Value::Null)
        }
    };
    let (list, status, permissions) =
        tokio::join!(get("/session"), get("/session/status"), get("/permission"));
    (sessions(&list, &status), permission_items(&permissions))
}

/// Sessions from `GET /session` with their state from `GET /session/status` (idle ones are absent
/// from it).
fn sessions(list: &Value, status: &Value) -> Vec<SessionItem> {
    list.as_array()
        .into_iter()
        .flatten()
        .take(SESSIONS)
        .filter_map(|s| {
            let id = s.get("id")?.as_str()?.to_owned();
            let state = status
                .get(&id)
                .and_then(|st| st.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("idle")
                .to_owned();
            Some(SessionItem {
                title: s
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                id,
                state,
            })
        })
        .collect()
}

/// Permission requests from `GET /permission`: what each asks (`bash: echo hi`).
fn permission_items(list: &Value) -> Vec<PermissionItem> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let kind = p
                .get("permission")
                .and_then(Value::as_str)
                .unwrap_or("tool");
            let patterns: Vec<&str> = p
                .get("patterns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            Some(PermissionItem {
                id: p.get("id")?.as_str()?.to_owned(),
                session: p
                    .get("sessionID")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                what: if patterns.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{kind}: {}", patterns.join(", "))
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sessions_take_their_state_from_the_status_map() {
        let list = json!([{"id": "ses_b", "title": "second"}, {"id": "ses_a", "title": "first"}]);
        let status = json!({"ses_b": {"type": "busy"}});
        let found = sessions(&list, &status);
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].id.as_str(), found[0].state.as_str()),
            ("ses_b", "busy")
        );
        assert_eq!(found[1].state, "idle");
    }

    #[test]
    fn a_permission_request_says_what_it_asks() {
        let list = json!([{"id": "per_1", "sessionID": "ses_a", "permission": "bash",
                           "patterns": ["echo hi"], "metadata": {}}]);
        let found = permission_items(&list);
        assert_eq!(found[0].what, "bash: echo hi");
        assert_eq!(found[0].session, "ses_a");
        assert!(permission_items(&Value::Null).is_empty());
    }
}
