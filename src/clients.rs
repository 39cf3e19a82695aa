//! Who is connected to the daemon now: a count of clients (control-socket connections and open
//! dashboard streams) and a signal when one leaves, so the daemon lingers only when nobody is
//! there. Each client holds a [`Present`] guard for as long as it is connected; dropping it is
//! leaving. It knows nothing about what a client does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The connected clients.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    count: AtomicUsize,
    left: Notify,
}

/// One connected client; leaving is dropping it.
#[derive(Debug)]
pub(crate) struct Present(Arc<Clients>);

impl Clients {
    /// A client arrives.
    pub(crate) fn enter(self: &Arc<Self>) -> Present {
        self.count.fetch_add(1, Ordering::SeqCst);
        Present(self.clone())
    }

    /// Whether anyone is connected.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Resolves after a client leaves (one wakeup is kept if nobody waits at that moment).
    pub(crate) async fn left(&self) {
        self.left.notified().await;
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.left.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_counts_while_present_and_its_leaving_wakes_the_waiter() {
        let clients = Arc::new(Clients::default());
        assert!(!clients.any());
        let one = clients.enter();
        let two = clients.enter();
        drop(one);
        clients.left().await;
        assert!(clients.any(), "one is still there");
        drop(two);
        clients.left().await;
        assert!(!clients.any());
    }
}
