//! `mcp_restart`: close and reopen the Gateway's listener. As in the original, only while at least
//! one Project runs (the Gateway has nothing to serve otherwise). Undoes `stop_mcp_tool`.

use super::{GatewayRequest, Manager};
use crate::error::{ErrorCode, OpError};

/// The reopened Gateway: its port and the running Projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restarted {
    pub port: u16,
    pub active_projects: usize,
}

pub(crate) async fn mcp_restart(manager: &Manager) -> Result<Restarted, OpError> {
    let active_projects = manager.snapshot().running_count();
    if active_projects == 0 {
        let mut error = OpError::new(
            ErrorCode::NoActiveProjects,
            "No active projects - MCP tool will not be restarted",
            "start a project first; the gateway opens with it",
        );
        error.details.active_projects = Some(0);
        return Err(error);
    }
    match manager.ask_gateway(GatewayRequest::Restart).await {
        Some(Ok(())) => Ok(Restarted {
            port: manager.config().gateway_port,
            active_projects,
        }),
        Some(Err(message)) => Err(OpError::new(
            ErrorCode::GatewayNotRunning,
            message,
            "free the gateway port or change gateway_port",
        )),
        None => Err(OpError::internal("the gateway task is not running")),
    }
}
