//! Agent kinds: which coding agent a Project runs, and what each kind needs to be found, launched
//! and given its provider settings. Pure values: no IO.
//!
//! `opencode` is `opencode serve`, reached over its own HTTP API. Every other kind speaks the Agent
//! Client Protocol (ACP, JSON-RPC over its stdio) and runs under the manager's ACP bridge
//! (`acp_bridge`), which serves the same HTTP API, so launch, supervision, isolation and the
//! Gateway treat every kind alike. The kind is chosen at a Project's first start and kept.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, OpError};

/// The OpenCode this manager installs when it finds none (`opencode-ai` on npm).
pub(crate) const OPENCODE_VERSION: &str = "1.18.33";

/// The agent a Project runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AgentKind {
    /// `opencode serve` (the original's only kind).
    #[default]
    Opencode,
    /// Gemini CLI in ACP mode (`gemini --acp`).
    Gemini,
    /// OpenCode in ACP mode (`opencode acp`).
    OpencodeAcp,
    /// Claude Code through its ACP adapter.
    Claude,
    /// Codex through its ACP adapter.
    Codex,
    /// Any ACP agent: `AGENT_COMMAND` in the Project's `.env`.
    Custom,
}

/// Where a kind's program comes from when no `*_BIN` names it and `PATH` has none: an npm
/// package, pinned, installed into the manager's runtime directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// The program the package puts in `node_modules/.bin`.
    pub bin: &'static str,
}

impl AgentKind {
    pub(crate) const ALL: [AgentKind; 6] = [
        AgentKind::Opencode,
        AgentKind::Gemini,
        AgentKind::OpencodeAcp,
        AgentKind::Claude,
        AgentKind::Codex,
        AgentKind::Custom,
    ];

    /// A kind by its name (`opencode`, `gemini`, `opencode-acp`, `claude`, `codex`, `custom`).
    pub(crate) fn parse(raw: &str) -> Result<AgentKind, OpError> {
        AgentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == raw.trim())
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::InvalidRequest,
                    format!("{raw:?} is not an agent kind this manager knows"),
                    format!("use one of: {}", AgentKind::names().join(", ")),
                )
            })
    }

    pub(crate) fn names() -> Vec<&'static str> {
        AgentKind::ALL.iter().map(|k| k.as_str()).collect()
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AgentKind::Opencode => "opencode",
            AgentKind::Gemini => "gemini",
            AgentKind::OpencodeAcp => "opencode-acp",
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
            AgentKind::Custom => "custom",
        }
    }

    /// The memory an Instance of this kind is counted for before it is measured: about what
    /// `bench_agents` measured idle, rounded up (bridge and agent together).
    pub(crate) fn estimated_memory(self) -> u64 {
        const MIB: u64 = 1024 * 1024;
        match self {
            AgentKind::Opencode | AgentKind::OpencodeAcp | AgentKind::Custom => 576 * MIB,
            AgentKind::Gemini => 320 * MIB,
            AgentKind::Claude => 352 * MIB,
            AgentKind::Codex => 128 * MIB,
        }
    }

    /// Whether the kind speaks ACP (and so runs under the bridge).
    pub(crate) fn is_acp(self) -> bool {
        self != AgentKind::Opencode
    }

    /// The variable (in the Project's `.env`, or the daemon's environment) and config key that
    /// name the program; `None` for `custom`, whose `AGENT_COMMAND` is the whole command.
    pub(crate) fn bin_var(self) -> Option<&'static str> {
        match self {
            AgentKind::Opencode | AgentKind::OpencodeAcp => Some("OPENCODE_BIN"),
            AgentKind::Gemini => Some("GEMINI_BIN"),
            AgentKind::Claude => Some("CLAUDE_BIN"),
            AgentKind::Codex => Some("CODEX_BIN"),
            AgentKind::Custom => None,
        }
    }

    /// The pinned npm package of the kind's program, where there is one.
    pub(crate) fn package(self) -> Option<Package> {
        match self {
            AgentKind::Opencode | AgentKind::OpencodeAcp => Some(Package {
                name: "opencode-ai",
                version: OPENCODE_VERSION,
                bin: "opencode",
            }),
            AgentKind::Gemini => Some(Package {
                name: "@google/gemini-cli",
                version: "0.61.0",
                bin: "gemini",
            }),
            AgentKind::Claude => Some(Package {
                name: "@zed-industries/claude-code-acp",
                version: "0.16.2",
                bin: "claude-code-acp",
            }),
            AgentKind::Codex => Some(Package {
                name: "@zed-industries/codex-acp",
                version: "0.16.0",
                bin: "codex-acp",
            }),
            AgentKind::Custom => None,
        }
    }

    /// The arguments that start the program as an ACP agent working in `cwd`.
    pub(crate) fn acp_args(self, cwd: &str) -> Vec<String> {
        match self {
            AgentKind::Gemini => vec!["--acp".into()],
            AgentKind::OpencodeAcp => vec!["acp".into(), "--cwd".into(), cwd.into()],
            AgentKind::Opencode | AgentKind::Claude | AgentKind::Codex | AgentKind::Custom => {
                Vec::new()
            }
        }
    }

    /// Variables the manager sets for this kind's agent, after the `.env`'s (which may not
    /// override them): each kind's own switches for running unattended in a sandbox.
    pub(crate) fn fixed_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Claude Code refuses to run as root outside a sandbox; the Sandbox is one.
            AgentKind::Claude => &[
                ("IS_SANDBOX", "1"),
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("DISABLE_ERROR_REPORTING", "1"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ],
            // One process (it otherwise relaunches itself into a child that outlives a SIGKILL of
            // the parent), and no usage reports.
            AgentKind::Gemini => &[
                ("GEMINI_CLI_NO_RELAUNCH", "true"),
                ("GEMINI_TELEMETRY_ENABLED", "false"),
            ],
            AgentKind::Opencode | AgentKind::OpencodeAcp | AgentKind::Codex | AgentKind::Custom => {
                &[]
            }
        }
    }
}

/// Files a kind's agent needs in its HOME before its first start, when absent: (path under
/// HOME, contents). Gemini CLI: API-key auth (no interactive login), no update checks, no
/// usage statistics, no folder-trust prompt.
pub(crate) fn home_seed(kind: AgentKind) -> Option<(&'static str, &'static str)> {
    match kind {
        AgentKind::Gemini => Some((
            ".gemini/settings.json",
            r#"{"security":{"auth":{"selectedType":"gemini-api-key"},"folderTrust":{"enabled":false}},"general":{"enableAutoUpdate":false,"enableAutoUpdateNotification":false},"privacy":{"usageStatisticsEnabled":false},"telemetry":{"enabled":false}}"#,
        )),
        _ => None,
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a `.env` key is a provider setting of some agent kind (passed to the agent): API
/// keys and endpoints, and the variables each kind reads for its model and behaviour.
pub(crate) fn is_provider_var(key: &str) -> bool {
    key.ends_with("_API_KEY")
        || key.ends_with("_BASE_URL")
        || [
            "AWS_",
            "AZURE_",
            "GOOGLE_",
            "VERTEX_",
            "OPENCODE_",
            "GEMINI_",
            "ANTHROPIC_",
            "CLAUDE_",
            "OPENAI_",
            "CODEX_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_and_print_the_same_names() {
        for kind in AgentKind::ALL {
            assert_eq!(AgentKind::parse(kind.as_str()).expect("kind"), kind);
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::from(kind.as_str())
            );
        }
        let err = AgentKind::parse("vim").expect_err("unknown");
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.hint.contains("gemini, opencode-acp"), "{}", err.hint);
    }

    #[test]
    fn only_opencode_serve_is_not_acp_and_every_packaged_kind_is_pinned() {
        assert!(!AgentKind::Opencode.is_acp());
        for kind in AgentKind::ALL.into_iter().filter(|k| k.is_acp()) {
            assert!(kind.bin_var().is_some() || kind == AgentKind::Custom);
        }
        for package in AgentKind::ALL.into_iter().filter_map(AgentKind::package) {
            assert!(
                package
                    .version
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.')
            );
        }
        assert_eq!(
            AgentKind::OpencodeAcp.acp_args("/r"),
            ["acp", "--cwd", "/r"]
        );
    }

    #[test]
    fn provider_settings_of_every_kind_reach_the_agent() {
        for key in [
            "GEMINI_API_KEY",
            "GOOGLE_GEMINI_BASE_URL",
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_MODEL",
            "OPENAI_API_KEY",
            "CODEX_HOME",
            "OPENCODE_CONFIG_CONTENT",
        ] {
            assert!(is_provider_var(key), "{key}");
        }
        for key in [
            "PATH",
            "MCP_TOOL_BEARER_TOKEN",
            "AGENT_COMMAND",
            "SSH_KEY_PATH",
        ] {
            assert!(!is_provider_var(key), "{key}");
        }
    }
}
