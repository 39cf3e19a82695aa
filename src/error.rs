//! Error codes and the error every operation returns. A leaf: it imports nothing of this crate.
//!
//! Each failure carries its [`ErrorCode`] from where it is found; nothing parses a code back from
//! text. The reply a client sees is built from an [`OpError`] at the edge (`reply`).

use serde::{Deserialize, Serialize};

/// Stable error codes (`error` key), each with a documented meaning in docs/tools.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidProjectName,
    InvalidGitUrl,
    InvalidConfig,
    InvalidSshKey,
    GitUnreachable,
    CloneFailed,
    OpencodeNotFound,
    PortUnavailable,
    OpencodeStartFailed,
    OpencodeUnhealthy,
    UnsavedWork,
    StateCorrupt,
    DaemonUnavailable,
    GatewayNotRunning,
    NoActiveProjects,
    OverBudget,
    // Plain comments, not docs: documented variants would turn the schema's enum into a `oneOf`.
    // The home, a directory under it or its config could have been written by another user.
    HomeUnsafe,
    // A `.env` file over 64 KiB.
    EnvTooLarge,
    // `isolation = "required"` and the Instance cannot be confined.
    IsolationUnavailable,
    // The agent program is a major version this manager cannot drive (OpenCode 2).
    OpencodeUnsupported,
    // The agent program lies where another user could have replaced it.
    OpencodeUntrusted,
    // A connection to the daemon without its token (from inside a Sandbox, say).
    Unauthorized,
    // The daemon runs a newer version than the client.
    VersionMismatch,
    // The dashboard is turned off or could not listen.
    DashboardUnavailable,
    // A request's argument is not one of the values it accepts.
    InvalidRequest,
    // The operation needs the Project's Instance running, and it is not.
    ProjectNotRunning,
    // A start asked for another agent kind than the Project's.
    AgentMismatch,
    // The program of a Project's agent kind cannot be found or installed.
    AgentNotFound,
    Internal,
}

impl ErrorCode {
    /// Whether the user gave bad input (CLI exit code 2).
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidProjectName
                | ErrorCode::InvalidGitUrl
                | ErrorCode::InvalidConfig
                | ErrorCode::InvalidSshKey
                | ErrorCode::InvalidRequest
                | ErrorCode::AgentMismatch
        )
    }
}

/// Why an operation failed: a stable code, a message naming the object, what to do next, and
/// what else a client needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
    pub hint: String,
    pub details: Details,
}

/// What an error may carry besides its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    pub project: Option<String>,
    /// The `.env` the error is about.
    pub env_path: Option<String>,
    /// The end of a log (a launch that failed after the process started).
    pub lines: Option<Vec<String>>,
    /// What `destroy` would lose.
    pub items: Option<Vec<String>>,
    /// Gateway errors: the projects running.
    pub active_projects: Option<usize>,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            hint: hint.into(),
            details: Details::default(),
        }
    }

    /// An unexpected failure; the message names what was being done.
    pub fn internal(message: impl Into<String>) -> OpError {
        OpError::new(ErrorCode::Internal, message, "see manager.log")
    }

    pub fn for_project(mut self, project: &str) -> OpError {
        self.details.project = Some(project.to_owned());
        self
    }

    pub fn with_env_path(mut self, path: impl Into<String>) -> OpError {
        self.details.env_path = Some(path.into());
        self
    }

    pub fn with_lines(mut self, lines: Vec<String>) -> OpError {
        self.details.lines = Some(lines);
        self
    }

    pub fn with_items(mut self, items: Vec<String>) -> OpError {
        self.details.items = Some(items);
        self
    }
}
