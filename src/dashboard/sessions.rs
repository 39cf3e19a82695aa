//! Dashboard sessions: a login code becomes a session, held in an HttpOnly, SameSite=Strict
//! cookie; each session has its own CSRF token, which every state-changing request must carry,
//! with a same-origin `Origin`.
//!
//! A session lasts 24 hours and survives a daemon restart (an upgrade, a linger): the open ones
//! are kept in `<home>/dashboard-sessions` (0600, like every token file, out of every Sandbox's
//! reach), so an open page reconnects to the next daemon by itself. The cookie and the CSRF
//! token are random and never logged. This module decides; the dashboard writes the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub(super) const COOKIE: &str = "ocm_session";
/// How long a session lasts, in milliseconds of wall clock.
const LIFETIME_MS: u64 = 24 * 3600 * 1000;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Session {
    pub csrf: String,
    /// The local user who asked for the login code.
    pub uid: Option<u32>,
    /// When it opened (Unix milliseconds).
    opened_ms: u64,
}

impl Session {
    fn open_at(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.opened_ms) < LIFETIME_MS
    }
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    // A std mutex: held for one map operation, never across an `.await` nor a write.
    by_id: Mutex<HashMap<String, Session>>,
    /// Where they are kept, if anywhere; its lock orders the writers.
    file: Option<Mutex<PathBuf>>,
}

impl Sessions {
    /// The sessions kept in `file` that are still open at `now_ms` (none if it is missing or
    /// unreadable: everyone logs in again). Blocking: call it off the async threads.
    pub(super) fn load(file: PathBuf, now_ms: u64) -> Sessions {
        let mut by_id: HashMap<String, Session> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %file.display(), "dashboard sessions unreadable, starting with none ({err})");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        by_id.retain(|_, s| s.open_at(now_ms));
        Sessions {
            by_id: Mutex::new(by_id),
            file: Some(Mutex::new(file)),
        }
    }

    /// A new session for `uid`; returns its id (the cookie's value). Call `persist` next.
    pub(super) fn open(&self, uid: Option<u32>, now_ms: u64) -> String {
        let id = crate::secrets::random_hex(32).expose().to_owned();
        let session = Session {
            csrf: crate::secrets::random_hex(16).expose().to_owned(),
            uid,
            opened_ms: now_ms,
        };
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.open_at(now_ms));
        sessions.insert(id.clone(), session);
        id
    }

    /// Writes the open sessions to the file. Blocking: call it off the async threads. Writers
    /// take turns, each writing what is open when its turn comes, so the last write is complete.
    pub(super) fn persist(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let file = file.lock().unwrap_or_else(|p| p.into_inner());
        let text = {
            let sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*sessions).map_err(std::io::Error::other)?
        };
        crate::atomic_file::replace(Path::new(&*file), &text, crate::atomic_file::PRIVATE)
    }

    /// The session whose cookie `headers` carry, if it is open.
    pub(super) fn find(&self, headers: &HeaderMap, now_ms: u64) -> Option<Session> {
        let id = cookie(headers)?;
        let sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).filter(|s| s.open_at(now_ms)).cloned()
    }
}

/// The session cookie's value among the request's cookies.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The `Set-Cookie` value that opens session `id`.
pub(super) fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
}

/// Whether a state-changing request may go on: its `Origin` is this very page's origin (host and
/// port of its `Host`, over http, or https behind a TLS proxy that keeps the `Host`).
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest == host)
}

/// Whether `presented` is the session's CSRF token (compared in constant time).
pub(super) fn csrf_matches(session: &Session, presented: &str) -> bool {
    crate::front_door::matches(presented, &session.csrf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_session_is_found_by_its_cookie_among_others_and_expires() {
        let sessions = Sessions::default();
        let t0 = 1_700_000_000_000;
        let id = sessions.open(Some(1000), t0);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {COOKIE}={id}")).expect("header"),
        );
        let found = sessions.find(&headers, t0).expect("session");
        assert_eq!(found.uid, Some(1000));
        assert_eq!(found.csrf.len(), 32);
        assert!(csrf_matches(&found, &found.csrf.clone()));
        assert!(!csrf_matches(&found, "nope"));
        assert_eq!(sessions.find(&headers, t0 + LIFETIME_MS), None, "expired");
        assert_eq!(sessions.find(&HeaderMap::new(), t0), None, "no cookie");
        assert!(set_cookie(&id).contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn open_sessions_outlive_the_daemon_in_a_private_file_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("dashboard-sessions");
        let t0 = 1_700_000_000_000;
        let first = Sessions::load(file.clone(), t0);
        let old = first.open(Some(1000), t0);
        let new = first.open(None, t0 + LIFETIME_MS / 2);
        first.persist().expect("persist");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).expect("file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let with = |id: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE}={id}")).expect("header"),
            );
            h
        };
        let later = t0 + LIFETIME_MS + 1;
        let second = Sessions::load(file.clone(), later);
        assert_eq!(second.find(&with(&old), later), None, "expired");
        let kept = second
            .find(&with(&new), later)
            .expect("kept across a restart");
        assert_eq!(kept, first.find(&with(&new), later).expect("same session"));
        std::fs::write(&file, "not json").expect("write");
        assert_eq!(
            Sessions::load(file, later).find(&with(&new), later),
            None,
            "unreadable file: log in again"
        );
    }

    #[test]
    fn only_the_page_own_origin_may_change_things() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3006"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
            }
            h
        };
        assert!(same_origin(&headers(Some("http://127.0.0.1:3006"))));
        assert!(
            same_origin(&headers(Some("https://127.0.0.1:3006"))),
            "behind a TLS proxy"
        );
        assert!(!same_origin(&headers(Some("ftp://127.0.0.1:3006"))));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(None)));
    }
}
