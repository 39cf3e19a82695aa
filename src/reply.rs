//! The reply object: the contract shared by the CLI's `--json`, the daemon socket and the MCP tools.
//!
//! It keeps the Python original's keys and status words so existing prompts keep working, and adds
//! typed fields. It is built by hand from state and observations; no state type is serialised into
//! it, and no [`crate::secrets::Secret`] can be placed in it (there is no field of that type).

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, OpError};

/// The status vocabulary of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Success,
    /// `status` answers `ok`, as the original did.
    Ok,
    /// `mcp_status`: the gateway is serving.
    Running,
    /// `mcp_status`: the gateway was started before and is not serving now.
    Stopped,
    /// `mcp_status`: the gateway has never been started.
    NotStarted,
    AlreadyRunning,
    WaitingForKey,
    WaitingForPasswords,
    NotFound,
    Error,
}

/// The original's nested `opencode` object in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct OpencodeInfo {
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub status: String,
    pub running: bool,
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct ProjectSummary {
    pub name: String,
    /// The agent kind (`opencode`, `gemini`, …).
    pub agent: String,
    pub status: String,
    pub opencode_running: bool,
    pub opencode_port: Option<u16>,
    pub opencode_pid: Option<i32>,
    pub sandbox_dir: String,
}

/// Which model provider an Instance will use (`GET /config/providers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct ProviderReport {
    /// Configured, usable provider ids; empty means prompts will fail.
    pub providers: Vec<String>,
    /// The default `provider/model`, when OpenCode has one.
    pub model: Option<String>,
}

/// A reply: `status` plus the fields that apply. Absent fields are omitted from the JSON.
/// Success and error replies share this one shape, so error results conform to the declared
/// output schema too.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Reply {
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opencode_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opencode_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opencode_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opencode: Option<OpencodeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_health_check: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<ProjectSummary>>,
    /// What `destroy` refused to delete, or what `stop --all` stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `audit`: the audited calls, oldest first (CLI only: no MCP tool returns it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub entries: Option<Vec<crate::audit::Entry>>,
    /// `dashboard`: the one-time login URL (CLI only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    /// Gateway (`mcp_status`): the pid of the process serving the gateway port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Gateway (`mcp_status`): its port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Gateway (`mcp_status`): running Projects, counted from live Instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_projects: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// `status`: sessions that were busy when the Instance last crashed or was recycled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_sessions: Option<Vec<String>>,
    /// `status`: how many times the supervisor restarted the Instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// `status`, `start`: the agent kind the Project runs (`opencode`, `gemini`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `status`: how the Instance is confined (`landlock ABI 7`, or `none (<reason>)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// `status`: resident memory of the Instance's main process, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Reply {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Reply {
        Reply {
            status: Some(status),
            message: Some(message.into()),
            ..Reply::default()
        }
    }

    pub(crate) fn error(
        code: ErrorCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Reply {
        Reply {
            status: Some(Status::Error),
            error: Some(code),
            message: Some(message.into()),
            hint: Some(hint.into()),
            ..Reply::default()
        }
    }

    pub(crate) fn not_found(project: &str, known: &[String]) -> Reply {
        let hint = if known.is_empty() {
            "no projects exist yet; create one with opencode_start".to_owned()
        } else {
            format!("known projects: {}", known.join(", "))
        };
        Reply {
            project: Some(project.to_owned()),
            hint: Some(hint),
            ..Reply::new(Status::NotFound, format!("Project {project} not found"))
        }
    }

    pub(crate) fn with_project(mut self, project: &str) -> Reply {
        self.project = Some(project.to_owned());
        self
    }

    /// Appends a warning line (warnings accumulate, one per line).
    pub(crate) fn warn(mut self, warning: impl Into<String>) -> Reply {
        let warning = warning.into();
        self.warning = Some(match self.warning.take() {
            Some(previous) => format!("{previous}\n{warning}"),
            None => warning,
        });
        self
    }

    pub(crate) fn status(&self) -> Status {
        self.status.unwrap_or(Status::Error)
    }

    /// The CLI exit code: 0 done, 3 the user must act, 2 invalid input, 1 any other failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.status() {
            Status::Success
            | Status::Ok
            | Status::AlreadyRunning
            | Status::Running
            | Status::Stopped
            | Status::NotStarted => 0,
            Status::WaitingForKey | Status::WaitingForPasswords => 3,
            Status::NotFound => 1,
            Status::Error => match self.error {
                Some(code) if code.is_invalid_input() => 2,
                _ => 1,
            },
        }
    }
}

impl From<OpError> for Reply {
    fn from(err: OpError) -> Reply {
        let details = err.details;
        Reply {
            project: details.project,
            env_path: details.env_path,
            lines: details.lines,
            items: details.items,
            active_projects: details.active_projects,
            ..Reply::error(err.code, err.message, err.hint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Reply::new(Status::Success, "").exit_code(), 0);
        assert_eq!(Reply::new(Status::AlreadyRunning, "").exit_code(), 0);
        assert_eq!(Reply::new(Status::WaitingForKey, "").exit_code(), 3);
        assert_eq!(Reply::new(Status::WaitingForPasswords, "").exit_code(), 3);
        assert_eq!(
            Reply::error(ErrorCode::InvalidGitUrl, "", "").exit_code(),
            2
        );
        assert_eq!(Reply::error(ErrorCode::CloneFailed, "", "").exit_code(), 1);
        assert_eq!(Reply::not_found("x", &[]).exit_code(), 1);
    }

    #[test]
    fn absent_fields_are_omitted_and_codes_are_snake_case() {
        let json = serde_json::to_value(Reply::error(ErrorCode::OpencodeNotFound, "m", "h"))
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"status":"error","error":"opencode_not_found","message":"m","hint":"h"})
        );
    }
}
