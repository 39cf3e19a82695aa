//! `mcp_status`: the state of the global MCP gateway (port 3005), from the published snapshot:
//! `running`, `stopped` or `not_started`, with the number of running Projects, counted from live
//! Instances (never a stored counter that can drift).

use super::Manager;
use crate::snapshot::GatewayView;

/// The Gateway, as `mcp_status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GatewayStatus {
    pub view: GatewayView,
    pub port: u16,
    pub active_projects: usize,
}

pub(crate) fn mcp_status(manager: &Manager) -> GatewayStatus {
    let snapshot = manager.snapshot();
    GatewayStatus {
        view: snapshot.gateway.clone(),
        port: manager.config().gateway_port,
        active_projects: snapshot.running_count(),
    }
}
