//! The dashboard's buttons: Start, Stop and Restart of a Project, and the answers to a permission
//! request. Each is a POST that needs the session cookie, this page's own `Origin`, and the
//! session's CSRF token (a form field, or the `X-CSRF-Token` header); anything else gets 403.
//!
//! Start, Stop and Restart run through `dispatch`, exactly as the CLI's and MCP's requests do
//! (same reply, same locking, same audit line, with the dashboard as the door). A script that
//! asks for JSON gets the reply; a plain form post is sent back to the page it came from.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Shared;
use super::sessions::{self, Session};
use crate::audit::{Caller, Door};
use crate::lifecycle::Progress;
use crate::ops::CallerSettings;
use crate::protocol::{Envelope, Frame, Request};
use crate::reply::{Reply, Status};

/// The fields a button's form sends (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fields {
    csrf: Option<String>,
    reply: Option<String>,
}

impl Fields {
    /// Reads the two fields out of a form body; anything else in it is ignored.
    fn parse(body: &[u8]) -> Fields {
        let mut fields = Fields::default();
        for pair in String::from_utf8_lossy(body).split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match name {
                "csrf" => fields.csrf = Some(value),
                "reply" => fields.reply = Some(value),
                _ => {}
            }
        }
        fields
    }
}

/// Form decoding: `+` is a space, `%XX` a byte.
fn decode(value: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(high), Some(low)) if hex(high).is_some() && hex(low).is_some() => {
                let digit = |b| hex(b).and_then(|d| u8::try_from(d).ok()).unwrap_or(0);
                out.push(digit(high) * 16 + digit(low));
                i += 2;
            }
            (byte, _, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session, if the request may change something: 403 otherwise.
fn allowed(d: &Shared, headers: &HeaderMap, fields: &Fields) -> Result<Session, Response> {
    let forbidden = |why: &str| (StatusCode::FORBIDDEN, why.to_owned()).into_response();
    let session = d
        .session(headers)
        .ok_or_else(|| forbidden("log in first: run opencode-manager dashboard"))?;
    if !sessions::same_origin(headers) {
        return Err(forbidden(
            "Forbidden: this request did not come from the dashboard's own page",
        ));
    }
    let presented = fields
        .csrf
        .as_deref()
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
    if !presented.is_some_and(|token| sessions::csrf_matches(&session, token)) {
        return Err(forbidden("Forbidden: missing or wrong CSRF token"));
    }
    Ok(session)
}

/// Whether the caller is a script that wants the reply itself.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The reply as JSON for a script, or back to the page the form was on.
fn answer(headers: &HeaderMap, reply: Reply, back: &str) -> Response {
    if wants_json(headers) {
        let status = if reply.status() == Status::Error {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        return (status, Json(reply)).into_response();
    }
    Redirect::to(back).into_response()
}

fn caller(session: &Session) -> Caller {
    session
        .uid
        .map_or(Caller::Unknown, |uid| Caller::DashboardSession { uid })
}

/// `POST /project/<name>/start|stop|restart`.
pub(super) async fn lifecycle(
    State(d): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let session = match allowed(&d, &headers, &fields) {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let request = match action.as_str() {
        "start" => {
            let git_url = {
                let snapshot = d.manager.subscribe();
                let snapshot = snapshot.borrow();
                snapshot.projects.get(&name).map(|v| v.git_url.clone())
            };
            let Some(git_url) = git_url else {
                return answer(&headers, Reply::not_found(&name, &[]), "/");
            };
            Request::Start(crate::ops::start::StartArgs {
                project_name: name.clone(),
                git_url,
                user_ssh_key: None,
                agent: None,
            })
        }
        "stop" => Request::Stop {
            project_name: name.clone(),
        },
        "restart" => Request::Restart {
            project_name: name.clone(),
        },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let envelope = Envelope {
        request,
        caller: CallerSettings {
            door: Door::Dashboard,
            ..CallerSettings::default()
        },
    };
    let frame = crate::dispatch::dispatch(
        d.manager.clone(),
        envelope,
        Progress::default(),
        caller(&session),
    )
    .await;
    let reply = match frame {
        Frame::Reply(reply) => *reply,
        _ => Reply::error(
            crate::error::ErrorCode::Internal,
            "the operation gave no reply",
            "see manager.log",
        ),
    };
    let back = referer_path(&headers).unwrap_or_else(|| "/".to_owned());
    answer(&headers, reply, &back)
}

/// `POST /project/<name>/permission/<id>` with `reply` = `once`, `always` or `reject`.
pub(super) async fn permission(
    State(d): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let session = match allowed(&d, &headers, &fields) {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let since = std::time::Instant::now();
    let answer_word = fields.reply.clone().unwrap_or_default();
    let result = crate::ops::permission::reply(&d.manager, &name, &id, &answer_word).await;
    let reply = match &result {
        Ok(()) => {
            Reply::new(Status::Success, format!("answered {id}: {answer_word}")).with_project(&name)
        }
        Err(err) => Reply::from(err.clone()),
    };
    d.manager.audit().record(
        Door::Dashboard,
        caller(&session),
        "permission-reply",
        Some(&name),
        &crate::dispatch::outcome(&reply),
        since,
    );
    answer(&headers, reply, &format!("/project/{name}"))
}

/// The path of the page a form was posted from (same origin only).
fn referer_path(headers: &HeaderMap) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let path = referer
        .strip_prefix("http://")
        .or_else(|| referer.strip_prefix("https://"))?
        .strip_prefix(host)?;
    (path.starts_with('/') && !path.starts_with("//")).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let fields = Fields::parse(b"csrf=ab%2Fc+d&reply=once&other=x&broken=%G1");
        assert_eq!(fields.csrf.as_deref(), Some("ab/c d"));
        assert_eq!(fields.reply.as_deref(), Some("once"));
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(
            Fields::parse(b""),
            Fields {
                csrf: None,
                reply: None
            }
        );
    }
}
