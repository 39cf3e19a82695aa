//! The dashboard's live streams, as Server-Sent Events.
//!
//! `/events` sends the whole board when it connects and again on every snapshot change, so a
//! reconnecting page resyncs by itself (streams ask for a reconnect within a second).
//! `/project/<name>/events` sends the end of its log when it connects and then the lines appended
//! to it (followed with inotify), that Project's row when it changes, and its sessions and
//! permission requests whenever its Instance reports a session or permission event on its own
//! event stream. Nothing polls. Every stream ends when the page goes away or the daemon stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Shared, project};
use crate::instance::events::EventFrames;
use crate::project::ProjectName;

/// How soon a browser reconnects a lost stream.
const RECONNECT: Duration = Duration::from_secs(1);

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `/events`: the board now, then on every change.
pub(super) async fn board(State(d): State<Shared>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_none() {
        return super::login_needed();
    }
    let snapshots = d.manager.subscribe();
    let present = d.clients.enter();
    let stream = stream::unfold(
        (d, snapshots, true, present),
        |(d, mut snapshots, first, present)| async move {
            if first {
                snapshots.borrow_and_update();
            } else {
                tokio::select! {
                    changed = snapshots.changed() => changed.ok()?,
                    () = d.cancel.cancelled() => return None,
                }
            }
            let event = Event::default().event("board").json_data(d.board()).ok()?;
            // A lost connection comes back within a second (the browser's default is 3 s).
            let event = if first { event.retry(RECONNECT) } else { event };
            Some((Ok(event), (d, snapshots, false, present)))
        },
    );
    sse(stream)
}

/// `/project/<name>/events`: the Project's row, new log lines, and its activity.
pub(super) async fn project(
    State(d): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if d.session(&headers).is_none() {
        return super::login_needed();
    }
    let Ok(project) = ProjectName::parse(&name) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("no project named {name:?}"),
        )
            .into_response();
    };
    let (events, received) = mpsc::channel::<Event>(64);
    let present = d.clients.enter();
    tokio::spawn(async move {
        follow(d, project, events).await;
        drop(present);
    });
    let stream = stream::unfold(received, |mut received| async move {
        received.recv().await.map(|event| (Ok(event), received))
    });
    sse(stream)
}

/// Sends the Project's changes into `events` until the page goes away or the daemon stops.
async fn follow(d: Shared, project: ProjectName, events: mpsc::Sender<Event>) {
    let mut snapshots = d.manager.subscribe();
    let (mut log, tail) = LogTail::start(
        d.manager.config().paths.project_log(&project),
        project::LOG_LINES,
    )
    .await;
    let reset = Event::default()
        .event("log_reset")
        .retry(RECONNECT)
        .json_data(Value::from(tail));
    if events.send(reset.unwrap_or_default()).await.is_err() {
        return;
    }
    let watch = crate::fs_watch::DirWatch::new().and_then(|w| {
        w.add_with_appends(&d.manager.config().paths.logs_dir())?;
        Ok(w)
    });
    let log_name = format!("{project}-opencode.log");
    let mut last_row = None;
    let mut pid = None;
    let mut instance: Option<reqwest::Response> = None;
    let mut frames = EventFrames::default();
    loop {
        // The row, and the Instance's event stream when its process changed.
        let current = project::row(&d.manager, project.as_str());
        let row = current
            .as_ref()
            .map(|(_, row)| serde_json::to_value(row).unwrap_or(Value::Null));
        if row != last_row {
            if let Some(row) = &row
                && send(&events, "row", row).await.is_err()
            {
                return;
            }
            last_row = row;
        }
        let now_pid = current.as_ref().and_then(|(_, row)| row.pid);
        if now_pid != pid {
            pid = now_pid;
            instance = match project::instance(&d.manager, &project) {
                Some(api) => api.events().await.ok(),
                None => None,
            };
            frames = EventFrames::default();
            if send_activity(&d, &project, &events).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            names = log_changed(&watch) => {
                if names.iter().any(|n| n.is_empty() || *n == log_name.as_str()) {
                    let (next, lines) = log.advance().await;
                    log = next;
                    if !lines.is_empty() && send(&events, "log", &Value::from(lines)).await.is_err() {
                        return;
                    }
                }
            }
            chunk = next_chunk(&mut instance) => {
                match chunk {
                    Some(bytes) => match frames.push(&bytes) {
                        Ok(kinds) => {
                            if kinds.iter().any(|k| is_activity(k)) && send_activity(&d, &project, &events).await.is_err() {
                                return;
                            }
                        }
                        // Not a stream worth following: wait for the Instance's next one.
                        Err(_) => instance = None,
                    },
                    // The stream ended (the Instance stopped): wait for the next one.
                    None => instance = None,
                }
            }
            () = events.closed() => return,
            () = d.cancel.cancelled() => return,
        }
    }
}

async fn send(events: &mpsc::Sender<Event>, kind: &str, data: &Value) -> Result<(), ()> {
    let event = Event::default()
        .event(kind)
        .json_data(data)
        .map_err(|_| ())?;
    events.send(event).await.map_err(|_| ())
}

async fn send_activity(
    d: &Shared,
    project: &ProjectName,
    events: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    let (sessions, permissions) = project::activity(&d.manager, project).await;
    let data = serde_json::json!({ "sessions": sessions, "permissions": permissions });
    send(events, "activity", &data).await
}

/// The next chunk of the Instance's event stream; pending forever without one.
async fn next_chunk(instance: &mut Option<reqwest::Response>) -> Option<Vec<u8>> {
    match instance {
        Some(response) => response.chunk().await.ok().flatten().map(|b| b.to_vec()),
        None => std::future::pending().await,
    }
}

/// Whether an event of this type is about sessions or permissions.
fn is_activity(kind: &str) -> bool {
    kind.starts_with("session.") || kind.starts_with("permission.")
}

/// Names changed in the logs directory; pending forever without a watch.
async fn log_changed(watch: &std::io::Result<crate::fs_watch::DirWatch>) -> Vec<String> {
    match watch {
        Ok(watch) => match watch.changed().await {
            Ok(names) => names
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
            Err(_) => std::future::pending().await,
        },
        Err(_) => std::future::pending().await,
    }
}

/// Where the page's log view has read up to.
struct LogTail {
    path: std::path::PathBuf,
    offset: u64,
}

impl LogTail {
    /// The file's last `lines` complete lines, and a tail that goes on right after them: a
    /// page that (re)connects replaces its log view with these, so nothing is missed or doubled.
    async fn start(path: std::path::PathBuf, lines: usize) -> (LogTail, Vec<String>) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let read = |file: &mut std::fs::File| -> std::io::Result<(u64, Vec<u8>)> {
                let len = file.metadata()?.len();
                let start = len.saturating_sub(4 * 1024 * 1024);
                file.seek(SeekFrom::Start(start))?;
                let mut bytes = Vec::new();
                file.take(len - start).read_to_end(&mut bytes)?;
                Ok((start, bytes))
            };
            let Ok((start, bytes)) = std::fs::File::open(&path).and_then(|mut f| read(&mut f))
            else {
                return (LogTail { path, offset: 0 }, Vec::new());
            };
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&bytes[..complete]);
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|l| crate::logs::strip_ansi(l))
                .collect();
            let offset = start + complete as u64;
            (LogTail { path, offset }, tail)
        })
        .await
        .unwrap_or_else(|_| {
            (
                LogTail {
                    path: std::path::PathBuf::new(),
                    offset: 0,
                },
                Vec::new(),
            )
        })
    }

    /// The complete lines appended since the last call (at most 256 KiB at a time); starts over
    /// when the file was rotated.
    async fn advance(self) -> (LogTail, Vec<String>) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let LogTail { path, mut offset } = self;
            let Ok(mut file) = std::fs::File::open(&path) else {
                return (LogTail { path, offset: 0 }, Vec::new());
            };
            let len = file.metadata().map_or(0, |m| m.len());
            if len < offset {
                offset = 0;
            }
            let mut bytes = Vec::new();
            let read = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.take(256 * 1024).read_to_end(&mut bytes));
            if read.is_err() {
                return (LogTail { path, offset }, Vec::new());
            }
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&bytes[..complete]);
            let lines = text.lines().map(crate::logs::strip_ansi).collect();
            (
                LogTail {
                    path,
                    offset: offset + complete as u64,
                },
                lines,
            )
        })
        .await
        .unwrap_or_else(|_| {
            (
                LogTail {
                    path: std::path::PathBuf::new(),
                    offset: 0,
                },
                Vec::new(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_and_permission_events_count() {
        for kind in ["session.idle", "session.updated", "permission.asked"] {
            assert!(is_activity(kind), "{kind}");
        }
        for kind in ["server.heartbeat", "plugin.added", "message.part.delta", ""] {
            assert!(!is_activity(kind), "{kind}");
        }
    }
}
