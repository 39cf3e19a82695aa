#![allow(clippy::print_stderr)]
//! `TestHome`: one manager home per test, with its own port range, its own daemon and cleanup of
//! every process it started. Commands run the real `opencode-manager` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::{manager_bin, opencode_bin, pid_alive, wait_until};

/// Each home gets 20 ports of its own, so parallel tests never race for one.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

pub struct TestHome {
    dir: tempfile::TempDir,
    opencode: PathBuf,
    extra_env: Vec<(String, String)>,
    pub port_min: u16,
    pub port_max: u16,
    pub gateway_port: u16,
}

/// What a CLI call returned.
#[derive(Debug)]
pub struct Answer {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Answer {
    pub fn status(&self) -> &str {
        self.json["status"].as_str().unwrap_or("")
    }
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

impl TestHome {
    /// A home whose instances run the real OpenCode.
    pub fn real() -> TestHome {
        TestHome::with_opencode(opencode_bin(), "")
    }

    /// A home whose instances run the fake OpenCode in `mode` (crash, hang, slow, …).
    pub fn fake(mode: &str, extra_toml: &str) -> TestHome {
        let mode = format!("FAKE_OPENCODE_MODE = \"{mode}\"\n");
        let toml = match extra_toml.split_once("[instance_env]") {
            None => format!("{extra_toml}\n[instance_env]\n{mode}"),
            Some((top, instance_env)) => format!("{top}\n[instance_env]\n{mode}{instance_env}"),
        };
        TestHome::with_opencode(crate::support::fake_opencode_bin(), &toml)
    }

    pub fn with_opencode(opencode: PathBuf, extra_toml: &str) -> TestHome {
        let dir = tempfile::Builder::new()
            .prefix("ocm-home-")
            .tempdir()
            .expect("temp home");
        let slot = NEXT_RANGE.fetch_add(1, Ordering::SeqCst);
        let port_min = 21000 + (std::process::id() % 200) as u16 * 100 % 20000 + slot * 20;
        let port_max = port_min + 18;
        let gateway_port = port_min + 19;
        let mut toml = format!(
            "port_min = {port_min}\nport_max = {port_max}\ngateway_port = {gateway_port}\nlinger_secs = 600\n"
        );
        // No dashboard unless a test asks for one (they would all want port 3006).
        if !extra_toml.contains("dashboard_port") {
            toml.push_str("dashboard_port = 0\n");
        }
        // Top-level keys first: everything after a `[table]` header belongs to that table.
        match extra_toml.split_once("[instance_env]") {
            None => {
                toml.push_str(extra_toml);
                toml.push_str("\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n");
            }
            Some((top, instance_env)) => {
                toml.push_str(top);
                toml.push_str("\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n");
                toml.push_str(instance_env);
            }
        }
        std::fs::write(dir.path().join("opencode-manager.toml"), toml).expect("config");
        TestHome {
            dir,
            opencode,
            extra_env: Vec::new(),
            port_min,
            port_max,
            gateway_port,
        }
    }

    /// Adds a variable to every CLI call (and so to the daemon they start).
    pub fn env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.into(), value.into()));
    }

    /// Removes a variable `env` added.
    pub fn unset_env(&mut self, key: &str) {
        self.extra_env.retain(|(k, _)| k != key);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn sandbox(&self, project: &str) -> PathBuf {
        self.path().join("opencode-sandboxes").join(project)
    }
    pub fn env_file(&self, project: &str) -> PathBuf {
        self.sandbox(project).join(".env")
    }
    pub fn key(&self, project: &str) -> PathBuf {
        self.path()
            .join("opencode-keys")
            .join(format!("{project}-deploy"))
    }

    fn command(&self, args: &[&str], environment: Option<&str>) -> Command {
        let mut cmd = Command::new(manager_bin());
        cmd.args(args)
            .env("OPENCODE_MANAGER_HOME", self.path())
            .env("OPENCODE_BIN", &self.opencode)
            .env_remove("ENVIRONMENT");
        if let Some(environment) = environment {
            cmd.env("ENVIRONMENT", environment);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a subcommand with `--json` in production mode.
    pub fn run(&self, args: &[&str]) -> Answer {
        self.run_in(args, None)
    }

    /// Runs a subcommand with `--json` and `ENVIRONMENT=development`.
    pub fn run_dev(&self, args: &[&str]) -> Answer {
        self.run_in(args, Some("development"))
    }

    pub fn run_in(&self, args: &[&str], environment: Option<&str>) -> Answer {
        let mut all = args.to_vec();
        all.insert(1.min(all.len()), "--json");
        let output = self
            .command(&all, environment)
            .output()
            .expect("running opencode-manager");
        answer(output)
    }

    /// Runs a subcommand without `--json` (human output).
    pub fn run_human(&self, args: &[&str]) -> Output {
        self.command(args, None)
            .output()
            .expect("running opencode-manager")
    }

    pub fn spawn(&self, args: &[&str], environment: Option<&str>) -> std::process::Child {
        let mut all = args.to_vec();
        all.insert(1.min(all.len()), "--json");
        self.command(&all, environment)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning opencode-manager")
    }

    /// The daemon's pid, from the lock file.
    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("opencode-manager.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|p| pid_alive(*p))
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.path().join("opencode-state.json")).expect("state file"),
        )
        .expect("state json")
    }

    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.path().join("opencode-logs/manager.log")).unwrap_or_default()
    }

    /// Pids of living processes started for this home (they carry its Instance marker).
    pub fn marked_processes(&self) -> Vec<i32> {
        let paths = opencode_manager::config::Paths::new(self.path().to_owned());
        let prefix = format!(
            "OCM_INSTANCE={}",
            opencode_manager::sandbox::home_marker_prefix(&paths)
        );
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
        {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|e| e.starts_with(prefix.as_bytes()))
                && pid_alive(pid)
            {
                out.push(pid);
            }
        }
        out
    }

    /// Stops every Instance and the daemon, and checks nothing of this home is left running.
    pub fn shutdown(&self) {
        if self.daemon_pid().is_some() {
            let _ = self.run(&["stop", "--all"]);
        }
        if let Some(pid) = self.daemon_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            wait_until("the daemon to exit", Duration::from_secs(10), || {
                !pid_alive(pid)
            });
        }
        for pid in self.marked_processes() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- manager.log of {} ---\n{}",
                self.path().display(),
                self.manager_log()
            );
        }
        self.shutdown();
    }
}

fn answer(output: Output) -> Answer {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON object ({err}): {stdout}
stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Answer {
        code: output.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
