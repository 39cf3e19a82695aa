//! `dashboard`: a login URL for the dashboard, holding a one-time code valid for 60 seconds.
//!
//! The codes live only in the daemon's memory. Redeeming one removes it, so a URL works once; an
//! expired code is refused like an unknown one. A code records which local user asked for it, so
//! the dashboard session it opens is audited as that user's. The code is the only secret here and
//! it is never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ErrorCode, OpError};
use crate::ops::Manager;

/// How long a login code stays valid.
pub(crate) const CODE_VALID: Duration = Duration::from_secs(60);

/// How long a login waits for a dashboard that is still starting (with a daemon just started).
const STARTING_WAIT: Duration = Duration::from_secs(10);

/// Where the dashboard listens, once it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listening {
    /// The daemon has just started and the dashboard is getting ready.
    Starting,
    /// Turned off (`dashboard_port = 0`) or unable to listen, and why.
    No(String),
    Yes(std::net::SocketAddr),
}

/// The login codes issued and not yet used, and the dashboard's address.
#[derive(Debug)]
pub(crate) struct LoginCodes {
    // A std mutex: held for one map operation, never across an `.await`.
    codes: Mutex<HashMap<String, (Option<u32>, Instant)>>,
    listening: tokio::sync::watch::Sender<Listening>,
}

impl Default for LoginCodes {
    fn default() -> Self {
        LoginCodes {
            codes: Mutex::default(),
            listening: tokio::sync::watch::Sender::new(Listening::Starting),
        }
    }
}

impl LoginCodes {
    /// A fresh code for the local user `uid`, valid from `now` for [`CODE_VALID`].
    pub(crate) fn issue(&self, uid: Option<u32>, now: Instant) -> String {
        let code = crate::secrets::random_hex(24).expose().to_owned();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, (_, issued)| now.saturating_duration_since(*issued) < CODE_VALID);
        codes.insert(code.clone(), (uid, now));
        code
    }

    /// The user a code was issued to, if it is known and still valid at `now`; it cannot be used
    /// again either way.
    pub(crate) fn redeem(&self, code: &str, now: Instant) -> Option<Option<u32>> {
        let (uid, issued) = self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code)?;
        (now.saturating_duration_since(issued) < CODE_VALID).then_some(uid)
    }

    pub(crate) fn set_listening(&self, listening: Listening) {
        self.listening.send_replace(listening);
    }

    /// Where the dashboard listens, waiting (up to [`STARTING_WAIT`]) while it is starting.
    async fn settled(&self) -> Listening {
        let mut listening = self.listening.subscribe();
        let settled = tokio::time::timeout(
            STARTING_WAIT,
            listening.wait_for(|l| *l != Listening::Starting),
        )
        .await;
        match settled {
            Ok(Ok(now)) => now.clone(),
            _ => Listening::No("it did not start within 10 seconds".into()),
        }
    }
}

/// A login URL for the local user `uid`.
pub(crate) async fn login(manager: &Manager, uid: Option<u32>) -> Result<String, OpError> {
    let codes = manager.logins();
    let address = match codes.settled().await {
        Listening::Yes(address) => address,
        Listening::No(why) => return Err(unavailable(&why)),
        Listening::Starting => return Err(unavailable("it is starting")),
    };
    let code = codes.issue(uid, Instant::now());
    Ok(format!("http://{}/login?code={code}", url_host(address)))
}

fn unavailable(why: &str) -> OpError {
    OpError::new(
        ErrorCode::DashboardUnavailable,
        format!("the dashboard is not listening: {why}"),
        "set dashboard_port in opencode-manager.toml (or OPENCODE_MANAGER_DASHBOARD_PORT) to a free port, then restart the daemon (kill the pid in opencode-manager.lock; the next command starts it)",
    )
}

/// The address a browser should use: `127.0.0.1` for a listener on every IPv4 address, `[::1]`
/// for one on every IPv6 address, else the listener's own (IPv6 in brackets).
fn url_host(address: std::net::SocketAddr) -> String {
    let ip = address.ip();
    match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => format!("127.0.0.1:{}", address.port()),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => format!("[::1]:{}", address.port()),
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_only_within_a_minute() {
        let codes = LoginCodes::default();
        let t0 = Instant::now();
        let code = codes.issue(Some(1000), t0);
        assert_eq!(code.len(), 48);
        assert_eq!(
            codes.redeem(&code, t0 + Duration::from_secs(5)),
            Some(Some(1000))
        );
        assert_eq!(
            codes.redeem(&code, t0 + Duration::from_secs(6)),
            None,
            "used"
        );
        let late = codes.issue(None, t0);
        assert_eq!(codes.redeem(&late, t0 + CODE_VALID), None, "expired");
        assert_eq!(codes.redeem("made-up", t0), None);
    }

    #[test]
    fn the_url_names_an_address_a_browser_reaches() {
        let at = |s: &str| url_host(s.parse().expect("address"));
        assert_eq!(at("127.0.0.1:3006"), "127.0.0.1:3006");
        assert_eq!(at("0.0.0.0:3006"), "127.0.0.1:3006");
        assert_eq!(at("[::1]:3006"), "[::1]:3006");
        assert_eq!(at("[::]:3006"), "[::1]:3006");
        assert_eq!(at("192.168.1.5:3006"), "192.168.1.5:3006");
    }

    #[tokio::test]
    async fn a_login_waits_for_a_starting_dashboard() {
        let codes = std::sync::Arc::new(LoginCodes::default());
        let waiting = tokio::spawn({
            let codes = codes.clone();
            async move { codes.settled().await }
        });
        tokio::task::yield_now().await;
        let address: std::net::SocketAddr = "127.0.0.1:3006".parse().expect("address");
        codes.set_listening(Listening::Yes(address));
        assert_eq!(waiting.await.expect("join"), Listening::Yes(address));
    }
}
