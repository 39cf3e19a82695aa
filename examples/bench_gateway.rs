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

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use support::{Home, arg, file_repo, free_port, manifest, ms};

type Client = RunningService<RoleClient, ()>;

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
    let calls = arg("--calls", 1000);
    let scratch = tempfile::tempdir().unwrap();
    let gateway_port = free_port();
    let home = Home::new(
        scratch.path().join("home"),
        &format!(
            "allow_file = true\ngateway_port = {gateway_port}\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n"
        ),
        manifest(".tools/node_modules/.bin/opencode"),
    );
    let reply = home.cli(&["start", "bench", "--git-url", &file_repo(scratch.path())]);
    assert_eq!(reply["status"], "success", "{reply}");
    let port = reply["opencode_port"].as_u64().unwrap() as u16;
    let password = home.env_value("bench", "OPENCODE_SERVER_PASSWORD");
    let token = std::fs::read_to_string(home.dir.join("global-mcp-token"))
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
        let (d50, d99) = (ms(&mut direct, 0.5), ms(&mut direct, 0.99));
        let (g50, g99) = (ms(&mut through, 0.5), ms(&mut through, 0.99));
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
    let daemon = std::fs::read_to_string(home.dir.join("opencode-manager.lock"))
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
