//! A Project's `.env`: writing the first one (dev or production mode) and loading it into a
//! validated [`ProjectEnv`].
//!
//! The only module that reads or writes `.env` files. Errors name keys and lines, never values.
//! It decides which `.env` entries an Instance may see ([`ProjectEnv::instance_vars`]); it does not
//! build the Instance's environment itself (that is `sandbox`).

use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::envfile;
use crate::project::{GitUrl, ProjectName};
use crate::secrets::{Secret, random_hex};

/// The placeholder written in production mode; the original's exact word.
pub(crate) const PLACEHOLDER: &str = "CHANGE_ME_REQUIRED";

const REQUIRED: [&str; 4] = [
    "GIT_URL",
    "SSH_KEY_PATH",
    "OPENCODE_SERVER_PASSWORD",
    "MCP_TOOL_BEARER_TOKEN",
];
const SECRET_KEYS: [&str; 2] = ["OPENCODE_SERVER_PASSWORD", "MCP_TOOL_BEARER_TOKEN"];

/// How the caller runs: `ENVIRONMENT=development|dev` (any case) is dev, anything else production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Development,
    Production,
}

impl Mode {
    pub(crate) fn from_environment_var(value: Option<&str>) -> Mode {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("development" | "dev") => Mode::Development,
            _ => Mode::Production,
        }
    }
}

/// The largest `.env` the manager reads. Real ones are well under 1 KiB; a bigger file is a
/// mistake or an attack on the daemon, and is refused before it is parsed.
pub(crate) const MAX_ENV_BYTES: u64 = 64 * 1024;

/// Why a `.env` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct EnvError {
    pub kind: EnvErrorKind,
    pub message: String,
    pub hint: String,
}

/// What kind of problem an [`EnvError`] is (`invalid_config` or `env_too_large` for clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvErrorKind {
    Invalid,
    TooLarge,
}

/// The validated contents of a Project's `.env`.
#[derive(Debug)]
pub(crate) struct ProjectEnv {
    pub git_url: String,
    pub ssh_key_path: PathBuf,
    pub password: Secret,
    pub bearer_token: Secret,
    pub opencode_port: Option<u16>,
    pub opencode_bin: Option<PathBuf>,
    /// `GEMINI_BIN`, `CLAUDE_BIN`, `CODEX_BIN`: the program of another agent kind.
    pub agent_bins: Vec<(String, PathBuf)>,
    /// `AGENT_COMMAND`: the command line of a `custom` ACP agent.
    pub agent_command: Option<String>,
    /// `IDLE_TIMEOUT` (seconds, or with s/m/h; 0 = never): overrides the daemon-wide idle timeout.
    pub idle_timeout: Option<Option<std::time::Duration>>,
    /// `MEMORY_MAX`, `CPU_MAX`, `TASKS_MAX`: this Project's limits, each overriding the default.
    pub memory_max: Option<String>,
    pub cpu_max: Option<String>,
    pub tasks_max: Option<String>,
    instance_vars: Vec<(String, Secret)>,
}

impl ProjectEnv {
    /// Entries meant for this Project's Instance only: model-provider keys and OpenCode settings.
    pub(crate) fn instance_vars(&self) -> &[(String, Secret)] {
        &self.instance_vars
    }
}

/// Whether a `.env` key is passed to the Instance: every agent kind's provider credentials,
/// endpoints and settings (`agent::is_provider_var`), except those the manager sets or reads
/// itself.
pub(crate) fn is_instance_var(key: &str) -> bool {
    const MANAGED: [&str; 7] = [
        "OPENCODE_SERVER_PASSWORD",
        "OPENCODE_SERVER_USERNAME",
        "OPENCODE_PORT",
        "OPENCODE_BIN",
        "GEMINI_BIN",
        "CLAUDE_BIN",
        "CODEX_BIN",
    ];
    !MANAGED.contains(&key) && crate::agent::is_provider_var(key)
}

/// Writes the first `.env` of a Project. In development mode it holds fresh random secrets; in
/// production mode, placeholders the user must replace. Returns `false` if a `.env` already existed
/// (it is never overwritten).
pub(crate) fn write_initial(
    path: &Path,
    mode: Mode,
    project: &ProjectName,
    git_url: &GitUrl,
    ssh_key: &Path,
) -> std::io::Result<bool> {
    let (password, token) = match mode {
        Mode::Development => (random_hex(16), random_hex(32)),
        Mode::Production => (
            Secret::new(PLACEHOLDER.into()),
            Secret::new(PLACEHOLDER.into()),
        ),
    };
    let text = format!(
        "# opencode-manager configuration for project {project} (mode 0600; never commit this file)\n\
         # Git repository\n\
         GIT_URL={url}\n\
         # SSH deploy key (read/write access to the repository)\n\
         SSH_KEY_PATH={key}\n\
         # OpenCode server password (generate: openssl rand -hex 16)\n\
         OPENCODE_SERVER_PASSWORD={password}\n\
         # Bearer token that reaches only this project through the gateway (generate: openssl rand -hex 32)\n\
         MCP_TOOL_BEARER_TOKEN={token}\n\
         \n\
         # Optional:\n\
         # OPENCODE_PORT=4101\n\
         # OPENCODE_BIN=/path/to/opencode\n\
         \n\
         # Model providers, passed to this project's OpenCode only:\n\
         # ANTHROPIC_API_KEY=\n\
         # OPENAI_API_KEY=\n\
         # OPENCODE_CONFIG_CONTENT={{\"model\":\"anthropic/claude-sonnet-4-5\"}}\n",
        url = envfile::quote(git_url.as_str()),
        key = envfile::quote(&ssh_key.to_string_lossy()),
        password = password.expose(),
        token = token.expose(),
    );
    match atomic_file::create_new(path, text.as_bytes(), atomic_file::PRIVATE) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Reads a `.env` of at most [`MAX_ENV_BYTES`], without reading more than that.
fn read_bounded(path: &Path) -> Result<String, EnvError> {
    use std::io::Read as _;
    let shown = path.display();
    let unreadable = |err: std::io::Error| EnvError {
        kind: EnvErrorKind::Invalid,
        message: format!("cannot read {shown}: {err}"),
        hint:
            "call opencode_start again to create it, or create it from the template in the README"
                .into(),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_ENV_BYTES + 1).read_to_string(&mut text))
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_ENV_BYTES {
        return Err(EnvError {
            kind: EnvErrorKind::TooLarge,
            message: format!(
                "{shown} is larger than {} KiB; the manager does not read it",
                MAX_ENV_BYTES / 1024
            ),
            hint: format!("keep only the project's settings and secrets in {shown}"),
        });
    }
    Ok(text)
}

/// Reads and validates a Project's `.env`.
pub(crate) fn load(path: &Path) -> Result<ProjectEnv, EnvError> {
    let shown = path.display();
    let text = read_bounded(path)?;
    let invalid = |message: String, hint: String| EnvError {
        kind: EnvErrorKind::Invalid,
        message,
        hint,
    };
    let file = envfile::parse(&text).map_err(|err| EnvError {
        kind: EnvErrorKind::Invalid,
        message: format!("{shown}: {err}"),
        hint: format!("fix that line in {shown}: KEY=value, with '…' or \"…\" around values that hold spaces or #"),
    })?;
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|k| file.get(k).is_none_or(str::is_empty))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(
            format!("missing required fields in {shown}: {}", missing.join(", ")),
            format!("add them to {shown}"),
        ));
    }
    let placeholders: Vec<&str> = SECRET_KEYS
        .iter()
        .copied()
        .filter(|k| file.get(k) == Some(PLACEHOLDER))
        .collect();
    if !placeholders.is_empty() {
        return Err(invalid(
            format!("please set real values for these fields in {shown}: {}", placeholders.join(", ")),
            "generate them with: openssl rand -hex 16 (password) and openssl rand -hex 32 (bearer token), then call opencode_start again".into(),
        ));
    }
    let opencode_port = match file.get("OPENCODE_PORT").filter(|v| !v.is_empty()) {
        None => None,
        Some(raw) => Some(raw.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            invalid(
                format!("OPENCODE_PORT in {shown} is not a port number"),
                "use a number from 1 to 65535, or remove the line to let the manager choose".into(),
            )
        })?),
    };
    let idle_timeout = match file.get("IDLE_TIMEOUT").filter(|v| !v.is_empty()) {
        None => None,
        Some(raw) => Some(parse_duration(raw).ok_or_else(|| invalid(
            format!("IDLE_TIMEOUT in {shown} is not a duration"),
            "use seconds, or a number with s, m or h (for example 30m); 0 never parks the project".into(),
        ))?),
    };
    let get = |k: &str| file.get(k).unwrap_or_default().to_owned();
    let ssh_key_path = expand_tilde(&get("SSH_KEY_PATH"));
    let instance_vars = file
        .iter()
        .filter(|(k, _)| is_instance_var(k))
        .map(|(k, v)| (k.to_owned(), Secret::new(v.to_owned())))
        .collect();
    Ok(ProjectEnv {
        git_url: get("GIT_URL"),
        ssh_key_path,
        password: Secret::new(get("OPENCODE_SERVER_PASSWORD")),
        bearer_token: Secret::new(get("MCP_TOOL_BEARER_TOKEN")),
        opencode_port,
        idle_timeout,
        memory_max: file
            .get("MEMORY_MAX")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        cpu_max: file
            .get("CPU_MAX")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        tasks_max: file
            .get("TASKS_MAX")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        opencode_bin: file
            .get("OPENCODE_BIN")
            .filter(|v| !v.is_empty())
            .map(expand_tilde),
        agent_bins: ["GEMINI_BIN", "CLAUDE_BIN", "CODEX_BIN"]
            .into_iter()
            .filter_map(|k| {
                let v = file.get(k).filter(|v| !v.is_empty())?;
                Some((k.to_owned(), expand_tilde(v)))
            })
            .collect(),
        agent_command: file
            .get("AGENT_COMMAND")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        instance_vars,
    })
}

/// `90`, `90s`, `30m`, `2h`; `0` means never (`Some(None)` for the caller).
fn parse_duration(raw: &str) -> Option<Option<std::time::Duration>> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some((secs > 0).then(|| std::time::Duration::from_secs(secs)))
}

fn expand_tilde(raw: &str) -> PathBuf {
    match (raw.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::UrlPolicy;

    fn fixture(mode: Mode) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        let name = ProjectName::parse("demo").expect("name");
        let url = GitUrl::parse("git@host:o/r.git", UrlPolicy::default()).expect("url");
        assert!(
            write_initial(&path, mode, &name, &url, Path::new("/k/demo-deploy")).expect("write")
        );
        (dir, path)
    }

    #[test]
    fn development_env_is_complete_and_private() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, path) = fixture(Mode::Development);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        let env = load(&path).expect("loads");
        assert_eq!(env.git_url, "git@host:o/r.git");
        assert_eq!(env.password.expose().len(), 32);
        assert_eq!(env.bearer_token.expose().len(), 64);
    }

    #[test]
    fn production_env_asks_for_passwords_without_echoing_values() {
        let (_dir, path) = fixture(Mode::Production);
        let err = load(&path).expect_err("placeholders");
        assert!(
            err.message
                .contains("OPENCODE_SERVER_PASSWORD, MCP_TOOL_BEARER_TOKEN"),
            "{}",
            err.message
        );
        assert!(!err.message.contains(PLACEHOLDER));
    }

    #[test]
    fn an_existing_env_is_never_overwritten() {
        let (_dir, path) = fixture(Mode::Production);
        let name = ProjectName::parse("demo").expect("name");
        let url = GitUrl::parse("git@host:o/r.git", UrlPolicy::default()).expect("url");
        assert!(
            !write_initial(&path, Mode::Development, &name, &url, Path::new("/k")).expect("write")
        );
        assert!(load(&path).is_err(), "still the production placeholders");
    }

    #[test]
    fn quotes_dollars_and_crlf_are_read_literally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        let text = "GIT_URL=git@h:o/r.git\r\nSSH_KEY_PATH='/k/a key'\r\nOPENCODE_SERVER_PASSWORD=pa$$word\r\nMCP_TOOL_BEARER_TOKEN=\"tok # not a comment\"\r\nOPENAI_API_KEY=sk-1\r\nMCP_TOOL_PORT=5101\r\n";
        std::fs::write(&path, text).expect("write");
        let env = load(&path).expect("loads");
        assert_eq!(env.ssh_key_path, PathBuf::from("/k/a key"));
        assert_eq!(env.password.expose(), "pa$$word");
        assert_eq!(env.bearer_token.expose(), "tok # not a comment");
        let keys: Vec<&str> = env
            .instance_vars()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["OPENAI_API_KEY"]);
    }

    #[test]
    fn missing_keys_and_bad_ports_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        std::fs::write(&path, "GIT_URL=x\n").expect("write");
        let err = load(&path).expect_err("missing");
        assert!(
            err.message
                .contains("SSH_KEY_PATH, OPENCODE_SERVER_PASSWORD, MCP_TOOL_BEARER_TOKEN"),
            "{}",
            err.message
        );
        std::fs::write(&path, "GIT_URL=x\nSSH_KEY_PATH=k\nOPENCODE_SERVER_PASSWORD=p\nMCP_TOOL_BEARER_TOKEN=t\nOPENCODE_PORT=99999\n").expect("write");
        assert!(
            load(&path)
                .expect_err("port")
                .message
                .contains("OPENCODE_PORT")
        );
    }

    #[test]
    fn an_env_over_64_kib_is_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        let base =
            "GIT_URL=x\nSSH_KEY_PATH=k\nOPENCODE_SERVER_PASSWORD=p\nMCP_TOOL_BEARER_TOKEN=t\n";
        let pad = |n: usize| format!("{base}# {}\n", "x".repeat(n));
        let fits = 64 * 1024 - base.len() - 3;
        std::fs::write(&path, pad(fits)).expect("write");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 64 * 1024);
        assert!(load(&path).is_ok(), "exactly 64 KiB is fine");
        std::fs::write(&path, pad(fits + 1)).expect("write");
        let err = load(&path).expect_err("too large");
        assert_eq!(err.kind, EnvErrorKind::TooLarge);
        assert!(err.message.contains("64 KiB"), "{}", err.message);
    }

    #[test]
    fn instance_vars_exclude_what_the_manager_owns() {
        assert!(is_instance_var("ANTHROPIC_API_KEY"));
        assert!(is_instance_var("OPENCODE_CONFIG_CONTENT"));
        assert!(!is_instance_var("OPENCODE_SERVER_PASSWORD"));
        assert!(!is_instance_var("MCP_TOOL_BEARER_TOKEN"));
        assert!(!is_instance_var("GIT_URL"));
    }
}
