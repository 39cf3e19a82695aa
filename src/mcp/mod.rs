//! The manager's MCP server (`opencode-manager serve`): the `opencode_*` tools over stdio or
//! Streamable HTTP, as a thin client of the daemon.
//!
//! Only this module knows rmcp. Tools hold no logic: each turns its arguments into a daemon
//! request, forwards progress, and maps the reply to a tool result. The caller's settings
//! (`ENVIRONMENT`) are those of the `serve` process and travel with every request. In stdio mode
//! stdout carries JSON-RPC only; logs go to stderr.

pub(crate) mod http;
pub(crate) mod tools;

use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool_handler};

use crate::config::Paths;
use crate::ops::CallerSettings;

/// The MCP server: one value per connection (stdio) or per HTTP session.
#[derive(Clone)]
pub(crate) struct McpServer {
    paths: Paths,
    caller: CallerSettings,
    tool_router: rmcp::handler::server::router::tool::ToolRouter<McpServer>,
}

impl McpServer {
    pub(crate) fn new(paths: Paths, caller: CallerSettings) -> McpServer {
        #[allow(unused_mut)]
        let mut tool_router = McpServer::tool_router();
        // The benchmark's baseline tool exists only in test-support builds, and only on request,
        // so the tested contract is the shipped one.
        #[cfg(feature = "test-support")]
        if std::env::var_os("OCM_BENCH_TOOL").is_some() {
            tool_router += McpServer::bench_router();
        }
        McpServer {
            paths,
            caller,
            tool_router,
        }
    }
}

const INSTRUCTIONS: &str = "Manage OpenCode coding-agent projects on this machine. Call opencode_start with a project \
name and an SSH git URL to bootstrap a project (sandbox, deploy key, .env, clone) and run its OpenCode server. \
Secrets never pass through this chat: when a reply has status waiting_for_passwords, ask the user to edit the .env \
file it names; when it has status waiting_for_key, show the user the public_key to add as a deploy key. Then call \
opencode_start again with the same arguments. Every reply has a status; errors also have an error code and a hint.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Serves MCP over stdin/stdout until the client closes stdin.
pub(crate) async fn serve_stdio(paths: Paths, caller: CallerSettings) -> anyhow::Result<()> {
    let running = McpServer::new(paths, caller)
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    Ok(())
}
