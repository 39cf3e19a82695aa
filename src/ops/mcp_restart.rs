//! `mcp_restart`: restart the global MCP gateway. Until the gateway is served, there is nothing to
//! restart, and the reply says so.

use super::Manager;
use super::reply::{ErrorCode, Reply};

pub fn mcp_restart(manager: &Manager) -> Reply {
    let mut reply = Reply::error(
        ErrorCode::GatewayNotRunning,
        "The global MCP gateway is not running: this version of opencode-manager does not serve it yet",
        "nothing to restart; opencode_status gives each project's OpenCode URL",
    );
    reply.port = Some(manager.config().gateway_port);
    reply
}
