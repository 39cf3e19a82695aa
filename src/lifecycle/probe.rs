//! Probing a running Instance: does it answer, which sessions are working, how many permission
//! requests wait, is anyone connected, how much memory does it use. Observations only: it decides
//! nothing and records nothing.

use std::time::Duration;

use super::{Host, Instance, Probed};
use crate::instance::api::InstanceApi;

/// One probe, each part with a short timeout; `/proc` and cgroup reads run off the async threads.
pub(crate) async fn probe(host: &Host, instance: Instance) -> Probed {
    let Instance {
        project,
        proc,
        port,
        enforced,
        ..
    } = instance;
    // Before any request of ours, whose own connection would count as someone's.
    let (memory, connected) = tokio::task::spawn_blocking(move || {
        let memory = enforced
            .as_ref()
            .and_then(|e| e.memory_current())
            .or_else(|| Some(crate::instance::enforce::tree_rss(proc.pid)).filter(|m| *m > 0));
        (memory, established_connections(port))
    })
    .await
    .unwrap_or((None, false));
    let Some(env) = host.envs.get(project.as_str()) else {
        return Probed {
            ok: None,
            memory,
            connected,
            ..Probed::default()
        };
    };
    let api = InstanceApi::new(port, env.password.clone());
    let ok = api.health(Duration::from_secs(3)).await.is_ok();
    let (busy, permissions) = if ok {
        tokio::join!(busy_sessions(&api), pending_permissions(&api))
    } else {
        (Vec::new(), 0)
    };
    Probed {
        ok: Some(ok),
        busy,
        permissions,
        connected,
        memory,
    }
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

/// Established TCP connections to `port` on this machine (someone is using the Instance).
fn established_connections(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is field 1, state is field 3; 01 = ESTABLISHED.
                fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "01"
            })
        })
    })
}
