//! `stop_mcp_tool`: stop the global MCP gateway. The original answered "Global MCP tool is not
//! running" when it had none; so does this version, which does not serve the gateway yet.

use super::Manager;
use super::reply::{ErrorCode, Reply};

pub fn stop_mcp_tool(manager: &Manager) -> Reply {
    let mut reply = Reply::error(
        ErrorCode::GatewayNotRunning,
        "Global MCP tool is not running",
        "there is nothing to stop",
    );
    reply.active_projects = Some(manager.running_projects());
    reply
}
