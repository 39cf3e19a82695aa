//! The gateway's calls in flight, so a closing gateway finishes them before it ends its sessions.
//!
//! Closing happens in two steps: stop accepting connections (the port is free at once), then,
//! once every tool call under way has its answer (or a bound has passed), end the MCP sessions and
//! their event streams. A call to a Project stopped meanwhile so ends as a tool error from that
//! Project, never as an HTTP 500 from a gateway that vanished under it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a closing gateway waits for calls under way (a session message can take minutes;
/// past this bound the user's close wins).
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Counts requests whose answer is not written yet.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Ends a counted request when dropped (also when its handler is cancelled).
struct Counted(Arc<InFlight>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Waits until no request is under way, or `limit` has passed; returns whether none is.
    pub(crate) async fn drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

/// Axum middleware: counts POSTs (tool calls) until their response is ready. Event streams (GET)
/// are not counted: they last as long as their session.
pub(crate) async fn count(
    State(in_flight): State<Arc<InFlight>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    in_flight.count.fetch_add(1, Ordering::SeqCst);
    let _counted = Counted(in_flight);
    next.run(request).await
}

/// A running gateway's two stop signals and its counter.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    /// Stops accepting connections; the listener is dropped at once.
    pub accept: CancellationToken,
    /// Ends the MCP sessions (and their event streams), so open connections can close.
    pub sessions: CancellationToken,
    pub in_flight: Arc<InFlight>,
}

impl Serving {
    /// Stops accepting now; ends the sessions once the calls under way are answered.
    pub(crate) fn close(self) {
        self.accept.cancel();
        tokio::spawn(async move {
            if !self.in_flight.drained(DRAIN_LIMIT).await {
                tracing::warn!(
                    "gateway closed with calls still under way after {} s",
                    DRAIN_LIMIT.as_secs()
                );
            }
            self.sessions.cancel();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_the_last_call() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.count.fetch_add(2, Ordering::SeqCst);
        let (a, b) = (Counted(in_flight.clone()), Counted(in_flight.clone()));
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.drained(Duration::from_secs(30)).await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        assert!(waiter.await.expect("join"));
        assert!(in_flight.drained(Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_gives_up_at_its_limit() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        let _held = Counted(in_flight.clone());
        assert!(!in_flight.drained(Duration::from_secs(5)).await);
    }
}
