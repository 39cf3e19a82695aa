//! Dashboard sessions: a login code becomes a session, held in an HttpOnly, SameSite=Strict
//! cookie; each session has its own CSRF token, which every state-changing request must carry,
//! with a same-origin `Origin`.
//!
//! In memory only: a daemon restart logs everyone out. A session lasts 24 hours. The cookie and
//! the CSRF token are random and never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

/// The session cookie's name.
pub(super) const COOKIE: &str = "ocm_session";
/// How long a session lasts.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    pub csrf: String,
    /// The local user who asked for the login code.
    pub uid: Option<u32>,
    opened: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    // A std mutex: held for one map operation, never across an `.await`.
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `uid`; returns its id (the cookie's value).
    pub(super) fn open(&self, uid: Option<u32>, now: Instant) -> String {
        let id = crate::secrets::random_hex(32).expose().to_owned();
        let session = Session {
            csrf: crate::secrets::random_hex(16).expose().to_owned(),
            uid,
            opened: now,
        };
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| now.saturating_duration_since(s.opened) < LIFETIME);
        sessions.insert(id.clone(), session);
        id
    }

    /// The session whose cookie `headers` carry, if it is open.
    pub(super) fn find(&self, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let id = cookie(headers)?;
        let sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(id)
            .filter(|s| now.saturating_duration_since(s.opened) < LIFETIME)
            .cloned()
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

/// Whether a state-changing request may go on: its `Origin` is this very page's origin (scheme,
/// host and port of its `Host`), and it carries the session's CSRF token.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin == format!("http://{host}")
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
        let t0 = Instant::now();
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
        assert_eq!(sessions.find(&headers, t0 + LIFETIME), None, "expired");
        assert_eq!(sessions.find(&HeaderMap::new(), t0), None, "no cookie");
        assert!(set_cookie(&id).contains("HttpOnly; SameSite=Strict"));
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
        assert!(!same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(None)));
    }
}
