//! A Project's Sandbox on disk and the environment its Instance runs with.
//!
//! Owns the directory layout under `opencode-sandboxes/<project>/` (0700 directories, the sandbox
//! `.gitignore`, the Instance's private HOME/XDG/TMPDIR roots), the Instance environment, which is
//! built from an allowlist: every process the agent starts inherits it, so it holds nothing the agent
//! may not see (no gateway token, no other Project's secret), and what the Instance may reach on
//! disk ([`confinement_plan`]) and whether it is confined at all ([`confine`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::config::{Config, IsolationMode, OPENCODE_VERSION, Paths};
use crate::instance::confine::{self, Confinement, Isolation, Plan, Support};
use crate::instance::process::MARKER_VAR;
use crate::project::ProjectName;
use crate::secrets::Secret;

const GITIGNORE: &str = ".env\n.env.*\n*.env\n*.pid\n*.log\ninstance/\n";

/// Variables taken from the daemon's own environment; everything else is dropped.
const INHERITED: [&str; 5] = ["PATH", "LANG", "LC_ALL", "TZ", "TERM"];

/// Creates the Sandbox directory (0700) and its `.gitignore`; idempotent.
pub fn create(paths: &Paths, project: &ProjectName) -> io::Result<PathBuf> {
    let sandbox = paths.sandbox(project);
    atomic_file::private_dir(&sandbox)?;
    match atomic_file::create_new(
        &sandbox.join(".gitignore"),
        GITIGNORE.as_bytes(),
        atomic_file::PUBLIC,
    ) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    Ok(sandbox)
}

/// The Instance's private directories, created on demand.
#[derive(Debug, Clone)]
pub struct InstanceDirs {
    pub home: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub cache: PathBuf,
    pub tmp: PathBuf,
}

impl InstanceDirs {
    pub fn of(paths: &Paths, project: &ProjectName) -> InstanceDirs {
        let root = paths.instance_dir(project);
        InstanceDirs {
            home: root.join("home"),
            data: root.join("data"),
            config: root.join("config"),
            state: root.join("state"),
            cache: root.join("cache"),
            tmp: root.join("tmp"),
        }
    }

    /// Creates the directories; with `seed_plugin_stub`, also the stub that makes OpenCode skip its
    /// background npm install of its plugin package, so an Instance starts
    /// without network access or 64 MB of downloads.
    pub fn create(&self, seed_plugin_stub: bool) -> io::Result<()> {
        for dir in [
            &self.home,
            &self.data,
            &self.config,
            &self.state,
            &self.cache,
            &self.tmp,
        ] {
            atomic_file::private_dir(dir)?;
        }
        if seed_plugin_stub {
            let opencode_config = self.config.join("opencode");
            atomic_file::private_dir(&opencode_config.join("node_modules"))?;
            let lock = format!(
                "{{\"lockfileVersion\":3,\"packages\":{{\"\":{{\"dependencies\":{{\"@opencode-ai/plugin\":\"{OPENCODE_VERSION}\"}}}}}}}}\n"
            );
            match atomic_file::create_new(
                &opencode_config.join("package-lock.json"),
                lock.as_bytes(),
                atomic_file::PRIVATE,
            ) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

impl InstanceDirs {
    /// Empties TMPDIR before a launch: nothing of a previous run is needed there, and Bun extracts
    /// about 5 MB of native libraries into it at every start.
    pub fn clear_tmp(&self) {
        for entry in std::fs::read_dir(&self.tmp)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// The marker value of one launch: the home, the Project and the launch, so a sweep never touches
/// another home's or another launch's processes.
pub fn marker(paths: &Paths, project: &ProjectName, launch_id: &str) -> String {
    format!("{}:{project}:{launch_id}", home_tag(paths.home()))
}

/// The marker prefix shared by every launch of a Project in this home.
pub fn marker_prefix(paths: &Paths, project: &ProjectName) -> String {
    format!("{}:{project}:", home_tag(paths.home()))
}

/// The marker prefix shared by every Instance of this home.
pub fn home_marker_prefix(paths: &Paths) -> String {
    format!("{}:", home_tag(paths.home()))
}

fn home_tag(home: &Path) -> String {
    let hash = home
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// What goes into an Instance's environment besides the inherited allowlist.
pub struct InstanceEnvSpec<'a> {
    pub config: &'a Config,
    pub dirs: &'a InstanceDirs,
    pub password: &'a Secret,
    pub marker: &'a str,
    /// Provider keys and OpenCode settings from this Project's `.env`.
    pub project_vars: &'a [(String, Secret)],
}

/// The complete environment of an Instance. Later entries win, so `.env` values override the
/// manager-wide `instance_env` and `OPENCODE_CONFIG`, and the isolation variables override all.
pub fn instance_env(
    spec: &InstanceEnvSpec<'_>,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = INHERITED
        .iter()
        .filter_map(|k| inherited(k).map(|v| (k.to_string(), v)))
        .collect();
    env.extend(
        spec.config
            .instance_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    // The manager-wide OpenCode config comes before the Project's own variables, which win.
    let opencode_config = spec.config.paths.opencode_config();
    if opencode_config.is_file() {
        env.push((
            "OPENCODE_CONFIG".into(),
            opencode_config.to_string_lossy().into_owned(),
        ));
    }
    env.extend(
        spec.project_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned())),
    );
    let dirs = spec.dirs;
    for (key, dir) in [
        ("HOME", &dirs.home),
        ("XDG_DATA_HOME", &dirs.data),
        ("XDG_CONFIG_HOME", &dirs.config),
        ("XDG_STATE_HOME", &dirs.state),
        ("XDG_CACHE_HOME", &dirs.cache),
        ("TMPDIR", &dirs.tmp),
    ] {
        env.push((key.into(), dir.to_string_lossy().into_owned()));
    }
    env.push((
        "OPENCODE_SERVER_PASSWORD".into(),
        spec.password.expose().to_owned(),
    ));
    env.push((MARKER_VAR.into(), spec.marker.to_owned()));
    dedupe_last_wins(env)
}

/// What a confined process of a Project needs beyond its own directories.
pub struct Reach<'a> {
    /// The deploy key (its `.pub` and the manager's `known_hosts` come with it), for processes that
    /// push and fetch.
    pub key: Option<&'a Path>,
    /// The agent's program (and the ACP bridge's): the installation of each is readable and
    /// executable.
    pub programs: &'a [&'a Path],
    /// The `PATH` the process gets; its directories are readable and executable where safe.
    pub path_var: Option<&'a str>,
    /// The TCP ports the process may bind (the Instance's, and its agent's own where it has one).
    pub bind_ports: &'a [u16],
}

/// What a process of `project` may reach: its `repo/` and `instance/` read-write, its deploy key,
/// `known_hosts` and the manager-wide `opencode-config.json` read-only, the agent's installation,
/// `PATH` and `isolation_paths` read and execute. Nothing else under the home.
pub fn confinement_plan(config: &Config, project: &ProjectName, reach: &Reach<'_>) -> Plan {
    let paths = &config.paths;
    let mut plan = Plan {
        home: paths.home().to_owned(),
        read_write: vec![paths.repo_dir(project), paths.instance_dir(project)],
        read_files: Vec::new(),
        read_exec: Vec::new(),
        programs: Vec::new(),
        bind_ports: reach.bind_ports.to_vec(),
    };
    // The manager-wide OpenCode config is every Instance's (`OPENCODE_CONFIG` points at it).
    if paths.opencode_config().is_file() {
        plan.read_files.push(paths.opencode_config());
    }
    if let Some(key) = reach.key {
        plan.read_files.push(key.to_owned());
        let public_key = PathBuf::from(format!("{}.pub", key.display()));
        for optional in [public_key, paths.known_hosts()] {
            if optional.is_file() {
                plan.read_files.push(optional);
            }
        }
    }
    let home = std::fs::canonicalize(paths.home()).unwrap_or_else(|_| paths.home().to_owned());
    for program in reach
        .programs
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
    {
        plan.programs.push(installation_of(&program, &home));
    }
    if let Some(path_var) = reach.path_var {
        plan.read_exec.extend(plan.path_dirs(path_var));
    }
    plan.read_exec
        .extend(config.isolation_paths.iter().cloned());
    plan
}

/// What to grant for a program: the `node_modules` tree an npm package lies in (a script needs its
/// dependencies), else its directory (a native binary may read files beside it); the program
/// alone when that would hold the home.
fn installation_of(program: &Path, home: &Path) -> PathBuf {
    let tree = program
        .ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "node_modules"))
        .last();
    match tree.or(program.parent()) {
        Some(dir) if !home.starts_with(dir) => dir.to_owned(),
        _ => program.to_owned(),
    }
}

/// Decides how a process is confined under the configured `isolation` mode and what the kernel
/// offers. `Err` (with the reason) when `isolation = "required"` cannot be met or the ruleset
/// cannot be built: a process is never started less confined than the operator asked.
pub fn confine(config: &Config, support: &Support, plan: &Plan) -> Result<Confinement, String> {
    match (config.isolation, support) {
        (IsolationMode::Off, _) => Ok(Confinement::disabled(
            "isolation = \"off\" in opencode-manager.toml".into(),
        )),
        (_, Support::Landlock { abi }) => confine::prepare(*abi, plan).map_err(|e| e.to_string()),
        (IsolationMode::Required, Support::Unavailable { reason }) => Err(format!(
            "{reason}; isolation = \"required\" in opencode-manager.toml refuses to run an agent unconfined"
        )),
        (IsolationMode::Auto, Support::Unavailable { reason }) => {
            Ok(Confinement::caps_only(reason.clone()))
        }
    }
}

/// The isolation a start would get now, for `doctor`.
pub fn expected_isolation(config: &Config, support: &Support) -> Isolation {
    match (config.isolation, support) {
        (IsolationMode::Off, _) => Isolation::None {
            reason: "isolation = \"off\" in opencode-manager.toml".into(),
        },
        (_, Support::Landlock { abi }) => Isolation::Landlock { abi: *abi },
        (_, Support::Unavailable { reason }) => Isolation::None {
            reason: reason.clone(),
        },
    }
}

fn dedupe_last_wins(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (key, value) in env {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_env_is_an_allowlist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        let config = Config::load(paths.clone()).expect("config");
        let project = ProjectName::parse("demo").expect("name");
        let dirs = InstanceDirs::of(&paths, &project);
        let password = Secret::new("pw".into());
        let vars = vec![
            ("OPENAI_API_KEY".to_string(), Secret::new("sk".into())),
            ("HOME".to_string(), Secret::new("/evil".into())),
        ];
        let spec = InstanceEnvSpec {
            config: &config,
            dirs: &dirs,
            password: &password,
            marker: "m",
            project_vars: &vars,
        };
        let env = instance_env(&spec, |k| match k {
            "PATH" => Some("/usr/bin".into()),
            _ => Some(format!("leaked-{k}")),
        });
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/usr/bin"));
        assert_eq!(get("OPENAI_API_KEY"), Some("sk"));
        assert_eq!(
            get("HOME"),
            Some(dirs.home.to_str().expect("utf8")),
            "isolation wins over .env"
        );
        assert_eq!(get("OPENCODE_SERVER_PASSWORD"), Some("pw"));
        assert_eq!(get(MARKER_VAR), Some("m"));
        assert_eq!(get("GLOBAL_MCP_BEARER_TOKEN"), None);
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }

    #[test]
    fn isolation_modes_decide_how_a_process_is_confined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::load(Paths::new(dir.path().to_owned())).expect("config");
        let plan = Plan {
            home: dir.path().to_owned(),
            ..Plan::default()
        };
        let missing = Support::Unavailable {
            reason: "no Landlock here".into(),
        };
        let auto = confine(&config, &missing, &plan).expect("auto starts anyway");
        assert_eq!(
            auto.isolation,
            Isolation::None {
                reason: "no Landlock here".into()
            }
        );
        config.isolation = IsolationMode::Required;
        let refused = confine(&config, &missing, &plan).expect_err("required refuses");
        assert!(refused.contains("no Landlock here"), "{refused}");
        config.isolation = IsolationMode::Off;
        let off = confine(&config, &Support::Landlock { abi: 7 }, &plan).expect("off");
        assert!(!off.isolation.is_confined());
        assert_eq!(
            expected_isolation(&config, &Support::Landlock { abi: 7 }),
            off.isolation
        );
    }

    #[test]
    fn markers_differ_per_home_and_share_a_project_prefix() {
        let project = ProjectName::parse("demo").expect("name");
        let a = Paths::new("/h/a".into());
        let b = Paths::new("/h/b".into());
        assert_ne!(marker(&a, &project, "1"), marker(&b, &project, "1"));
        assert!(marker(&a, &project, "1").starts_with(&marker_prefix(&a, &project)));
    }
}
