//! The messages between a client and the daemon over the Unix socket: one JSON request line from
//! the client, then zero or more progress lines and one reply line from the daemon.
//!
//! These are wire types: internal state never appears here, only operation arguments and
//! [`Reply`] objects.

use serde::{Deserialize, Serialize};

use crate::ops::CallerSettings;
use crate::ops::start::StartArgs;
use crate::reply::Reply;

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Start(StartArgs),
    Status {
        project_name: String,
    },
    Stop {
        project_name: String,
    },
    StopAll,
    Restart {
        project_name: String,
    },
    Destroy {
        project_name: String,
        #[serde(default)]
        force: bool,
    },
    List,
    Logs {
        #[serde(default)]
        project_name: Option<String>,
        #[serde(default)]
        lines: Option<usize>,
    },
    Doctor,
    McpStatus,
    McpRestart,
    StopMcpTool,
    /// The audit log, filtered.
    Audit {
        #[serde(default)]
        project_name: Option<String>,
        /// RFC 3339: only entries at or after it.
        #[serde(default)]
        since: Option<String>,
    },
    /// A one-time login URL for the dashboard.
    DashboardLogin,
    /// Asks the daemon who it is; answered with a `hello` frame.
    Ping,
}

impl Request {
    /// The action and Project an audited request is, `None` for one that changes nothing.
    pub(crate) fn audited(&self) -> Option<(&'static str, Option<&str>)> {
        match self {
            Request::Start(args) => Some(("start", Some(args.project_name.as_str()))),
            Request::Stop { project_name } => Some(("stop", Some(project_name))),
            Request::StopAll => Some(("stop_all", None)),
            Request::Restart { project_name } => Some(("restart", Some(project_name))),
            Request::Destroy { project_name, .. } => Some(("destroy", Some(project_name))),
            Request::McpRestart => Some(("mcp_restart", None)),
            Request::StopMcpTool => Some(("stop_mcp_tool", None)),
            Request::Status { .. }
            | Request::List
            | Request::Logs { .. }
            | Request::Doctor
            | Request::McpStatus
            | Request::Audit { .. }
            | Request::DashboardLogin
            | Request::Ping => None,
        }
    }
}

/// A request with the caller's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub request: Request,
    #[serde(default)]
    pub caller: CallerSettings,
}

/// What the daemon sends back, one per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Frame {
    Progress(String),
    Reply(Box<Reply>),
    Hello {
        version: String,
        pid: u32,
        gateway_port: u16,
    },
    /// The daemon runs another version than the client's; nothing was done.
    Mismatch {
        version: String,
        pid: u32,
    },
}
