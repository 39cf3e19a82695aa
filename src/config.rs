//! Where files live ([`Paths`]) and the daemon-wide settings ([`Config`]), read once at start.
//!
//! Precedence: flags > environment > `<home>/opencode-manager.toml` > defaults. This module only
//! reads; it creates no directory and writes no file (that is `sandbox` and `state::store`).
//! Per-call settings (the caller's `ENVIRONMENT`) are not here: they travel with each request.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::project::{ProjectName, UrlPolicy};

/// The pinned OpenCode version the manager installs when none is found.
pub const OPENCODE_VERSION: &str = crate::agent::OPENCODE_VERSION;

/// Every path under the manager home, in the original's layout (README "File Structure").
#[derive(Debug, Clone)]
pub struct Paths {
    home: PathBuf,
}

impl Paths {
    pub fn new(home: PathBuf) -> Paths {
        Paths { home }
    }

    /// `$OPENCODE_MANAGER_HOME`, else `~/.memory` (the original's home).
    pub fn from_env() -> anyhow::Result<Paths> {
        if let Some(home) = std::env::var_os("OPENCODE_MANAGER_HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            if !home.is_absolute() {
                bail!(
                    "OPENCODE_MANAGER_HOME must be an absolute path, got {}",
                    home.display()
                );
            }
            return Ok(Paths::new(home));
        }
        let user_home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("HOME is not set")?;
        Ok(Paths::new(PathBuf::from(user_home).join(".memory")))
    }

    pub fn home(&self) -> &Path {
        &self.home
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.home.join("opencode-sandboxes")
    }
    pub fn sandbox(&self, project: &ProjectName) -> PathBuf {
        self.sandboxes_dir().join(project.as_str())
    }
    pub fn env_file(&self, project: &ProjectName) -> PathBuf {
        self.sandbox(project).join(".env")
    }
    pub fn repo_dir(&self, project: &ProjectName) -> PathBuf {
        self.sandbox(project).join("repo")
    }
    pub fn pid_file(&self, project: &ProjectName) -> PathBuf {
        self.sandbox(project).join("opencode.pid")
    }
    /// The Instance's private HOME, XDG and TMPDIR roots.
    pub fn instance_dir(&self, project: &ProjectName) -> PathBuf {
        self.sandbox(project).join("instance")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.home.join("opencode-keys")
    }
    pub fn deploy_key(&self, project: &ProjectName) -> PathBuf {
        self.keys_dir().join(format!("{project}-deploy"))
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("opencode-logs")
    }
    pub fn project_log(&self, project: &ProjectName) -> PathBuf {
        self.logs_dir().join(format!("{project}-opencode.log"))
    }
    pub fn manager_log(&self) -> PathBuf {
        self.logs_dir().join("manager.log")
    }
    /// One JSON line per state-changing call.
    pub fn audit_log(&self) -> PathBuf {
        self.logs_dir().join("audit.log")
    }
    pub fn gateway_log(&self) -> PathBuf {
        self.logs_dir().join("global-mcp-tool.log")
    }
    pub fn state_file(&self) -> PathBuf {
        self.home.join("opencode-state.json")
    }
    pub fn state_lock(&self) -> PathBuf {
        self.home.join("opencode-state.lock")
    }
    pub fn servers_config(&self) -> PathBuf {
        self.home.join("opencode-mcp-tool-servers.json")
    }
    /// The gateway's global bearer token, when `GLOBAL_MCP_BEARER_TOKEN` is not set.
    pub fn global_token_file(&self) -> PathBuf {
        self.home.join("global-mcp-token")
    }
    pub fn gateway_pid_file(&self) -> PathBuf {
        self.home.join("global-mcp-tool.pid")
    }
    pub fn config_file(&self) -> PathBuf {
        self.home.join("opencode-manager.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.home.join("opencode-manager.sock")
    }
    pub fn daemon_lock(&self) -> PathBuf {
        self.home.join("opencode-manager.lock")
    }
    /// The token every connection to the socket starts with (0600; unreadable from a Sandbox).
    pub fn daemon_token(&self) -> PathBuf {
        self.home.join("opencode-manager.token")
    }
    /// The manager's own known_hosts, so git over SSH never touches the user's.
    pub fn known_hosts(&self) -> PathBuf {
        self.home.join("known_hosts")
    }
    /// The manager-wide OpenCode config passed to every Instance as `OPENCODE_CONFIG`, when present.
    pub fn opencode_config(&self) -> PathBuf {
        self.home.join("opencode-config.json")
    }
    /// Where the manager installs its own copy of OpenCode when none is found.
    pub fn runtime_dir(&self) -> PathBuf {
        self.home.join("opencode-runtime")
    }
    /// A program of the managed npm packages (`node_modules/.bin/<bin>`).
    pub fn managed_bin(&self, bin: &str) -> PathBuf {
        self.runtime_dir()
            .join("node_modules")
            .join(".bin")
            .join(bin)
    }
    pub fn managed_opencode(&self) -> PathBuf {
        self.runtime_dir()
            .join("node_modules")
            .join(".bin")
            .join("opencode")
    }
}

/// The optional TOML file; every key may be absent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    opencode_bin: Option<PathBuf>,
    gemini_bin: Option<PathBuf>,
    claude_bin: Option<PathBuf>,
    codex_bin: Option<PathBuf>,
    port_min: Option<u16>,
    port_max: Option<u16>,
    gateway_port: Option<u16>,
    dashboard_port: Option<u16>,
    dashboard_host: Option<std::net::IpAddr>,
    linger_secs: Option<u64>,
    ready_timeout_secs: Option<u64>,
    max_parallel_starts: Option<usize>,
    allow_https: Option<bool>,
    allow_file: Option<bool>,
    seed_plugin_stub: Option<bool>,
    idle_timeout_secs: Option<u64>,
    memory_max: Option<String>,
    cpu_max: Option<String>,
    tasks_max: Option<String>,
    memory_budget: Option<String>,
    supervisor_probe_interval_secs: Option<u64>,
    supervisor_backoff_base_ms: Option<u64>,
    isolation: Option<IsolationMode>,
    #[serde(default)]
    isolation_paths: Vec<PathBuf>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    instance_env: BTreeMap<String, String>,
}

/// The top-level keys of the config file. A key with one of these names under `[instance_env]`
/// was almost certainly meant for the top level (TOML puts every key after a table header into
/// that table), so it is warned about.
const TOP_LEVEL_KEYS: [&str; 25] = [
    "opencode_bin",
    "gemini_bin",
    "claude_bin",
    "codex_bin",
    "port_min",
    "port_max",
    "gateway_port",
    "dashboard_port",
    "dashboard_host",
    "linger_secs",
    "ready_timeout_secs",
    "max_parallel_starts",
    "allow_https",
    "allow_file",
    "seed_plugin_stub",
    "idle_timeout_secs",
    "memory_max",
    "cpu_max",
    "tasks_max",
    "memory_budget",
    "supervisor_probe_interval_secs",
    "supervisor_backoff_base_ms",
    "isolation",
    "isolation_paths",
    "allowed_hosts",
];

/// Whether Instances are confined (`isolation` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationMode {
    /// Confine with Landlock where the kernel offers it; otherwise start anyway, with a warning.
    #[default]
    Auto,
    /// Refuse to start an Instance that cannot be confined (`isolation_unavailable`).
    Required,
    /// Never confine (for debugging an agent that needs more; every start warns).
    Off,
}

/// Daemon-wide settings, validated once.
#[derive(Debug, Clone)]
pub struct Config {
    pub paths: Paths,
    /// `OPENCODE_BIN` from the daemon's environment or the config file.
    pub opencode_bin: Option<PathBuf>,
    /// The programs of the other agent kinds, by variable (`GEMINI_BIN`, `CLAUDE_BIN`,
    /// `CODEX_BIN`), from the daemon's environment or the config file (`gemini_bin`, …).
    pub agent_bins: BTreeMap<String, PathBuf>,
    pub port_range: RangeInclusive<u16>,
    pub gateway_port: u16,
    /// The dashboard's port (0: no dashboard).
    pub dashboard_port: u16,
    /// The address the dashboard binds (loopback unless configured).
    pub dashboard_host: std::net::IpAddr,
    /// How long the daemon stays with no running Project before it exits.
    pub linger: Duration,
    /// How long an Instance may take to become ready.
    pub ready_timeout: Duration,
    /// How many Instances may be launching at once (`max_parallel_starts`; default: the CPUs).
    pub max_parallel_starts: usize,
    pub url_policy: UrlPolicy,
    /// Seed each Instance's config dir so OpenCode skips its background npm install of
    /// `@opencode-ai/plugin` (5–6 s, 64 MB, network) at each fresh start.
    pub seed_plugin_stub: bool,
    /// Default per-Instance limits (a Project's `.env` may set its own).
    pub limits: crate::limits::Limits,
    /// Aggregate memory for all Instances; a start that would exceed it is refused.
    pub memory_budget: Option<u64>,
    /// The supervisor's policy (restart backoff, probes, idle parking).
    pub supervision: crate::policy::Policy,
    /// Extra, non-secret variables for every Instance (for example `OPENCODE_DISABLE_MODELS_FETCH`).
    pub instance_env: BTreeMap<String, String>,
    pub isolation: IsolationMode,
    /// Extra directories an Instance may read and execute from (tools outside the system paths).
    pub isolation_paths: Vec<PathBuf>,
    /// Host names the HTTP front doors answer to besides the loopback names and the bound address.
    pub allowed_hosts: Vec<String>,
    /// Problems in the config file that did not stop it from loading, for `doctor` and the log.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the config file (if any) and the environment.
    pub fn load(paths: Paths) -> anyhow::Result<Config> {
        let path = paths.config_file();
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let env_number = |key: &str| -> anyhow::Result<Option<u64>> {
            env(key)
                .map(|v| {
                    v.parse::<u64>()
                        .with_context(|| format!("{key} must be a number, got {v:?}"))
                })
                .transpose()
        };
        let port_min = file.port_min.unwrap_or(4100);
        let port_max = file.port_max.unwrap_or(4199);
        if port_min == 0 || port_min > port_max {
            bail!(
                "port range {port_min}-{port_max} in {} is empty or starts at 0",
                path.display()
            );
        }
        let gateway_port = match env_number("GLOBAL_MCP_TOOL_PORT")? {
            Some(p) => u16::try_from(p).context("GLOBAL_MCP_TOOL_PORT is not a port number")?,
            None => file.gateway_port.unwrap_or(3005),
        };
        let dashboard_port = match env_number("OPENCODE_MANAGER_DASHBOARD_PORT")? {
            Some(p) => {
                u16::try_from(p).context("OPENCODE_MANAGER_DASHBOARD_PORT is not a port number")?
            }
            None => file.dashboard_port.unwrap_or(3006),
        };
        let mut warnings = Vec::new();
        for key in file.instance_env.keys() {
            if !crate::envfile::valid_key(key) {
                bail!(
                    "instance_env key {key:?} in {} is not a valid variable name",
                    path.display()
                );
            }
            if TOP_LEVEL_KEYS.contains(&key.as_str()) {
                warnings.push(format!(
                    "{key} in {} is under [instance_env], so it is passed to every instance as a variable and not used as a setting; move it above the [instance_env] line",
                    path.display()
                ));
            }
        }
        for dir in &file.isolation_paths {
            if !dir.is_absolute() {
                bail!(
                    "isolation_paths entry {} in {} must be an absolute path",
                    dir.display(),
                    path.display()
                );
            }
        }
        for host in &file.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                bail!(
                    "allowed_hosts entry {host:?} in {} is not a host name",
                    path.display()
                );
            }
        }
        let limits = crate::limits::Limits::parse(
            file.memory_max.as_deref(),
            file.cpu_max.as_deref(),
            file.tasks_max.as_deref(),
        )
        .map_err(|err| anyhow::anyhow!("{err} in {}", path.display()))?;
        let memory_budget = file
            .memory_budget
            .as_deref()
            .map(crate::limits::parse_bytes)
            .transpose()
            .map_err(|err| anyhow::anyhow!("memory_budget in {}: {err}", path.display()))?;
        Ok(Config {
            limits,
            memory_budget,
            opencode_bin: env("OPENCODE_BIN").map(PathBuf::from).or(file.opencode_bin),
            agent_bins: [
                ("GEMINI_BIN", file.gemini_bin),
                ("CLAUDE_BIN", file.claude_bin),
                ("CODEX_BIN", file.codex_bin),
            ]
            .into_iter()
            .filter_map(|(var, from_file)| {
                let bin = env(var).map(PathBuf::from).or(from_file)?;
                Some((var.to_owned(), bin))
            })
            .collect(),
            port_range: port_min..=port_max,
            gateway_port,
            dashboard_port,
            dashboard_host: file
                .dashboard_host
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            linger: Duration::from_secs(
                env_number("OPENCODE_MANAGER_LINGER_SECS")?
                    .or(file.linger_secs)
                    .unwrap_or(60),
            ),
            ready_timeout: Duration::from_secs(file.ready_timeout_secs.unwrap_or(60)),
            max_parallel_starts: file
                .max_parallel_starts
                .filter(|n| *n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
                }),
            url_policy: UrlPolicy {
                allow_https: file.allow_https.unwrap_or(false),
                allow_file: file.allow_file.unwrap_or(false),
            },
            seed_plugin_stub: file.seed_plugin_stub.unwrap_or(true),
            supervision: {
                let defaults = crate::policy::Policy::default();
                crate::policy::Policy {
                    // 0 turns idle parking off.
                    idle_timeout: match file.idle_timeout_secs {
                        Some(0) => None,
                        Some(secs) => Some(Duration::from_secs(secs)),
                        None => defaults.idle_timeout,
                    },
                    probe_interval: file
                        .supervisor_probe_interval_secs
                        .map_or(defaults.probe_interval, Duration::from_secs),
                    backoff_base: file
                        .supervisor_backoff_base_ms
                        .map_or(defaults.backoff_base, Duration::from_millis),
                    ..defaults
                }
            },
            instance_env: file.instance_env,
            isolation: file.isolation.unwrap_or_default(),
            isolation_paths: file.isolation_paths,
            allowed_hosts: file.allowed_hosts,
            warnings,
            paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("opencode-manager.toml"), toml).expect("write");
        Config::load(Paths::new(dir.path().to_owned()))
    }

    #[test]
    fn a_top_level_key_below_instance_env_is_warned_about() {
        let config = load("port_min = 4100\n[instance_env]\nmemory_max = \"2G\"\nFOO = \"1\"\n")
            .expect("loads");
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(
            config.warnings[0].starts_with("memory_max in "),
            "{:?}",
            config.warnings
        );
        assert_eq!(config.limits.memory_bytes, None);
        assert!(
            load("memory_max = \"2G\"\n")
                .expect("loads")
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn isolation_settings_are_read_and_checked() {
        let config = load("isolation = \"required\"\nisolation_paths = [\"/opt/tools\"]\nallowed_hosts = [\"ocm.lan\"]\n")
            .expect("loads");
        assert_eq!(config.isolation, IsolationMode::Required);
        assert_eq!(config.isolation_paths, [PathBuf::from("/opt/tools")]);
        assert_eq!(config.allowed_hosts, ["ocm.lan"]);
        assert_eq!(load("").expect("loads").isolation, IsolationMode::Auto);
        assert!(load("isolation = \"sometimes\"\n").is_err());
        assert!(load("isolation_paths = [\"relative\"]\n").is_err());
        assert!(load("allowed_hosts = [\"http://x/\"]\n").is_err());
    }
}
