//! The parameters of the gateway's tools, with the Node opencode-mcp-tool's names (`server`,
//! `sessionId`, `parentID`, `content`) so existing prompts and clients keep working.
//!
//! Plain data with JSON schemas; validation of IDs happens in `tools`, which owns the calls.

use schemars::JsonSchema;
use serde::Deserialize;

/// `server` only.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ServerParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct CreateParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// Optional parent session ID for hierarchical sessions
    #[serde(default, rename = "parentID")]
    pub parent_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct SessionParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// The session ID (ses_…)
    #[serde(rename = "sessionId")]
    pub session_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct MessageParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// The session ID (ses_…)
    #[serde(rename = "sessionId")]
    pub session_id: String,
    /// The message text to send
    pub content: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct MessagesParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// The session ID (ses_…)
    #[serde(rename = "sessionId")]
    pub session_id: String,
    /// Return only the last N messages (whole histories are large)
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct StatusParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// Only this session; without it, every busy session of the project
    #[serde(default, rename = "sessionId")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReplyParams {
    /// OpenCode server ID: the project name. Optional when exactly one project runs.
    #[serde(default)]
    pub server: Option<String>,
    /// The permission request ID (per_…) from opencode-permission-list
    #[serde(rename = "permissionId")]
    pub permission_id: String,
    /// once: allow this call; always: allow calls like it from now on; reject: refuse it
    pub reply: PermissionReply,
    /// Optional message to the agent (with reject)
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PermissionReply {
    Once,
    Always,
    Reject,
}
