//! Choosing an Instance's port: stable per Project, inside the configured range, bind-probed.
//!
//! The order of candidates is pure ([`candidates`]); the probe only binds and closes a socket on
//! 127.0.0.1. A port held by someone else is skipped. Nothing here ever signals a process.

use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

/// Ports to try, best first: the remembered port, then the Project's hash slot, then the rest of
/// the range in order, skipping ports other Projects have recorded.
pub fn candidates(
    project: &str,
    remembered: Option<u16>,
    range: &RangeInclusive<u16>,
    reserved: &[u16],
) -> Vec<u16> {
    let (lo, hi) = (*range.start(), *range.end());
    let width = u32::from(hi - lo) + 1;
    let slot = lo + (fnv1a(project.as_bytes()) % width) as u16;
    let mut out: Vec<u16> = remembered
        .filter(|p| range.contains(p))
        .into_iter()
        .collect();
    let rotated = (slot..=hi).chain(lo..slot);
    for port in rotated {
        if !out.contains(&port) && !reserved.contains(&port) {
            out.push(port);
        }
    }
    out
}

/// Whether nothing listens on `127.0.0.1:port` right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Waits (briefly, checking every 20 ms) until `port` is free: the kernel releases a listening
/// socket a moment after its process is gone. Returns whether it is free.
pub async fn wait_free(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if is_free(port) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The first free candidate.
pub fn choose(
    project: &str,
    remembered: Option<u16>,
    range: &RangeInclusive<u16>,
    reserved: &[u16],
) -> Option<u16> {
    candidates(project, remembered, range, reserved)
        .into_iter()
        .find(|p| is_free(*p))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A free port the system chose (bound and closed at once), for an agent that must listen on a
/// port of its own beside its Instance's (`opencode acp` serves its own API): not one of the
/// manager's range, so no Project is ever given it.
pub fn ephemeral() -> std::io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr().map(|a| a.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_port_comes_first_and_reserved_ports_never_appear() {
        let range = 4100..=4109;
        let c = candidates("demo", Some(4105), &range, &[4100, 4101]);
        assert_eq!(c[0], 4105);
        assert_eq!(c.len(), 8);
        assert!(!c.contains(&4100) && !c.contains(&4101));
    }

    #[test]
    fn the_slot_is_stable_per_project_and_inside_the_range() {
        let range = 4100..=4199;
        let a = candidates("blog-api", None, &range, &[]);
        assert_eq!(a, candidates("blog-api", None, &range, &[]));
        assert!(range.contains(&a[0]));
        assert_eq!(a.len(), 100);
    }

    #[test]
    fn a_port_held_by_a_foreign_listener_is_skipped() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = held.local_addr().expect("addr").port();
        assert!(!is_free(port));
        let range = port..=port.saturating_add(5);
        let chosen = choose("x", Some(port), &range, &[]).expect("a free port");
        assert_ne!(chosen, port);
    }
}
