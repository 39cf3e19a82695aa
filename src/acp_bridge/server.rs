//! The bridge's HTTP side: the part of OpenCode's server API that the manager calls (health,
//! providers, sessions, turns, status, abort, permissions, events), served for one ACP agent
//! with OpenCode's Basic auth and shapes. A turn runs in its own task, so a client that goes away
//! never cancels it halfway; what an ACP agent cannot do is answered 501 with the agent's kind
//! named. It owns no state beyond what `Bridge` holds.

use std::convert::Infallible;
use std::sync::Arc;

use agent_client_protocol::v1::schema::{
    CancelNotification, ContentBlock, NewSessionRequest, PromptRequest, RequestPermissionOutcome,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionId, StopReason, TextContent,
};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use serde_json::{Value, json};

use super::Bridge;

type Shared = State<Arc<Bridge>>;

pub(super) fn router(bridge: Arc<Bridge>) -> Router {
    Router::new()
        .route("/global/health", get(health))
        .route("/global/dispose", post(dispose))
        .route("/config", get(config))
        .route("/config/providers", get(providers))
        .route("/session", get(sessions).post(create))
        .route("/session/status", get(status))
        .route("/session/{id}", get(session).delete(delete))
        .route("/session/{id}/message", get(messages).post(message))
        .route("/session/{id}/prompt_async", post(prompt_async))
        .route("/session/{id}/abort", post(abort))
        .route("/permission", get(permissions))
        .route("/permission/{id}/reply", post(reply))
        .route("/event", get(events))
        .fallback(unsupported)
        .layer(middleware::from_fn_with_state(bridge.clone(), authorized))
        .with_state(bridge)
}

/// OpenCode's Basic auth (`opencode:<password>`), compared in constant time.
async fn authorized(State(bridge): Shared, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if crate::front_door::matches(presented, &bridge.authorization) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "Unauthorized").into_response()
    }
}

fn failure(status: StatusCode, name: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "name": name, "data": { "message": message } })),
    )
        .into_response()
}

fn no_session(id: &str) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "NotFoundError",
        format!("no session {id}"),
    )
}

async fn unsupported(State(bridge): Shared, request: Request) -> Response {
    failure(
        StatusCode::NOT_IMPLEMENTED,
        "UnsupportedError",
        format!(
            "the {} agent (ACP) cannot serve {} {}",
            bridge.kind,
            request.method(),
            request.uri().path()
        ),
    )
}

async fn health(State(bridge): Shared) -> Json<Value> {
    Json(json!({ "healthy": true, "version": bridge.agent.1, "agent": bridge.agent.0 }))
}

/// Ends every turn under way (the Instance is about to stop).
async fn dispose(State(bridge): Shared) -> Json<Value> {
    let busy: Vec<String> = {
        let record = bridge.shared.record();
        record
            .sessions()
            .iter()
            .filter(|s| s.busy)
            .map(|s| s.acp_id.clone())
            .collect()
    };
    for acp in busy {
        let _ = bridge
            .cx
            .send_notification(CancelNotification::new(SessionId::new(acp)));
    }
    Json(Value::Bool(true))
}

/// The agent's kind stands for its provider: the agent itself chooses its model.
async fn providers(State(bridge): Shared) -> Json<Value> {
    let kind = bridge.kind.as_str();
    Json(json!({ "providers": [{ "id": kind }], "default": { kind: "default" } }))
}

async fn config(State(bridge): Shared) -> Json<Value> {
    Json(json!({ "model": format!("{}/default", bridge.kind) }))
}

async fn create(State(bridge): Shared) -> Response {
    let opened = bridge
        .cx
        .send_request(NewSessionRequest::new(&bridge.cwd))
        .block_task()
        .await;
    match opened {
        Ok(answer) => {
            let session = {
                let mut record = bridge.shared.record();
                record
                    .open(
                        answer.session_id.0.to_string(),
                        bridge.cwd.display().to_string(),
                        crate::timestamp::now_millis(),
                    )
                    .to_json()
            };
            bridge.shared.publish("session.created");
            Json(session).into_response()
        }
        Err(err) => failure(
            StatusCode::BAD_GATEWAY,
            "AgentError",
            format!("the {} agent did not open a session: {err}", bridge.kind),
        ),
    }
}

async fn sessions(State(bridge): Shared) -> Json<Value> {
    let record = bridge.shared.record();
    Json(Value::Array(
        record.sessions().iter().map(|s| s.to_json()).collect(),
    ))
}

async fn session(State(bridge): Shared, Path(id): Path<String>) -> Response {
    match bridge.shared.record().session(&id) {
        Some(session) => Json(session.to_json()).into_response(),
        None => no_session(&id),
    }
}

async fn delete(State(bridge): Shared, Path(id): Path<String>) -> Response {
    let removed = {
        let mut record = bridge.shared.record();
        let pending = record.permissions_of(&id);
        record.remove(&id).map(|s| (s, pending))
    };
    match removed {
        Some((session, pending)) => {
            bridge.shared.withdraw(&pending);
            if session.busy {
                let _ = bridge
                    .cx
                    .send_notification(CancelNotification::new(SessionId::new(session.acp_id)));
            }
            bridge.shared.publish("session.deleted");
            Json(Value::Bool(true)).into_response()
        }
        None => no_session(&id),
    }
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn messages(
    State(bridge): Shared,
    Path(id): Path<String>,
    Query(limit): Query<Limit>,
) -> Response {
    let record = bridge.shared.record();
    let Some(session) = record.session(&id) else {
        return no_session(&id);
    };
    let skip = limit
        .limit
        .map_or(0, |n| session.messages.len().saturating_sub(n));
    Json(Value::Array(
        session
            .messages
            .iter()
            .skip(skip)
            .map(|m| m.to_json(&id))
            .collect(),
    ))
    .into_response()
}

/// The text of OpenCode's `{"parts": [{"type": "text", "text": …}]}`.
fn prompt_text(body: &Value) -> String {
    body.get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends a prompt and waits for the end of the turn: `{info, parts}` of the answer.
async fn message(
    State(bridge): Shared,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    match begin(&bridge, &id, &prompt_text(&body)) {
        Ok(turn) => match turn.await {
            Ok(answer) => Json(answer).into_response(),
            Err(_) => failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "AgentError",
                "the turn's task ended without an answer".into(),
            ),
        },
        Err(refused) => refused,
    }
}

async fn prompt_async(
    State(bridge): Shared,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    match begin(&bridge, &id, &prompt_text(&body)) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(refused) => refused,
    }
}

/// Starts a turn in its own task (a client that goes away does not cancel it).
fn begin(
    bridge: &Arc<Bridge>,
    id: &str,
    text: &str,
) -> Result<tokio::task::JoinHandle<Value>, Response> {
    if text.is_empty() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the message has no text part".into(),
        ));
    }
    let acp = {
        let mut record = bridge.shared.record();
        let Some(acp) = record.session(id).map(|s| s.acp_id.clone()) else {
            return Err(no_session(id));
        };
        if record
            .begin_turn(id, text, crate::timestamp::now_millis())
            .is_none()
        {
            return Err(failure(
                StatusCode::CONFLICT,
                "BusyError",
                format!("session {id} is busy with a turn; wait for it or abort it"),
            ));
        }
        acp
    };
    bridge.shared.publish("session.status");
    let (bridge, id, text) = (bridge.clone(), id.to_owned(), text.to_owned());
    Ok(tokio::spawn(async move {
        let asked = bridge
            .cx
            .send_request(PromptRequest::new(
                SessionId::new(acp),
                vec![ContentBlock::Text(TextContent::new(text))],
            ))
            .block_task()
            .await;
        let error = match asked {
            Ok(answer) => match answer.stop_reason {
                StopReason::EndTurn => None,
                StopReason::Cancelled => Some("cancelled".to_owned()),
                other => Some(format!("the agent stopped: {other:?}")),
            },
            Err(err) => Some(format!("the {} agent failed the turn: {err}", bridge.kind)),
        };
        let ended = bridge
            .shared
            .record()
            .end_turn(&id, error, crate::timestamp::now_millis());
        bridge.shared.publish("session.idle");
        match ended {
            Some((answer, withdrawn)) => {
                bridge.shared.withdraw(&withdrawn);
                answer.to_json(&id)
            }
            None => Value::Null,
        }
    }))
}

async fn status(State(bridge): Shared) -> Json<Value> {
    Json(bridge.shared.record().status())
}

async fn abort(State(bridge): Shared, Path(id): Path<String>) -> Response {
    let found = {
        let record = bridge.shared.record();
        record
            .session(&id)
            .map(|s| (s.acp_id.clone(), record.permissions_of(&id)))
    };
    let Some((acp, pending)) = found else {
        return no_session(&id);
    };
    bridge.shared.withdraw(&pending);
    for permission in &pending {
        bridge.shared.record().answered(permission);
    }
    let _ = bridge
        .cx
        .send_notification(CancelNotification::new(SessionId::new(acp)));
    Json(Value::Bool(true)).into_response()
}

async fn permissions(State(bridge): Shared) -> Json<Value> {
    let record = bridge.shared.record();
    Json(Value::Array(
        record.permissions().iter().map(|p| p.to_json()).collect(),
    ))
}

/// Answers a permission request: `once`, `always` or `reject`, mapped onto the agent's own
/// options by their kind.
async fn reply(State(bridge): Shared, Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    let answer = body.get("reply").and_then(Value::as_str).unwrap_or("");
    let option = {
        let record = bridge.shared.record();
        let Some(asked) = record.permission(&id) else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                format!("no permission request {id}"),
            );
        };
        asked.option_for(answer).map(str::to_owned)
    };
    let Some(option) = option else {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the {} agent offers no option for {answer:?}; answer once, always or reject",
                bridge.kind
            ),
        );
    };
    bridge.shared.record().answered(&id);
    let responder = bridge.shared.responders().remove(&id);
    let Some(responder) = responder else {
        return failure(
            StatusCode::GONE,
            "NotFoundError",
            format!("permission request {id} is no longer waiting"),
        );
    };
    let sent = responder.respond(RequestPermissionResponse::new(
        RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option)),
    ));
    bridge.shared.publish("permission.replied");
    match sent {
        Ok(()) => Json(Value::Bool(true)).into_response(),
        Err(err) => failure(
            StatusCode::BAD_GATEWAY,
            "AgentError",
            format!("the answer did not reach the {} agent: {err}", bridge.kind),
        ),
    }
}

/// `GET /event`: a `{"type": …}` event whenever sessions or permissions change.
async fn events(State(bridge): Shared) -> Response {
    let Some(sender) = &bridge.shared.events else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let received = sender.subscribe();
    let stream = stream::unfold(received, |mut received| async move {
        loop {
            match received.recv().await {
                Ok(data) => {
                    return Some((Ok::<_, Infallible>(Event::default().data(data)), received));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_the_text_of_its_text_parts() {
        let body = json!({"parts": [{"type": "text", "text": "a"}, {"type": "file", "url": "x"},
                                    {"type": "text", "text": "b"}]});
        assert_eq!(prompt_text(&body), "a\nb");
        assert_eq!(prompt_text(&json!({})), "");
    }
}
