//! `stop_mcp_tool`: close the gateway's listener; Projects keep running. It stays closed until a
//! Project starts or `mcp_restart` (the periodic check does not reopen it).

use super::Manager;
use crate::error::ErrorCode;
use crate::reply::{Reply, Status};

pub fn stop_mcp_tool(manager: &Manager) -> Reply {
    let active = manager.running_projects();
    let mut reply = if manager.gateway().stop_by_user(manager) {
        Reply::new(Status::Success, "Global MCP tool stopped")
    } else {
        Reply::error(
            ErrorCode::GatewayNotRunning,
            "Global MCP tool is not running",
            "there is nothing to stop",
        )
    };
    reply.active_projects = Some(active);
    reply
}
