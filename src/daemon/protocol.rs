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
    /// Asks the daemon who it is; answered with a `hello` frame.
    Ping,
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
