//! Probing a running Instance: does it answer, which sessions are working, how many permission
//! requests wait, is anyone connected, how much memory does it use, and (when asked) which model
//! provider it uses. Observations only: it decides nothing and records nothing.

use std::time::Duration;

use super::{Host, Instance, Probed};
use crate::instance::api::InstanceApi;
use crate::snapshot::ProviderView;

/// One probe, each part with a short timeout; `/proc` and cgroup reads run off the async threads.
pub(crate) async fn probe(host: &Host, instance: Instance, ask_provider: bool) -> Probed {
    let Instance {
        project,
        proc,
        port,
        enforced,
        ..
    } = instance;
    let (memory, cpu, connected) = tokio::task::spawn_blocking(move || {
        let memory = enforced
            .as_ref()
            .and_then(|e| e.memory_current())
            .or_else(|| Some(crate::instance::enforce::tree_rss(proc.pid)).filter(|m| *m > 0));
        let cpu = Some(crate::instance::enforce::tree_cpu(proc.pid));
        (memory, cpu, established_connections(port))
    })
    .await
    .unwrap_or((None, None, false));
    let Some(env) = host.envs.get(project.as_str()) else {
        return Probed {
            ok: None,
            memory,
            cpu,
            connected,
            ..Probed::default()
        };
    };
    let api = InstanceApi::new(port, env.password.clone());
    let ok = api.health(Duration::from_secs(3)).await.is_ok();
    let (busy, permissions, provider) = if ok {
        tokio::join!(busy_sessions(&api), pending_permissions(&api), async {
            if ask_provider {
                provider_of(&api, Duration::from_secs(5)).await
            } else {
                None
            }
        })
    } else {
        (Vec::new(), 0, None)
    };
    Probed {
        ok: Some(ok),
        busy,
        permissions,
        connected,
        memory,
        cpu,
        provider,
    }
}

/// Which model provider the Instance uses, as it says now (`GET /config/providers`).
pub(crate) async fn provider_of(api: &InstanceApi, timeout: Duration) -> Option<ProviderView> {
    let info = api.providers(timeout).await.ok()?;
    Some(ProviderView {
        providers: info.providers,
        model: info.default_model,
    })
}

/// The sessions an Instance reports busy (`GET /session/status` lists only those).
pub(crate) async fn busy_sessions(api: &InstanceApi) -> Vec<String> {
    api.call(
        reqwest::Method::GET,
        "/session/status",
        None,
        Duration::from_secs(3),
    )
    .await
    .ok()
    .and_then(|status| status.as_object().map(|m| m.keys().cloned().collect()))
    .unwrap_or_default()
}

/// How many permission requests wait for an answer (`GET /permission`).
async fn pending_permissions(api: &InstanceApi) -> usize {
    api.call(
        reqwest::Method::GET,
        "/permission",
        None,
        Duration::from_secs(3),
    )
    .await
    .ok()
    .and_then(|list| list.as_array().map(Vec::len))
    .unwrap_or(0)
}

/// Whether anyone but this daemon has a TCP connection open to `port` on this machine (someone is
/// using the Instance). The daemon's own connections (its kept-alive pool for probes and Gateway
/// calls) do not count: Gateway calls count as activity on their own.
fn established_connections(port: u16) -> bool {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .collect();
    let ours: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    others_connected(port, &tables, &ours)
}

/// One line of `/proc/net/tcp{,6}`: local port, remote port, whether established, socket inode.
fn connection(line: &str) -> Option<(u16, u16, bool, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    Some((
        port(fields.get(1)?)?,
        port(fields.get(2)?)?,
        // State is field 3; 01 = ESTABLISHED.
        *fields.get(3)? == "01",
        fields.get(9)?.parse().ok()?,
    ))
}

/// Whether a connection to `port` is established from a socket other than those in `ours`.
fn others_connected(port: u16, tables: &[String], ours: &std::collections::HashSet<u64>) -> bool {
    let connections: Vec<(u16, u16, bool, u64)> = tables
        .iter()
        .flat_map(|t| t.lines().skip(1))
        .filter_map(connection)
        .filter(|c| c.2)
        .collect();
    // The local ports of our own connections to the Instance.
    let our_ports: std::collections::HashSet<u16> = connections
        .iter()
        .filter(|(_, remote, _, inode)| *remote == port && ours.contains(inode))
        .map(|(local, ..)| *local)
        .collect();
    connections
        .iter()
        .any(|(local, remote, ..)| *local == port && !our_ports.contains(remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn line(local: u16, remote: u16, state: &str, inode: u64) -> String {
        format!(
            "   0: 0100007F:{local:04X} 0100007F:{remote:04X} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1"
        )
    }

    #[test]
    fn only_connections_of_other_processes_count() {
        let ours = std::collections::HashSet::from([111]);
        // The daemon's kept-alive connection: its end (port 50000 → 4101) and the Instance's.
        let daemon = format!(
            "{HEADER}\n{}\n{}",
            line(50000, 4101, "01", 111),
            line(4101, 50000, "01", 222)
        );
        assert!(!others_connected(
            4101,
            std::slice::from_ref(&daemon),
            &ours
        ));
        // Someone else's connection counts.
        let other = format!(
            "{daemon}\n{}\n{}",
            line(50001, 4101, "01", 333),
            line(4101, 50001, "01", 444)
        );
        assert!(others_connected(4101, &[other], &ours));
        // Listening or closing sockets do not.
        let listening = format!("{HEADER}\n{}", line(4101, 0, "0A", 555));
        assert!(!others_connected(4101, &[listening], &ours));
        // Another port is another Instance.
        let elsewhere = format!(
            "{HEADER}\n{}\n{}",
            line(50002, 4102, "01", 666),
            line(4102, 50002, "01", 777)
        );
        assert!(!others_connected(4101, &[elsewhere], &ours));
    }
}
