//! The gateway's MCP tools: the Node opencode-mcp-tool's session tools, with the same names and
//! parameters, plus the async-prompt and permission tools an assistant needs for long turns.
//!
//! Each tool resolves `server` (a Project name) within the caller's token scope, then makes one
//! call to that Instance's HTTP API (the session list may be the one `session_lists` kept).
//! Results are the Node tool's: the JSON as text, or `isError: true` with
//! `Error executing <tool>: <message>`. OpenCode passwords never leave here.

use std::time::Duration;

use reqwest::Method;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

use super::params::{
    CreateParams, MessageParams, MessagesParams, ReplyParams, ServerParams, SessionParams,
    StatusParams,
};
use super::results::{assistant_text, checked_id, fail, json_result, text_result, turn_error};
use super::route::Target;
use super::session_lists::{Listed, SessionLists};
use crate::audit::{Caller, Door};
use crate::front_door::Scope;
use crate::ops::Manager;

/// How long a synchronous prompt may take (provider retries alone can take a minute).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(600);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's MCP server; one per HTTP session or stateless request.
#[derive(Clone)]
pub(crate) struct GatewayServer {
    manager: Manager,
    lists: std::sync::Arc<SessionLists>,
    tool_router: std::sync::Arc<ToolRouter<GatewayServer>>,
}

impl GatewayServer {
    /// One per session, or per request for stateless clients: the router (its tools' schemas and
    /// name checks) is built once and shared.
    pub(crate) fn new(manager: Manager, lists: std::sync::Arc<SessionLists>) -> GatewayServer {
        static ROUTER: std::sync::OnceLock<std::sync::Arc<ToolRouter<GatewayServer>>> =
            std::sync::OnceLock::new();
        let router = ROUTER.get_or_init(|| std::sync::Arc::new(GatewayServer::tool_router()));
        GatewayServer {
            manager,
            lists,
            tool_router: router.clone(),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GatewayServer {
    /// Runs the tool, then counts it (tool, outcome, latency) and, for a tool that changes
    /// something, records it in the audit log with the caller's scope. Never its arguments.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let since = std::time::Instant::now();
        // A name that is no tool of ours is counted as `unknown`, so callers cannot grow the
        // metrics' label set.
        let tool = if self.tool_router.has_route(&request.name) {
            request.name.to_string()
        } else {
            "unknown".to_owned()
        };
        let project = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("server"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let caller = match scope_of(&context) {
            Some(Scope::All) => Caller::GlobalToken,
            Some(Scope::Project(own)) => Caller::ProjectToken { project: own },
            None => Caller::Unknown,
        };
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let response = self.tool_router.call(tcc).await;
        let outcome = match &response {
            Ok(rmcp::model::CallToolResponse::Complete(result))
                if result.is_error == Some(true) =>
            {
                "error"
            }
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.manager
            .host()
            .metrics
            .tool_call(&tool, outcome, since.elapsed().as_secs_f64());
        if changes_state(&tool) {
            let project = project.or(match &caller {
                Caller::ProjectToken { project } => Some(project.clone()),
                _ => None,
            });
            // Its effect is in OpenCode now: a list kept from before it is not current.
            self.lists.changed(project.as_deref());
            self.manager.audit().record(
                Door::Gateway,
                caller,
                &tool,
                project.as_deref(),
                outcome,
                since,
            );
        }
        response
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("opencode-manager-gateway", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Coding sessions of every OpenCode project this manager runs. Pass `server` (the project name) \
                 to choose a project; without it, the only running project is used. Use opencode-session-create, \
                 then opencode-session-message (waits for the reply) or opencode-session-prompt-async with \
                 opencode-session-status and opencode-permission-list/-reply for long turns.",
            )
    }
}

#[tool_router(vis = "pub(crate)")]
impl GatewayServer {
    #[tool(
        name = "opencode-server-health",
        description = "Check health and status of the connected OpenCode server",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn server_health(
        &self,
        Parameters(p): Parameters<ServerParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.run(
            "opencode-server-health",
            p.server,
            &ctx,
            Method::GET,
            "/global/health".into(),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    #[tool(
        name = "opencode-session-create",
        description = "Create a new session on the OpenCode server",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn session_create(
        &self,
        Parameters(p): Parameters<CreateParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let body = match p.parent_id {
            Some(parent) => json!({ "parentID": parent }),
            None => json!({}),
        };
        self.run(
            "opencode-session-create",
            p.server,
            &ctx,
            Method::POST,
            "/session".into(),
            Some(body),
            CALL_TIMEOUT,
        )
        .await
    }

    #[tool(
        name = "opencode-session-list",
        description = "List all active sessions on the OpenCode server",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn session_list(
        &self,
        Parameters(p): Parameters<ServerParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        const TOOL: &str = "opencode-session-list";
        let Target {
            project,
            api,
            lease,
        } = match self.target(p.server, &ctx).await {
            Ok(target) => target,
            Err(message) => return fail(TOOL, &message),
        };
        let metrics = &self.manager.host().metrics;
        match self
            .lists
            .list(&project, lease.proc, &api, metrics, CALL_TIMEOUT)
            .await
        {
            Ok(Listed::Text(text)) => text_result(text.to_string()),
            Ok(Listed::Other(value)) => json_result(value),
            Err(err) => fail(TOOL, &super::route::explain(&project, &api, err).await),
        }
    }

    #[tool(
        name = "opencode-session-get",
        description = "Get details of a specific OpenCode session",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn session_get(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(id) = checked_id(&p.session_id) else {
            return fail("opencode-session-get", "sessionId must look like ses_…");
        };
        self.run(
            "opencode-session-get",
            p.server,
            &ctx,
            Method::GET,
            format!("/session/{id}"),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    #[tool(
        name = "opencode-session-delete",
        description = "Delete a session from the OpenCode server (abort it first if it is busy)",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn session_delete(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(id) = checked_id(&p.session_id) else {
            return fail("opencode-session-delete", "sessionId must look like ses_…");
        };
        let result = self
            .run(
                "opencode-session-delete",
                p.server,
                &ctx,
                Method::DELETE,
                format!("/session/{id}"),
                None,
                CALL_TIMEOUT,
            )
            .await;
        if result.is_error == Some(true) {
            return result;
        }
        text_result(format!("Session {id} deleted successfully"))
    }

    #[tool(
        name = "opencode-session-message",
        description = "Send a message to an OpenCode session and wait for the whole turn; returns the assistant's text and parts. Provider failures are reported as errors.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = true
        )
    )]
    async fn session_message(
        &self,
        Parameters(p): Parameters<MessageParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        const TOOL: &str = "opencode-session-message";
        let Some(id) = checked_id(&p.session_id) else {
            return fail(TOOL, "sessionId must look like ses_…");
        };
        let Target {
            project,
            api,
            lease: _call,
        } = match self.target(p.server, &ctx).await {
            Ok(target) => target,
            Err(message) => return fail(TOOL, &message),
        };
        let body = json!({ "parts": [{ "type": "text", "text": p.content }] });
        match api
            .call(
                Method::POST,
                &format!("/session/{id}/message"),
                Some(&body),
                MESSAGE_TIMEOUT,
            )
            .await
        {
            Ok(answer) => match turn_error(&answer) {
                Some(error) => fail(TOOL, &error),
                None => json_result(json!({
                    "text": assistant_text(&answer),
                    "info": answer.get("info").cloned().unwrap_or(Value::Null),
                    "parts": answer.get("parts").cloned().unwrap_or(Value::Null),
                })),
            },
            Err(err) => fail(TOOL, &super::route::explain(&project, &api, err).await),
        }
    }

    #[tool(
        name = "opencode-session-messages",
        description = "Get the messages of an OpenCode session (use limit: whole histories are large)",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn session_messages(
        &self,
        Parameters(p): Parameters<MessagesParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(id) = checked_id(&p.session_id) else {
            return fail(
                "opencode-session-messages",
                "sessionId must look like ses_…",
            );
        };
        let path = match p.limit {
            Some(limit) => format!("/session/{id}/message?limit={limit}"),
            None => format!("/session/{id}/message"),
        };
        self.run(
            "opencode-session-messages",
            p.server,
            &ctx,
            Method::GET,
            path,
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    #[tool(
        name = "opencode-session-prompt-async",
        description = "Send a message to an OpenCode session without waiting; follow it with opencode-session-status, opencode-permission-list and opencode-session-messages",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = true
        )
    )]
    async fn session_prompt_async(
        &self,
        Parameters(p): Parameters<MessageParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        const TOOL: &str = "opencode-session-prompt-async";
        let Some(id) = checked_id(&p.session_id) else {
            return fail(TOOL, "sessionId must look like ses_…");
        };
        let body = json!({ "parts": [{ "type": "text", "text": p.content }] });
        let result = self
            .run(
                TOOL,
                p.server,
                &ctx,
                Method::POST,
                format!("/session/{id}/prompt_async"),
                Some(body),
                CALL_TIMEOUT,
            )
            .await;
        if result.is_error == Some(true) {
            return result;
        }
        json_result(json!({ "sessionId": id, "status": "accepted" }))
    }

    #[tool(
        name = "opencode-session-status",
        description = "Whether a session is busy (working), retrying, or idle (its turn is over)",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn session_status(
        &self,
        Parameters(p): Parameters<StatusParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        const TOOL: &str = "opencode-session-status";
        let Target {
            project,
            api,
            lease: _call,
        } = match self.target(p.server, &ctx).await {
            Ok(target) => target,
            Err(message) => return fail(TOOL, &message),
        };
        let all = match api
            .call(Method::GET, "/session/status", None, CALL_TIMEOUT)
            .await
        {
            Ok(all) => all,
            Err(err) => return fail(TOOL, &super::route::explain(&project, &api, err).await),
        };
        match p.session_id {
            None => json_result(json!({ "sessions": all })),
            Some(id) => {
                let status = all
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| json!({ "type": "idle" }));
                json_result(json!({ "sessionId": id, "status": status }))
            }
        }
    }

    #[tool(
        name = "opencode-session-abort",
        description = "Stop the running turn of a session (its running tools are ended too)",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn session_abort(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(id) = checked_id(&p.session_id) else {
            return fail("opencode-session-abort", "sessionId must look like ses_…");
        };
        self.run(
            "opencode-session-abort",
            p.server,
            &ctx,
            Method::POST,
            format!("/session/{id}/abort"),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    #[tool(
        name = "opencode-permission-list",
        description = "Permission requests waiting for an answer (for example a bash command the agent wants to run)",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn permission_list(
        &self,
        Parameters(p): Parameters<StatusParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        const TOOL: &str = "opencode-permission-list";
        let Target {
            project,
            api,
            lease: _call,
        } = match self.target(p.server, &ctx).await {
            Ok(target) => target,
            Err(message) => return fail(TOOL, &message),
        };
        match api
            .call(Method::GET, "/permission", None, CALL_TIMEOUT)
            .await
        {
            Ok(Value::Array(items)) => {
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|item| {
                        p.session_id.as_deref().is_none_or(|id| {
                            item.get("sessionID").and_then(Value::as_str) == Some(id)
                        })
                    })
                    .collect();
                json_result(json!({ "permissions": items }))
            }
            Ok(other) => json_result(json!({ "permissions": other })),
            Err(err) => fail(TOOL, &super::route::explain(&project, &api, err).await),
        }
    }

    #[tool(
        name = "opencode-permission-reply",
        description = "Answer a permission request: once, always or reject",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn permission_reply(
        &self,
        Parameters(p): Parameters<ReplyParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(id) = checked_id(&p.permission_id) else {
            return fail(
                "opencode-permission-reply",
                "permissionId must look like per_…",
            );
        };
        let mut body = json!({ "reply": p.reply });
        if let Some(message) = p.message {
            body["message"] = Value::String(message);
        }
        self.run(
            "opencode-permission-reply",
            p.server,
            &ctx,
            Method::POST,
            format!("/permission/{id}/reply"),
            Some(body),
            CALL_TIMEOUT,
        )
        .await
    }
}

impl GatewayServer {
    /// Resolves the Project and calls its Instance once.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        tool: &str,
        server: Option<String>,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: String,
        body: Option<Value>,
        timeout: Duration,
    ) -> CallToolResult {
        let Target {
            project,
            api,
            lease: _call,
        } = match self.target(server, ctx).await {
            Ok(target) => target,
            Err(message) => return fail(tool, &message),
        };
        match api.call(method, &path, body.as_ref(), timeout).await {
            Ok(value) => json_result(value),
            Err(err) => fail(tool, &super::route::explain(&project, &api, err).await),
        }
    }

    /// The Project a call is for, and a client for its Instance (see `route`).
    async fn target(
        &self,
        server: Option<String>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Target, String> {
        // The auth layer always sets the scope; without it nothing is reachable.
        let scope =
            scope_of(ctx).ok_or_else(|| "this request carries no credentials".to_owned())?;
        super::route::target(&self.manager, &scope, server).await
    }
}

/// The scope the front door found for the request's token.
fn scope_of(ctx: &RequestContext<RoleServer>) -> Option<Scope> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Scope>().cloned())
}

/// Whether a tool changes something (and so is audited).
fn changes_state(tool: &str) -> bool {
    matches!(
        tool,
        "opencode-session-create"
            | "opencode-session-delete"
            | "opencode-session-message"
            | "opencode-session-prompt-async"
            | "opencode-session-abort"
            | "opencode-permission-reply"
    )
}
