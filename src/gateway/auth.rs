//! Who a Gateway request speaks for: the global token reaches every Project, a Project's own
//! `MCP_TOOL_BEARER_TOKEN` (from its `.env`) reaches only that Project.
//!
//! Project tokens are looked up in the `.env` cache's token index, which follows the files: one
//! hash lookup per request, whatever the number of Projects or the size of their `.env` files, so
//! a request with a wrong token costs the daemon O(1). Tokens are never logged.

use std::sync::Arc;

use crate::config::Paths;
use crate::env_cache::EnvCache;
use crate::front_door::{self, Scope};
use crate::secrets::Secret;

/// The global token: `GLOBAL_MCP_BEARER_TOKEN`, else one generated once into
/// `<home>/global-mcp-token` (0600).
pub(crate) fn global_token(paths: &Paths) -> std::io::Result<(Secret, front_door::TokenSource)> {
    front_door::load_token("GLOBAL_MCP_BEARER_TOKEN", &paths.global_token_file())
}

/// The door's check for the Gateway: the global token (compared in constant time), then the
/// Projects' tokens.
pub(crate) fn authorizer(
    envs: Arc<EnvCache>,
    global: Secret,
) -> impl Fn(&str) -> Option<Scope> + Send + Sync + 'static {
    move |presented| {
        if front_door::matches(presented, global.expose()) {
            return Some(Scope::All);
        }
        envs.token_owner(presented).map(Scope::Project)
    }
}
