//! The gateway's overhead and capacity, with one real OpenCode project, in one run:
//! - `opencode-session-list` through the gateway (MCP over HTTP, 2026-07-28) against the same
//!   `GET /session` sent straight to OpenCode, p50 and p99 over 1,000 calls each;
//! - throughput with 50 concurrent gateway clients;
//! - the daemon's RSS with the gateway open.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench_gateway -- [--calls N]
//! ```
//! Needs git and the pinned OpenCode (`scripts/test` installs it into `.tools/`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};

type Client = RunningService<RoleClient, ()>;

fn manifest(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// Stops the project and the daemon whatever happens.
struct Cleanup {
    bin: PathBuf,
    home: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["stop", "--all"])
            .env("OPENCODE_MANAGER_HOME", &self.home)
            .output();
        if let Ok(pid) = std::fs::read_to_string(self.home.join("opencode-manager.lock")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

async fn connect(port: u16, token: &str) -> Client {
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp"))
            .auth_header(token);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    ().serve_with_lifecycle(
        StreamableHttpClientTransport::from_config(config),
        lifecycle,
    )
    .await
    .unwrap()
}

async fn session_list(client: &Client) {
    let mut params = CallToolRequestParams::new("opencode-session-list");
    params.arguments = serde_json::json!({"server": "bench"}).as_object().cloned();
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
}

fn main() {
    let calls: usize = std::env::args()
        .skip_while(|a| a != "--calls")
        .nth(1)
        .map(|n| n.parse().unwrap())
        .unwrap_or(1000);
    let bin = manifest("target/release/opencode-manager");
    let opencode = manifest(".tools/node_modules/.bin/opencode");
    assert!(bin.exists(), "build first: cargo build --release");
    assert!(
        opencode.exists(),
        "install OpenCode first: scripts/test (it installs opencode-ai into .tools/)"
    );
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let gateway_port = free_port();
    std::fs::write(
        home.join("opencode-manager.toml"),
        format!("allow_file = true\ngateway_port = {gateway_port}\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n"),
    )
    .unwrap();
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        &[
            "init",
            "-q",
            "--bare",
            scratch.path().join("r.git").to_str().unwrap(),
        ],
        scratch.path(),
    );
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README.md"), "bench\n").unwrap();
    git(&["add", "."], &work);
    git(&["commit", "-qm", "init"], &work);
    git(
        &[
            "push",
            "-q",
            scratch.path().join("r.git").to_str().unwrap(),
            "HEAD:main",
        ],
        &work,
    );
    let _cleanup = Cleanup {
        bin: bin.clone(),
        home: home.clone(),
    };
    let started = Command::new(&bin)
        .args([
            "start",
            "bench",
            "--json",
            "--git-url",
            &format!("file://{}", scratch.path().join("r.git").display()),
        ])
        .env("OPENCODE_MANAGER_HOME", &home)
        .env("OPENCODE_BIN", &opencode)
        .env("ENVIRONMENT", "development")
        .output()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    assert_eq!(reply["status"], "success", "{reply}");
    let port = reply["opencode_port"].as_u64().unwrap() as u16;
    let env = std::fs::read_to_string(home.join("opencode-sandboxes/bench/.env")).unwrap();
    let password = env
        .lines()
        .find_map(|l| l.strip_prefix("OPENCODE_SERVER_PASSWORD="))
        .unwrap()
        .to_owned();
    let token = std::fs::read_to_string(home.join("global-mcp-token"))
        .unwrap()
        .trim()
        .to_owned();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Direct: the same request the gateway sends, on a kept-alive connection.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let direct_once = || {
            http.get(format!("http://127.0.0.1:{port}/session"))
                .basic_auth("opencode", Some(&password))
                .send()
        };
        for _ in 0..20 {
            direct_once().await.unwrap().bytes().await.unwrap();
        }
        let mut direct = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let response = direct_once().await.unwrap();
            assert!(response.status().is_success());
            response.bytes().await.unwrap();
            direct.push(t.elapsed());
        }
        let client = connect(gateway_port, &token).await;
        for _ in 0..20 {
            session_list(&client).await;
        }
        let mut through = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            session_list(&client).await;
            through.push(t.elapsed());
        }
        client.cancel().await.unwrap();
        let (d50, d99) = percentiles(direct);
        let (g50, g99) = percentiles(through);
        println!("Gateway overhead, {calls} calls each (milliseconds)\n");
        println!("| path | p50 | p99 |\n|---|---|---|");
        println!("| GET /session straight to OpenCode | {d50:.3} | {d99:.3} |");
        println!("| opencode-session-list through the gateway | {g50:.3} | {g99:.3} |");
        println!("| overhead | {:.3} | {:.3} |", g50 - d50, g99 - d99);
        println!(
            "\ngoal: p50 overhead under 1 ms: {}",
            if g50 - d50 < 1.0 { "met" } else { "NOT met" }
        );

        // Throughput: 50 clients at once, each making calls/50 calls.
        let clients = 50;
        let per_client = (calls / clients).max(1);
        let mut connected = Vec::new();
        for _ in 0..clients {
            connected.push(connect(gateway_port, &token).await);
        }
        let t = Instant::now();
        let mut tasks = Vec::new();
        for client in connected {
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_client {
                    session_list(&client).await;
                }
                client.cancel().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = t.elapsed();
        println!(
            "\nThroughput with {clients} concurrent clients: {:.0} calls/s ({} calls in {:.2} s)",
            (clients * per_client) as f64 / elapsed.as_secs_f64(),
            clients * per_client,
            elapsed.as_secs_f64()
        );
    });
    let daemon = std::fs::read_to_string(home.join("opencode-manager.lock"))
        .unwrap()
        .trim()
        .to_owned();
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "Daemon RSS with the gateway open: {:.1} MiB (goal < 20 MiB: {})",
        rss_kib as f64 / 1024.0,
        if rss_kib < 20 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
}
