//! `mcp_status`: the state of the global MCP gateway (port 3005): `running`, `stopped` or
//! `not_started`, with its pid (the daemon's), port, uptime and the number of running Projects,
//! counted from live Instances (never a stored counter that can drift).

use super::Manager;
use crate::gateway::GatewayView;
use crate::reply::{Reply, Status};

pub fn mcp_status(manager: &Manager) -> Reply {
    let mut reply = match manager.gateway().view() {
        GatewayView::NotStarted => {
            Reply::new(Status::NotStarted, "Global MCP tool has never been started")
        }
        GatewayView::Running {
            port,
            uptime_secs,
            started_at,
        } => {
            let mut reply = Reply::new(
                Status::Running,
                format!("Global MCP gateway is serving http://127.0.0.1:{port}/mcp"),
            );
            reply.pid = Some(std::process::id());
            reply.uptime_secs = Some(uptime_secs);
            reply.started_at = Some(started_at);
            reply.mcp_tool_url = Some(format!("http://127.0.0.1:{port}/mcp"));
            reply
        }
        GatewayView::Stopped { error } => {
            let mut reply = Reply::new(Status::Stopped, "Global MCP gateway is stopped");
            reply.last_error = error;
            reply
        }
    };
    reply.port = Some(manager.config().gateway_port);
    reply.active_projects = Some(manager.running_projects());
    reply
}
