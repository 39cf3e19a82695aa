//! opencode-manager: runs many isolated OpenCode coding agents on one machine.
//!
//! A client (the CLI, or later an MCP client) sends an operation to the daemon over a Unix socket;
//! `ops` validates it and drives the Project's Sandbox, Deploy key, git clone and Instance; the
//! daemon owns the state file and every Instance process. Modules are listed in reading order; see
//! ARCHITECTURE.md for the map and the invariants.

pub mod cli;
pub mod daemon;
pub mod gateway;
pub mod mcp;
pub mod ops;

pub mod config;
pub mod error;
pub mod limits;
pub mod policy;
pub mod project;
pub mod project_env;
pub mod reply;
pub mod state;

pub mod deploy_key;
pub mod git;
pub mod instance;
pub mod sandbox;
pub mod supervisor;

pub mod atomic_file;
pub mod envfile;
pub mod front_door;
pub mod logs;
pub mod secrets;
pub mod timestamp;
pub mod trust;
