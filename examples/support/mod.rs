//! What the benchmarks share: paths of the built binaries, free ports, a local repository to
//! clone, a home driven through the CLI and cleaned up whatever happens, and percentiles.
//! Each benchmark includes it with `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

pub(crate) mod pyclient;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A path in the source tree.
pub(crate) fn manifest(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The value of `--name N` on the command line, or `default`.
pub(crate) fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map_or(default, |n| n.parse().expect("a number"))
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

fn git(args: &[&str], cwd: &Path) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(cwd)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

/// A bare repository with one commit on `main` under `dir`; returns its `file://` URL (homes
/// set `allow_file = true`).
pub(crate) fn file_repo(dir: &Path) -> String {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let bare = dir.join("r.git");
    git(&["init", "-q", "--bare", bare.to_str().expect("utf8")], dir);
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README.md"), "bench\n").expect("write");
    git(&["add", "."], &work);
    git(&["commit", "-qm", "init"], &work);
    git(
        &["push", "-q", bare.to_str().expect("utf8"), "HEAD:main"],
        &work,
    );
    format!("file://{}", bare.display())
}

/// A manager home driven through the CLI; stops every project and the daemon when dropped.
pub(crate) struct Home {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub opencode: PathBuf,
}

impl Home {
    /// A home in `dir` with `config` as its `opencode-manager.toml`, whose instances run `opencode`.
    pub(crate) fn new(dir: PathBuf, config: &str, opencode: PathBuf) -> Home {
        std::fs::create_dir_all(&dir).expect("mkdir");
        // No dashboard unless the benchmark asks for one (port 3006 may be taken).
        let config = if config.contains("dashboard_port") {
            config.to_owned()
        } else {
            format!("dashboard_port = 0\n{config}")
        };
        std::fs::write(dir.join("opencode-manager.toml"), config).expect("config");
        let bin = manifest("target/release/opencode-manager");
        assert!(
            bin.exists() && opencode.exists(),
            "build first (cargo build --release, with --all-features for the fake OpenCode) and install OpenCode (scripts/test)"
        );
        Home { dir, bin, opencode }
    }

    /// Runs a command with `--json` in development mode; returns its reply.
    pub(crate) fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--json")
            .env("OPENCODE_MANAGER_HOME", &self.dir)
            .env("OPENCODE_BIN", &self.opencode)
            .env("ENVIRONMENT", "development")
            .output()
            .expect("run opencode-manager");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A value from a project's `.env`.
    pub(crate) fn env_value(&self, project: &str, key: &str) -> String {
        let env =
            std::fs::read_to_string(self.dir.join(format!("opencode-sandboxes/{project}/.env")))
                .expect(".env");
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .expect("key")
            .to_owned()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cli(&["stop", "--all"]);
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("opencode-manager.lock")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// An rmcp client of the Gateway at `port` (the newest protocol, stateless).
pub(crate) type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// Connects an rmcp client to the Gateway at `port` with the bearer `token`.
pub(crate) async fn connect(port: u16, token: &str) -> Client {
    use rmcp::ClientServiceExt as _;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp"))
            .auth_header(token);
    let lifecycle = rmcp::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::LATEST],
    };
    ().serve_with_lifecycle(
        StreamableHttpClientTransport::from_config(config),
        lifecycle,
    )
    .await
    .unwrap()
}

/// The `p` quantile of `samples` (0.5 for the median), in milliseconds.
pub(crate) fn ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}
