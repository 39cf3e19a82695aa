//! The Host and Origin guard in front of every HTTP route this program serves (the MCP server's
//! `serve --mode http` and the gateway): a request whose Host is not a loopback name, or whose
//! Origin is a foreign site, is refused before it reaches a handler (DNS rebinding, cross-site
//! requests from a browser).
//!
//! It knows nothing about tokens or tools; those are the caller's layers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Host names a loopback server answers to.
pub fn allowed_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1", "[::1]"]
        .map(String::from)
        .to_vec()
}

/// The guard's configuration, shared by every request.
pub struct Guard {
    pub hosts: Vec<String>,
}

impl Guard {
    pub fn loopback() -> Arc<Guard> {
        Arc::new(Guard {
            hosts: allowed_hosts(),
        })
    }
}

/// Axum middleware: refuses foreign Host and Origin headers with 403.
pub async fn local_only(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if !host_allowed(request.headers(), &guard.hosts) {
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed",
        )
            .into_response();
    }
    if !origin_allowed(request.headers()) {
        return (StatusCode::FORBIDDEN, "Forbidden: Origin is not allowed").into_response();
    }
    next.run(request).await
}

fn host_allowed(headers: &HeaderMap, hosts: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(authority.host()))
}

fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let Ok(authority) = rest
        .trim_end_matches('/')
        .parse::<axum::http::uri::Authority>()
    else {
        return false;
    };
    matches!(authority.host(), "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        map
    }

    #[test]
    fn only_loopback_hosts_and_origins_pass() {
        let hosts = allowed_hosts();
        assert!(host_allowed(
            &headers(&[(header::HOST, "127.0.0.1:8000")]),
            &hosts
        ));
        assert!(host_allowed(
            &headers(&[(header::HOST, "localhost")]),
            &hosts
        ));
        assert!(!host_allowed(
            &headers(&[(header::HOST, "evil.example:8000")]),
            &hosts
        ));
        assert!(!host_allowed(&headers(&[]), &hosts));
        assert!(origin_allowed(&headers(&[])));
        assert!(origin_allowed(&headers(&[(
            header::ORIGIN,
            "http://localhost:3000"
        )])));
        assert!(!origin_allowed(&headers(&[(
            header::ORIGIN,
            "https://evil.example"
        )])));
        assert!(!origin_allowed(&headers(&[(header::ORIGIN, "null")])));
    }
}
