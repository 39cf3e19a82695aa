//! The front door of every HTTP listener this program serves (`serve --mode http` and the
//! Gateway): the Host and Origin allowlist, the bearer token, and the token files behind it.
//!
//! A request whose Host is not an allowed name, or whose Origin is a foreign site, is refused with
//! 403 before anything else runs (DNS rebinding, cross-site requests from a browser). The allowed
//! names are the loopback names, the address the listener is bound to and the operator's
//! `--allowed-host`/`allowed_hosts`. A protected route then needs `Authorization: Bearer <token>`
//! (the scheme in any case); the door asks its `authorize` function which [`Scope`] the token
//! has, which must cost O(1). Answers without a valid token keep the Node tool's 401 bodies.
//! Tokens are compared in constant time by the callers and never logged. It knows no tool.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use subtle::ConstantTimeEq as _;

use crate::secrets::Secret;

/// The listener every HTTP door serves from: each accepted connection sets `TCP_NODELAY`, so a
/// reply written in pieces (an SSE stream's event, then its end) goes out at once instead of
/// waiting, by Nagle's algorithm, for the client's delayed ACK (about 40 ms per call with a
/// keep-alive client such as httpx).
pub(crate) fn without_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {err}");
        }
    })
}

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The global token (or the manager's HTTP token): every Project.
    All,
    /// A Project's own token: that Project only.
    Project(String),
}

/// The shortest token accepted on a non-loopback address (and warned about on loopback).
pub(crate) const MIN_TOKEN_LEN: usize = 32;

type Authorize = dyn Fn(&str) -> Option<Scope> + Send + Sync;

/// One listener's door: the host names it answers to and how it checks tokens.
pub(crate) struct Door {
    hosts: Vec<String>,
    authorize: Box<Authorize>,
}

impl Door {
    pub(crate) fn new(
        hosts: Vec<String>,
        authorize: impl Fn(&str) -> Option<Scope> + Send + Sync + 'static,
    ) -> Arc<Door> {
        Arc::new(Door {
            hosts,
            authorize: Box::new(authorize),
        })
    }

    /// A door with one token that reaches everything.
    pub(crate) fn single(hosts: Vec<String>, token: Secret) -> Arc<Door> {
        Door::new(hosts, move |presented| {
            matches(presented, token.expose()).then_some(Scope::All)
        })
    }

    pub(crate) fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Origin patterns in rmcp's form (`http://host:*`), for its own check behind this door.
    pub(crate) fn origin_patterns(&self) -> Vec<String> {
        self.hosts
            .iter()
            .flat_map(|h| {
                let h = bracketed(h);
                [format!("http://{h}:*"), format!("https://{h}:*")]
            })
            .collect()
    }
}

/// Whether two tokens are equal, in time independent of where they differ.
pub(crate) fn matches(presented: &str, token: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// The names a listener bound to `bound` answers to: the loopback names, the bound address
/// (unless it is a wildcard) and the operator's extra names.
pub(crate) fn hosts_for(bound: IpAddr, extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if !bound.is_unspecified() && !bound.is_loopback() {
        hosts.push(bound.to_string());
    }
    for host in extra {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            hosts.push(host);
        }
    }
    hosts
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Axum middleware for every route: refuses a foreign Host or Origin with 403.
pub(crate) async fn host_guard(
    State(door): State<Arc<Door>>,
    request: Request,
    next: Next,
) -> Response {
    if !host_allowed(request.headers(), &door.hosts) {
        return refusal(
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed",
        );
    }
    if !origin_allowed(request.headers(), &door.hosts) {
        return refusal(StatusCode::FORBIDDEN, "Forbidden: Origin is not allowed");
    }
    next.run(request).await
}

/// A refusal that also ends the connection. The request's body is never read, so the connection
/// cannot carry another request; saying so keeps a keep-alive client (httpx) from sending its next
/// request on a connection the server is closing.
fn refusal(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Axum middleware for protected routes: requires a token the door knows and records its [`Scope`].
pub(crate) async fn bearer(
    State(door): State<Arc<Door>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(value) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("Missing Authorization header");
    };
    let Some(presented) = bearer_token(value) else {
        return unauthorized("Invalid Authorization type (expected Bearer token)");
    };
    let Some(scope) = (door.authorize)(presented) else {
        return unauthorized("Invalid bearer token");
    };
    request.extensions_mut().insert(scope);
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(reason: &str) -> Response {
    let body = serde_json::json!({ "error": format!("Unauthorized: {reason}") });
    let mut response = refusal(StatusCode::UNAUTHORIZED, axum::Json(body));
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn host_allowed(headers: &HeaderMap, hosts: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    name_allowed(authority.host(), hosts)
}

fn name_allowed(name: &str, hosts: &[String]) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn origin_allowed(headers: &HeaderMap, hosts: &[String]) -> bool {
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
    rest.trim_end_matches('/')
        .parse::<axum::http::uri::Authority>()
        .is_ok_and(|authority| name_allowed(authority.host(), hosts))
}

/// Where a listener's token came from, for its start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Environment(&'static str),
    File(PathBuf),
}

/// A listener's token: the environment variable `var`, else the token file `file`, created with
/// a fresh 64-character token (0600) on first use. Only the file's path is ever shown.
pub(crate) fn load_token(var: &'static str, file: &Path) -> std::io::Result<(Secret, TokenSource)> {
    if let Some(token) = std::env::var(var).ok().filter(|t| !t.is_empty()) {
        return Ok((Secret::new(token), TokenSource::Environment(var)));
    }
    let fresh = crate::secrets::random_hex(32);
    match crate::atomic_file::create_new(
        file,
        format!("{}\n", fresh.expose()).as_bytes(),
        crate::atomic_file::PRIVATE,
    ) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    let token = std::fs::read_to_string(file)?.trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} is empty; delete it to have a new token generated",
            file.display()
        )));
    }
    Ok((Secret::new(token), TokenSource::File(file.to_owned())))
}

/// A token under [`MIN_TOKEN_LEN`] characters: refused (`Err`) on a non-loopback address,
/// a warning (`Ok(Some)`) on loopback.
pub(crate) fn check_strength(
    token: &Secret,
    source: &TokenSource,
    bound: IpAddr,
) -> Result<Option<String>, String> {
    let length = token.expose().chars().count();
    if length >= MIN_TOKEN_LEN {
        return Ok(None);
    }
    let from = match source {
        TokenSource::Environment(var) => (*var).to_owned(),
        TokenSource::File(path) => path.display().to_string(),
    };
    let text = format!(
        "the token from {from} has {length} characters; use at least {MIN_TOKEN_LEN} (for example: openssl rand -hex 32)"
    );
    if bound.is_loopback() {
        Ok(Some(text))
    } else {
        Err(format!("refusing to listen on {bound}: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        map
    }

    #[test]
    fn loopback_hosts_and_origins_pass_and_foreign_ones_do_not() {
        let hosts = hosts_for("127.0.0.1".parse().expect("ip"), &[]);
        for ok in ["127.0.0.1:8000", "localhost", "[::1]:3005"] {
            assert!(
                host_allowed(&headers(&[(header::HOST, ok)]), &hosts),
                "{ok}"
            );
        }
        assert!(!host_allowed(
            &headers(&[(header::HOST, "evil.example:8000")]),
            &hosts
        ));
        assert!(!host_allowed(&headers(&[]), &hosts));
        assert!(origin_allowed(&headers(&[]), &hosts));
        assert!(origin_allowed(
            &headers(&[(header::ORIGIN, "http://localhost:3000")]),
            &hosts
        ));
        assert!(!origin_allowed(
            &headers(&[(header::ORIGIN, "https://evil.example")]),
            &hosts
        ));
        assert!(!origin_allowed(
            &headers(&[(header::ORIGIN, "null")]),
            &hosts
        ));
    }

    #[test]
    fn the_bound_address_and_extra_names_are_allowed() {
        let hosts = hosts_for("192.168.7.9".parse().expect("ip"), &["ocm.lan".into()]);
        assert!(host_allowed(
            &headers(&[(header::HOST, "192.168.7.9:8000")]),
            &hosts
        ));
        assert!(host_allowed(
            &headers(&[(header::HOST, "OCM.lan:8000")]),
            &hosts
        ));
        assert!(origin_allowed(
            &headers(&[(header::ORIGIN, "http://ocm.lan:8000")]),
            &hosts
        ));
        assert!(!host_allowed(
            &headers(&[(header::HOST, "other.lan")]),
            &hosts
        ));
        let wildcard = hosts_for("0.0.0.0".parse().expect("ip"), &[]);
        assert!(!wildcard.iter().any(|h| h == "0.0.0.0"));
        let v6 = hosts_for("fd00::5".parse().expect("ip"), &[]);
        assert!(host_allowed(
            &headers(&[(header::HOST, "[fd00::5]:80")]),
            &v6
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn short_tokens_are_refused_off_loopback_and_warned_about_on_it() {
        let short = Secret::new("x".repeat(31));
        let source = TokenSource::Environment("OPENCODE_MANAGER_TOKEN");
        let lan: IpAddr = "10.0.0.2".parse().expect("ip");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(check_strength(&short, &source, lan).is_err());
        assert!(
            check_strength(&short, &source, lo)
                .expect("warn")
                .is_some_and(|w| w.contains("OPENCODE_MANAGER_TOKEN"))
        );
        let long = Secret::new("x".repeat(32));
        assert_eq!(check_strength(&long, &source, lan), Ok(None));
    }
}
