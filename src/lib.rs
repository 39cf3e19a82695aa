//! opencode-manager: runs many isolated OpenCode coding agents on one machine.
//!
//! A client (the CLI, or an MCP client through `serve`) sends an operation to the daemon over a
//! Unix socket; `ops` validates it and prepares the Project's Sandbox, Deploy key and clone, and
//! the `supervisor` (one actor) launches, watches and ends its Instance through `lifecycle`,
//! publishing a `snapshot` that every reader uses; the `gateway` serves every Project's sessions
//! over MCP. Modules are listed from the doors down to the leaves; see ARCHITECTURE.md for the map
//! and the invariants.

pub mod cli;
pub mod daemon;
pub mod gateway;
pub mod mcp;

pub mod ops;
pub mod supervisor;

pub mod lifecycle;

pub mod deploy_key;
pub mod env_cache;
pub mod git;
pub mod instance;
pub mod project_env;
pub mod sandbox;
pub mod state;

pub mod config;
pub mod error;
pub mod front_door;
pub mod limits;
pub mod policy;
pub mod project;
pub mod reply;
pub mod snapshot;

pub mod atomic_file;
pub mod envfile;
pub mod fs_watch;
pub mod logs;
pub mod secrets;
pub mod timestamp;
pub mod trust;
