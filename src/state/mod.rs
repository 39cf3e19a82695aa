//! The persisted state of the manager: one record per Project (intent and facts), never handles.
//!
//! This module is pure data plus queries: it does no IO, reads no clock and draws no randomness.
//! `store` is the only code that reads or writes the state file; `migrate` turns the Python
//! original's v1.0 and v1.1 files into this shape. Types here are never sent to clients: replies
//! are built by hand in `ops::reply`.

pub(crate) mod migrate;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::agent::AgentKind;

/// The version written by this program. Files without a `version` field are the Python original's.
pub(crate) const STATE_VERSION: u32 = 2;

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectRecord>,
    /// The gateway (port 3005) as last recorded; `None` until it first starts.
    #[serde(default)]
    pub gateway: Option<GatewayRecord>,
    /// Per-project MCP tool processes recorded by the original's v1.0 (ports 5100+), kept so the
    /// gateway can stop them once it can prove they are those processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_mcp_tools: Vec<LegacyMcpTool>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            projects: BTreeMap::new(),
            gateway: None,
            legacy_mcp_tools: Vec::new(),
        }
    }
}

/// What is known about one Project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProjectRecord {
    pub project_name: String,
    pub sandbox_dir: PathBuf,
    pub git_url: String,
    #[serde(default)]
    pub ssh_key_path: Option<PathBuf>,
    /// The port this Project's Instance uses; kept across stops so it stays stable.
    #[serde(default)]
    pub port: Option<u16>,
    /// What the user last asked for. The daemon never starts a Project whose desire is `Stopped`.
    #[serde(default)]
    pub desired: Desired,
    pub instance: InstanceRecord,
    pub created_at: String,
    /// How the last launched Instance was confined (`landlock ABI 7`, `none (<reason>)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The agent it runs, chosen at its first start (absent: `opencode`, as the original's).
    #[serde(default, skip_serializing_if = "is_opencode")]
    pub agent: AgentKind,
}

fn is_opencode(kind: &AgentKind) -> bool {
    *kind == AgentKind::Opencode
}

/// The user's intent for a Project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Desired {
    Running,
    #[default]
    Stopped,
}

/// The identity of a process: a pid alone can be reused, the pair cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcIdentity {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when the process started.
    pub start_ticks: u64,
}

/// The recorded lifecycle of a Project's Instance. Each variant carries what is valid in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum InstanceRecord {
    /// No process; `last_exit` says how the previous one ended, when known.
    Stopped {
        #[serde(default)]
        last_exit: Option<String>,
    },
    /// Spawned, not yet ready. Recorded before waiting, so a daemon killed mid-start can adopt it.
    Starting {
        proc: ProcIdentity,
        launch_id: String,
        since: String,
    },
    /// Ready and serving on the Project's port.
    Running {
        proc: ProcIdentity,
        launch_id: String,
        started_at: String,
    },
    /// The last start failed, or the supervisor gave up; the reason is kept for `status`.
    Failed { error: String, at: String },
    /// Parked by the supervisor for lack of activity; the gateway starts it again on demand.
    Idle { since: String },
}

impl InstanceRecord {
    /// The process this record claims, if any.
    pub(crate) fn proc(&self) -> Option<(ProcIdentity, &str)> {
        match self {
            InstanceRecord::Starting {
                proc, launch_id, ..
            }
            | InstanceRecord::Running {
                proc, launch_id, ..
            } => Some((*proc, launch_id)),
            InstanceRecord::Stopped { .. }
            | InstanceRecord::Failed { .. }
            | InstanceRecord::Idle { .. } => None,
        }
    }

    /// The status word the original used for the nested `opencode.status` key.
    pub(crate) fn status_word(&self) -> &'static str {
        match self {
            InstanceRecord::Stopped { .. } => "stopped",
            InstanceRecord::Starting { .. } => "starting",
            InstanceRecord::Running { .. } => "running",
            InstanceRecord::Failed { .. } => "failed",
            InstanceRecord::Idle { .. } => "idle",
        }
    }
}

/// The gateway's recorded facts (filled in by the gateway; the core only carries it through).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GatewayRecord {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A v1.0 per-project MCP tool process found in a migrated state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LegacyMcpTool {
    pub project_name: String,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl State {
    /// Ports recorded for Projects other than `except`: a new Project never takes one of these.
    pub(crate) fn reserved_ports(&self, except: &str) -> Vec<u16> {
        self.projects
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .filter_map(|(_, r)| r.port)
            .collect()
    }
}
