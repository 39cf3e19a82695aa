//! `mcp_restart`: close and reopen the gateway's listener. As in the original, only while at least
//! one Project runs (the gateway has nothing to serve otherwise).

use super::Manager;
use crate::error::ErrorCode;
use crate::reply::{Reply, Status};

pub fn mcp_restart(manager: &Manager) -> Reply {
    let active = manager.running_projects();
    if active == 0 {
        let mut reply = Reply::error(
            ErrorCode::NoActiveProjects,
            "No active projects - MCP tool will not be restarted",
            "start a project first; the gateway opens with it",
        );
        reply.active_projects = Some(0);
        return reply;
    }
    match manager.gateway().restart(manager) {
        Ok(()) => {
            let mut reply = Reply::new(Status::Success, "Global MCP tool restarted");
            reply.pid = Some(std::process::id());
            reply.port = Some(manager.config().gateway_port);
            reply.active_projects = Some(active);
            reply
        }
        Err(message) => Reply::error(
            ErrorCode::GatewayNotRunning,
            message,
            "free the gateway port or change gateway_port",
        ),
    }
}
