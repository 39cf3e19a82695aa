//! `stop_mcp_tool`: close the Gateway's listener; Projects keep running. It stays closed until a
//! user starts or restarts a Project, or `mcp_restart`.

use super::{GatewayRequest, Manager};
use crate::error::{ErrorCode, OpError};

/// Closes the Gateway; returns how many Projects run.
pub(crate) async fn stop_mcp_tool(manager: &Manager) -> Result<usize, OpError> {
    let active = manager.snapshot().running_count();
    match manager.ask_gateway(GatewayRequest::Stop).await {
        Some(true) => Ok(active),
        Some(false) => {
            let mut error = OpError::new(
                ErrorCode::GatewayNotRunning,
                "Global MCP tool is not running",
                "there is nothing to stop",
            );
            error.details.active_projects = Some(active);
            Err(error)
        }
        None => Err(OpError::internal("the gateway task is not running")),
    }
}
