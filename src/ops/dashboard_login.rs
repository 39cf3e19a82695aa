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

/// Where the dashboard listens, once it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listening {
    /// Not started yet, or turned off (`dashboard_port = 0`).
    No(String),
    Yes(std::net::SocketAddr),
}

/// The login codes issued and not yet used, and the dashboard's address.
#[derive(Debug)]
pub(crate) struct LoginCodes {
    // A std mutex: held for one map operation, never across an `.await`.
    codes: Mutex<HashMap<String, (Option<u32>, Instant)>>,
    listening: Mutex<Listening>,
}

impl Default for LoginCodes {
    fn default() -> Self {
        LoginCodes {
            codes: Mutex::default(),
            listening: Mutex::new(Listening::No("the dashboard is starting".into())),
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
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = listening;
    }

    pub(crate) fn listening(&self) -> Listening {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A login URL for the local user `uid`.
pub(crate) fn login(manager: &Manager, uid: Option<u32>) -> Result<String, OpError> {
    let codes = manager.logins();
    let address = match codes.listening() {
        Listening::Yes(address) => address,
        Listening::No(why) => {
            return Err(OpError::new(
                ErrorCode::DashboardUnavailable,
                format!("the dashboard is not listening: {why}"),
                "set dashboard_port in opencode-manager.toml (or OPENCODE_MANAGER_DASHBOARD_PORT) to a free port, then restart the daemon",
            ));
        }
    };
    let host = if address.ip().is_loopback() || address.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if address.is_ipv6() {
        format!("[{}]", address.ip())
    } else {
        address.ip().to_string()
    };
    let code = codes.issue(uid, Instant::now());
    Ok(format!(
        "http://{host}:{}/login?code={code}",
        address.port()
    ))
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
}
