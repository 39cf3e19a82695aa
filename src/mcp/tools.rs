//! One `#[tool]` function per manager tool: arguments → daemon request → tool result.
//!
//! Results carry the reply object as `structuredContent` (declared as the output schema), a short
//! human text, and `isError: true` exactly when `status` is `error`.

use std::sync::Arc;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::McpServer;
use crate::ops::start::StartArgs;
use crate::protocol::{Envelope, Request};
use crate::reply::{Reply, Status};

/// Arguments of `opencode_start`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct StartParams {
    /// Project name: 1–64 ASCII letters, digits, '-' or '_', starting with a letter or digit.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
        length(min = 1, max = 64)
    )]
    pub project_name: String,
    /// SSH URL of the repository, e.g. git@github.com:owner/repo.git or ssh://git@host:22/owner/repo.git.
    #[schemars(length(min = 1))]
    pub git_url: String,
    /// Absolute path of an existing private key to use instead of a generated deploy key (optional).
    #[serde(default)]
    pub user_ssh_key: Option<String>,
    /// The coding agent to run (optional, default opencode): opencode, gemini, opencode-acp, claude, codex or custom. Kept from the first start.
    #[serde(default)]
    #[schemars(regex(pattern = r"^(opencode|gemini|opencode-acp|claude|codex|custom)$"))]
    pub agent: Option<String>,
}

/// A project name.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ProjectParams {
    /// Project name, as given to opencode_start.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
        length(min = 1, max = 64)
    )]
    pub project_name: String,
}

/// Arguments of `opencode_destroy`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct DestroyParams {
    /// Project name, as given to opencode_start.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
        length(min = 1, max = 64)
    )]
    pub project_name: String,
    /// Delete even if repo/ holds uncommitted changes or unpushed commits (they are lost).
    #[serde(default)]
    pub force: bool,
}

/// Arguments of `opencode_logs`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct LogsParams {
    /// Project whose OpenCode log to read; without it, the manager's own log.
    #[serde(default)]
    pub project_name: Option<String>,
    /// How many lines from the end (default 50, at most 2000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 2000))]
    pub lines: Option<usize>,
}

/// The declared output schema of every tool: the reply object.
/// Built once: every tool declares it, and a stateless HTTP request builds the tool list anew.
fn reply_schema() -> Arc<rmcp::model::JsonObject> {
    static SCHEMA: std::sync::OnceLock<Arc<rmcp::model::JsonObject>> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(
            || match serde_json::to_value(schemars::schema_for!(Reply)) {
                Ok(serde_json::Value::Object(map)) => Arc::new(map),
                _ => Arc::new(rmcp::model::JsonObject::new()),
            },
        )
        .clone()
}

#[tool_router(vis = "pub(crate)")]
impl McpServer {
    #[tool(
        description = "Start or bootstrap an OpenCode coding-agent project: creates its sandbox and .env, a deploy key, clones the repository over SSH and runs an isolated OpenCode server. Idempotent: call it again after doing what a waiting_for_passwords (user edits .env) or waiting_for_key (user adds the public key) reply asks. Secrets are never passed through the chat. Sends progress notifications for each step.",
        output_schema = reply_schema(),
        annotations(title = "Start an OpenCode project", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = true)
    )]
    async fn opencode_start(
        &self,
        Parameters(p): Parameters<StartParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let args = StartArgs {
            project_name: p.project_name,
            git_url: p.git_url,
            user_ssh_key: p.user_ssh_key,
            agent: p.agent,
        };
        self.call(Request::Start(args), Some(ctx)).await
    }

    #[tool(
        description = "Report a project's OpenCode server: pid, port, running or not, URL, health, and the model provider it will use.",
        output_schema = reply_schema(),
        annotations(title = "Project status", read_only_hint = true, open_world_hint = false)
    )]
    async fn opencode_status(&self, Parameters(p): Parameters<ProjectParams>) -> CallToolResult {
        self.call(
            Request::Status {
                project_name: p.project_name,
            },
            None,
        )
        .await
    }

    #[tool(
        description = "Stop a project's OpenCode server and everything its agent started. The sandbox, repository and .env stay. Stopping a stopped project succeeds and changes nothing.",
        output_schema = reply_schema(),
        annotations(title = "Stop a project", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn opencode_stop(&self, Parameters(p): Parameters<ProjectParams>) -> CallToolResult {
        self.call(
            Request::Stop {
                project_name: p.project_name,
            },
            None,
        )
        .await
    }

    #[tool(
        description = "Restart a project's OpenCode server on the same port (re-reads its .env, so changed provider keys take effect).",
        output_schema = reply_schema(),
        annotations(title = "Restart a project", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn opencode_restart(
        &self,
        Parameters(p): Parameters<ProjectParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.call(
            Request::Restart {
                project_name: p.project_name,
            },
            Some(ctx),
        )
        .await
    }

    #[tool(
        description = "DESTRUCTIVE: stop a project and delete its sandbox (repository clone, .env) and generated deploy key. The remote repository is not affected. Refuses while the clone holds uncommitted changes or unpushed commits, listing them, unless force is true.",
        output_schema = reply_schema(),
        annotations(title = "Destroy a project", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn opencode_destroy(&self, Parameters(p): Parameters<DestroyParams>) -> CallToolResult {
        self.call(
            Request::Destroy {
                project_name: p.project_name,
                force: p.force,
            },
            None,
        )
        .await
    }

    #[tool(
        description = "List all projects with their status, port and pid.",
        output_schema = reply_schema(),
        annotations(title = "List projects", read_only_hint = true, open_world_hint = false)
    )]
    async fn opencode_list(&self) -> CallToolResult {
        self.call(Request::List, None).await
    }

    #[tool(
        description = "Report the global MCP gateway (port 3005) that exposes every project's coding sessions: status, pid, port, active projects.",
        output_schema = reply_schema(),
        annotations(title = "Gateway status", read_only_hint = true, open_world_hint = false)
    )]
    async fn opencode_mcp_status(&self) -> CallToolResult {
        self.call(Request::McpStatus, None).await
    }

    #[tool(
        description = "Restart the global MCP gateway (only when at least one project runs).",
        output_schema = reply_schema(),
        annotations(title = "Restart the gateway", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn opencode_mcp_restart(&self) -> CallToolResult {
        self.call(Request::McpRestart, None).await
    }

    #[tool(
        description = "Stop the global MCP gateway; projects keep running.",
        output_schema = reply_schema(),
        annotations(title = "Stop the gateway", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn opencode_stop_mcp_tool(&self) -> CallToolResult {
        self.call(Request::StopMcpTool, None).await
    }

    #[tool(
        description = "Show the last lines of a project's OpenCode log, or of the manager's own log when no project is given.",
        output_schema = reply_schema(),
        annotations(title = "Read logs", read_only_hint = true, open_world_hint = false)
    )]
    async fn opencode_logs(&self, Parameters(p): Parameters<LogsParams>) -> CallToolResult {
        self.call(
            Request::Logs {
                project_name: p.project_name,
                lines: p.lines,
            },
            None,
        )
        .await
    }
}

impl McpServer {
    /// Sends one request to the daemon, forwarding its progress as MCP progress notifications when
    /// the caller asked for them.
    async fn call(
        &self,
        request: Request,
        ctx: Option<RequestContext<RoleServer>>,
    ) -> CallToolResult {
        let envelope = Envelope {
            request,
            caller: self.caller.clone(),
        };
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forward =
            ctx.and_then(|ctx| ctx.meta.get_progress_token().map(|token| (token, ctx.peer)));
        let forwarder = tokio::spawn(async move {
            let mut step = 0u32;
            while let Some(message) = receiver.recv().await {
                step += 1;
                if let Some((token, peer)) = &forward {
                    let param = ProgressNotificationParam::new(token.clone(), f64::from(step))
                        .with_message(message);
                    let _ = peer.notify_progress(param).await;
                }
            }
        });
        let reply = crate::daemon::client::ask(&self.paths, &envelope, |step| {
            let _ = sender.send(step.to_owned());
        })
        .await;
        drop(sender);
        let _ = forwarder.await;
        to_result(&reply)
    }
}

/// The tool result for a reply.
pub(crate) fn to_result(reply: &Reply) -> CallToolResult {
    let structured = serde_json::to_value(reply).unwrap_or_default();
    let content = vec![
        ContentBlock::text(human_text(reply)),
        ContentBlock::text(structured.to_string()),
    ];
    let mut result = if reply.status() == Status::Error {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content = Some(structured);
    result
}

/// A short human summary in the style of the original README's examples.
pub(crate) fn human_text(reply: &Reply) -> String {
    let status = serde_json::to_value(reply.status())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut text = format!("Status: {status}");
    if let Some(code) = reply
        .error
        .and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
    {
        text.push_str(&format!(" ({code})"));
    }
    if let Some(message) = &reply.message {
        text.push_str(&format!("\n\n{message}"));
    }
    if let Some(url) = &reply.opencode_url {
        let pid = reply.opencode_pid.map_or("-".into(), |p| p.to_string());
        text.push_str(&format!("\n\nOpenCode: {url} (PID: {pid})"));
    }
    if let Some(hint) = &reply.hint {
        text.push_str(&format!("\n\nNext: {hint}"));
    }
    if let Some(warning) = &reply.warning {
        text.push_str(&format!("\n\nWarning: {warning}"));
    }
    text
}

/// A tool that does nothing but answer, served only in test-support builds: the baseline that
/// `examples/bench_mcp.rs` compares the real tools against.
#[cfg(feature = "test-support")]
#[rmcp::tool_router(router = bench_router, vis = "pub(crate)")]
impl McpServer {
    #[tool(description = "Benchmark baseline: answers at once without asking the daemon.")]
    async fn bench_echo(&self) -> CallToolResult {
        to_result(&Reply::new(Status::Success, "echo"))
    }
}
