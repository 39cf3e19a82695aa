//! MCP round-trip latency of the manager's server, over stdio and over Streamable HTTP.
//!
//! For each transport, 1,000 calls each of `tools/list`, `opencode_list` (which asks the daemon
//! over its socket) and `bench_echo` (a trivial tool in the same server that answers at once: the
//! baseline), reporting p50 and p99. Run:
//!
//! ```sh
//! cargo build --release --features test-support
//! cargo run --release --features test-support --example bench_mcp -- [--calls N]
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};

type Client = RunningService<RoleClient, ()>;

fn binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/opencode-manager");
    assert!(
        path.exists(),
        "{} is missing: run cargo build --release --features test-support",
        path.display()
    );
    path
}

async fn measure(client: &Client, what: &str, calls: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        match what {
            "tools/list" => {
                client.list_tools(None).await.expect("tools/list");
            }
            tool => {
                let result = client
                    .call_tool(CallToolRequestParams::new(tool.to_owned()))
                    .await
                    .expect("call");
                assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
            }
        }
        out.push(start.elapsed());
    }
    out
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

async fn run_all(client: &Client, transport: &str, calls: usize) {
    // Warm up the daemon connection path and the server.
    measure(client, "opencode_list", 20).await;
    for what in ["bench_echo", "tools/list", "opencode_list"] {
        let mut samples = measure(client, what, calls).await;
        println!(
            "| {transport} | {what} | {:.3} | {:.3} |",
            percentile(&mut samples, 0.50),
            percentile(&mut samples, 0.99)
        );
    }
}

fn main() {
    let calls = std::env::args()
        .skip_while(|a| a != "--calls")
        .nth(1)
        .map(|n| n.parse().expect("--calls N"))
        .unwrap_or(1000);
    let home = tempfile::tempdir().expect("temp home");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("MCP round trips, {calls} calls each (milliseconds)\n");
    println!("| transport | call | p50 | p99 |\n|---|---|---|---|");
    runtime.block_on(async {
        let home_path = home.path().to_owned();
        let transport =
            TokioChildProcess::new(tokio::process::Command::new(binary()).configure(|cmd| {
                cmd.args(["serve", "--mode", "stdio"])
                    .env("OPENCODE_MANAGER_HOME", &home_path)
                    .env("OCM_BENCH_TOOL", "1");
            }))
            .expect("spawn stdio server");
        let client: Client =
            ().serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
                .await
                .expect("initialize");
        run_all(&client, "stdio (2025-11-25)", calls).await;
        client.cancel().await.expect("close");
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(binary())
        .args(["serve", "--mode", "http", "--port", &port.to_string()])
        .env("OPENCODE_MANAGER_HOME", home.path())
        .env("OPENCODE_MANAGER_TOKEN", "bench-token")
        .env("OCM_BENCH_TOOL", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn http server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the HTTP server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.block_on(async {
        for (label, lifecycle) in [
            (
                "http (2026-07-28)",
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::LATEST],
                },
            ),
            ("http (2025-11-25)", ClientLifecycleMode::Initialize),
        ] {
            let config = StreamableHttpClientTransportConfig::with_uri(format!(
                "http://127.0.0.1:{port}/mcp"
            ))
            .auth_header("bench-token");
            let client: Client = ()
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::from_config(config),
                    lifecycle,
                )
                .await
                .expect("connect");
            run_all(&client, label, calls).await;
            client.cancel().await.expect("close");
        }
    });
    let _ = server.kill();
    let _ = server.wait();
    // The daemon the servers started lingers; stop it.
    if let Ok(pid) = std::fs::read_to_string(home.path().join("opencode-manager.lock")) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}
