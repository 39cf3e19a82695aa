//! `mcp_status`: the state of the global MCP gateway (port 3005).
//!
//! This version does not serve the gateway yet, so it answers honestly that it has never been
//! started, with the port it will use and the number of running Projects (counted from live
//! Instances, never from a stored counter).

use super::Manager;
use super::reply::{Reply, Status};

pub fn mcp_status(manager: &Manager) -> Reply {
    let mut reply = Reply::new(
        Status::NotStarted,
        "The global MCP gateway is not running: this version of opencode-manager does not serve it yet",
    );
    reply.port = Some(manager.config().gateway_port);
    reply.active_projects = Some(manager.running_projects());
    reply.hint = Some(
        "reach each project's OpenCode directly at the opencode_url that opencode_status reports"
            .into(),
    );
    reply
}
