//! opencode-manager: runs many isolated OpenCode coding agents on one machine.
//!
//! A client (the CLI, or an MCP client through `serve`) sends an operation to the daemon over a
//! Unix socket; `ops` validates it and prepares the Project's Sandbox, Deploy key and clone, and
//! the `supervisor` (one actor) launches, watches and ends its Instance through `lifecycle`,
//! publishing a `snapshot` that every reader uses; the `gateway` serves every Project's sessions
//! over MCP. Modules are listed from the doors down to the leaves, and each uses only modules
//! below it (`tests/it/tidy.rs` checks); see ARCHITECTURE.md for the map and the invariants.

pub mod cli;
pub(crate) mod mcp;
pub(crate) mod acp_bridge;
pub(crate) mod daemon;
pub(crate) mod gateway;
pub(crate) mod dashboard;
pub(crate) mod dispatch;
pub(crate) mod protocol;

pub(crate) mod ops;
pub(crate) mod supervisor;

pub(crate) mod lifecycle;

pub(crate) mod deploy_key;
pub(crate) mod git;
pub mod sandbox;
pub mod instance;
pub(crate) mod env_cache;
pub(crate) mod project_env;
pub(crate) mod metrics;
pub(crate) mod snapshot;
pub(crate) mod state;

pub(crate) mod trust;
pub mod config;
pub(crate) mod limits;
pub(crate) mod policy;
pub mod project;
pub(crate) mod agent;
pub(crate) mod reply;
pub(crate) mod error;
pub(crate) mod front_door;
pub(crate) mod audit;
pub(crate) mod clients;

pub(crate) mod atomic_file;
pub(crate) mod envfile;
pub(crate) mod fs_watch;
pub(crate) mod logs;
pub(crate) mod secrets;
pub(crate) mod timestamp;

/// This program's version, which clients and the daemon compare before anything else. A
/// `test-support` build takes `OCM_TEST_VERSION` instead, so a test can play another version.
pub(crate) fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        #[cfg(feature = "test-support")]
        if let Some(version) = std::env::var("OCM_TEST_VERSION")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return version;
        }
        env!("CARGO_PKG_VERSION").to_owned()
    })
}
