//! The gateway's overhead and capacity, with ten real OpenCode projects running, in one run:
//! - with one project: `opencode-session-list` through the gateway against the same `GET /session` sent straight to
//!   OpenCode on a kept-alive connection, p50 and p99 over `--calls` calls each, with two clients:
//!   rmcp (Rust, protocol 2026-07-28, JSON replies, on a current-thread runtime) and Python's httpx as the official MCP SDK
//!   uses it (a 2025-11-25 session, each reply an SSE stream, one kept-alive connection);
//! - throughput with 50 concurrent rmcp clients spread over the projects, next to 50 concurrent
//!   direct clients, for `opencode-session-list` and for the lightest tool,
//!   `opencode-server-health`;
//! - CPU per call of the daemon, the instances and the clients;
//! - the daemon's RSS with the gateway open and the ten projects running, before and after.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_gateway -- [--calls N] [--projects N]
//! ```
//! Needs git, python3 with venv, and the pinned OpenCode (`scripts/test` installs it into
//! `.tools/`). The httpx venv is made under `target/bench-venv` on first use. The throughput runs
//! once more against the test-only fake OpenCode (hence `--all-features`), whose answers cost
//! next to nothing: that run shows the gateway's own capacity, the first what users get.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use rmcp::model::CallToolRequestParams;
use support::{Client, Home, arg, connect, file_repo, free_port, manifest, ms, pyclient};

/// Direct and through-the-gateway calls with httpx, as the official Python SDK makes them.
const HTTPX_PROGRAM: &str = r#"
import json, sys, time, httpx
port, gateway, password, token, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def timed(call):
    samples = []
    for i in range(n + 20):
        t = time.perf_counter()
        call(i)
        if i >= 20:
            samples.append(time.perf_counter() - t)
    samples.sort()
    pick = lambda p: samples[round((len(samples) - 1) * p)] * 1000
    return pick(0.5), pick(0.99)
with httpx.Client(auth=("opencode", password)) as direct:
    def get(i):
        r = direct.get(f"http://127.0.0.1:{port}/session")
        assert r.status_code == 200, r.status_code
    d50, d99 = timed(get)
url = f"http://127.0.0.1:{gateway}/mcp"
headers = {"Authorization": "Bearer " + token, "Accept": "application/json, text/event-stream",
           "Content-Type": "application/json"}
with httpx.Client(headers=headers) as mcp:
    init = mcp.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"}}})
    assert init.status_code == 200, init.text
    mcp.headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
    mcp.headers["MCP-Protocol-Version"] = "2025-11-25"
    assert mcp.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    def call(i):
        r = mcp.post(url, json={"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {
            "name": "opencode-session-list", "arguments": {"server": "bench"}}})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        assert '"result"' in r.text and '"isError":true' not in r.text, r.text
    g50, g99 = timed(call)
print(json.dumps({"direct": [d50, d99], "gateway": [g50, g99]}))
"#;

async fn session_list(client: &Client) {
    call_tool(client, "opencode-session-list", "bench").await;
}

async fn call_tool(client: &Client, tool: &'static str, server: &str) {
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = serde_json::json!({ "server": server }).as_object().cloned();
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
}

fn daemon_rss_mib(home: &Home) -> f64 {
    let daemon = std::fs::read_to_string(home.dir.join("opencode-manager.lock"))
        .unwrap()
        .trim()
        .to_owned();
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// CPU time (user + system) a process has used, in microseconds.
fn cpu_us(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().map(|t| t.parse::<f64>().unwrap_or(0.0)).sum()
    });
    ticks * 10_000.0
}

/// CPU used so far by the daemon, the instances, and this process (the clients).
#[derive(Clone, Copy)]
struct Cpu {
    daemon: f64,
    instances: f64,
    clients: f64,
}

fn cpu(daemon: &str, instances: &[String]) -> Cpu {
    Cpu {
        daemon: cpu_us(daemon),
        instances: instances.iter().map(|p| cpu_us(p)).sum(),
        clients: cpu_us("self"),
    }
}

/// The benchmark's projects: `bench`, then `p1`, `p2`, ….
fn project_name(n: usize) -> String {
    if n == 0 {
        "bench".to_owned()
    } else {
        format!("p{n}")
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Runs `per_client` calls on each of `clients` tasks at once; returns calls per second.
async fn throughput<F, Fut>(clients: usize, per_client: usize, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                for _ in 0..per_client {
                    call(c).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (clients * per_client) as f64 / t.elapsed().as_secs_f64()
}

/// A home with `projects` running projects and its gateway open.
struct Fleet {
    home: Home,
    url: String,
    gateway_port: u16,
    token: String,
    names: Vec<String>,
    ports: Vec<u16>,
    passwords: Vec<String>,
    daemon_pid: String,
    instance_pids: Vec<String>,
}

impl Fleet {
    fn start(
        dir: &std::path::Path,
        opencode: std::path::PathBuf,
        projects: usize,
        port_base: u16,
    ) -> Fleet {
        let gateway_port = free_port();
        let home = Home::new(
            dir.join("home"),
            &format!(
                "allow_file = true\ngateway_port = {gateway_port}\nport_min = {port_base}\nport_max = {}\nidle_timeout_secs = 0\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n",
                port_base + 19
            ),
            opencode,
        );
        let url = file_repo(dir);
        let mut fleet = Fleet {
            home,
            url,
            gateway_port,
            token: String::new(),
            names: Vec::new(),
            ports: Vec::new(),
            passwords: Vec::new(),
            daemon_pid: String::new(),
            instance_pids: Vec::new(),
        };
        fleet.grow(projects);
        fleet.token = std::fs::read_to_string(fleet.home.dir.join("global-mcp-token"))
            .unwrap()
            .trim()
            .to_owned();
        fleet.daemon_pid = std::fs::read_to_string(fleet.home.dir.join("opencode-manager.lock"))
            .unwrap()
            .trim()
            .to_owned();
        fleet
    }

    /// Starts projects until `projects` run.
    fn grow(&mut self, projects: usize) {
        for n in self.names.len()..projects {
            let name = project_name(n);
            let reply = self.home.cli(&["start", &name, "--git-url", &self.url]);
            assert_eq!(reply["status"], "success", "{reply}");
            self.ports
                .push(reply["opencode_port"].as_u64().unwrap() as u16);
            self.instance_pids.push(reply["opencode_pid"].to_string());
            self.passwords
                .push(self.home.env_value(&name, "OPENCODE_SERVER_PASSWORD"));
            eprintln!("… {name} running");
            self.names.push(name);
        }
    }
}

/// Throughput of one OpenCode read, straight and through the gateway, and the CPU per call.
struct Rate {
    path: &'static str,
    tool: &'static str,
    direct: f64,
    gateway: f64,
    per_call: Cpu,
}

/// 50 clients at once on every core, client c calling project c mod N, straight and through the
/// gateway, with the heaviest read the bench uses (`GET /session`) and the lightest
/// (`GET /global/health`).
fn capacity(fleet: &Fleet, calls: usize) -> Vec<Rate> {
    let load = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    load.block_on(async {
        let clients = 50;
        let per_client = (2 * calls / clients).max(40);
        let direct = |path: &'static str| {
            let (http, ports, passwords) =
                (http.clone(), fleet.ports.clone(), fleet.passwords.clone());
            move |c: usize| {
                let (http, port) = (http.clone(), ports[c % ports.len()]);
                let password = passwords[c % passwords.len()].clone();
                async move {
                    let response = http
                        .get(format!("http://127.0.0.1:{port}{path}"))
                        .basic_auth("opencode", Some(&password))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success());
                    response.bytes().await.unwrap();
                }
            }
        };
        // Every instance serves a few hundred requests first: OpenCode (Bun) is slow until its
        // JIT has warmed up.
        throughput(clients, 4 * per_client, direct("/session")).await;
        throughput(clients, 4 * per_client, direct("/global/health")).await;
        let mut connected = Vec::new();
        for _ in 0..clients {
            connected.push(std::sync::Arc::new(
                connect(fleet.gateway_port, &fleet.token).await,
            ));
        }
        let mut rates = Vec::new();
        for (path, tool) in [
            ("/session", "opencode-session-list"),
            ("/global/health", "opencode-server-health"),
        ] {
            let direct_rate = throughput(clients, per_client, direct(path)).await;
            let (pool, names) = (connected.clone(), fleet.names.clone());
            let before = cpu(&fleet.daemon_pid, &fleet.instance_pids);
            let gateway = throughput(clients, per_client, move |c| {
                let client = pool[c].clone();
                let server = names[c % names.len()].clone();
                async move { call_tool(&client, tool, &server).await }
            })
            .await;
            let after = cpu(&fleet.daemon_pid, &fleet.instance_pids);
            let n = (clients * per_client) as f64;
            rates.push(Rate {
                path,
                tool,
                direct: direct_rate,
                gateway,
                per_call: Cpu {
                    daemon: (after.daemon - before.daemon) / n,
                    instances: (after.instances - before.instances) / n,
                    clients: (after.clients - before.clients) / n,
                },
            });
        }
        rates
    })
}

fn print_capacity(title: &str, rates: &[Rate]) {
    println!("\n{title}\n");
    println!(
        "| OpenCode endpoint | straight | through the gateway | CPU per call: daemon | instances | clients |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rates {
        println!(
            "| `GET {}` (`{}`) | {:.0}/s | {:.0}/s | {:.0} µs | {:.0} µs | {:.0} µs |",
            r.path,
            r.tool,
            r.direct,
            r.gateway,
            r.per_call.daemon,
            r.per_call.instances,
            r.per_call.clients
        );
    }
}

/// Sequential latency with rmcp on one thread (as the daemon and the CLI run): the difference
/// between the two paths is then the gateway's work and the MCP client's, not thread hand-offs
/// in this process. Returns (direct p50, direct p99, gateway p50, gateway p99) in ms.
fn rust_latency(fleet: &Fleet, calls: usize) -> (f64, f64, f64, f64) {
    let latency = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (port, password) = (fleet.ports[0], fleet.passwords[0].clone());
    let direct_once = || {
        let (http, password) = (http.clone(), password.clone());
        async move {
            let response = http
                .get(format!("http://127.0.0.1:{port}/session"))
                .basic_auth("opencode", Some(&password))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            response.bytes().await.unwrap();
        }
    };
    latency.block_on(async {
        for _ in 0..20 {
            direct_once().await;
        }
        let mut direct = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            direct_once().await;
            direct.push(t.elapsed());
        }
        let client = connect(fleet.gateway_port, &fleet.token).await;
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
        (
            ms(&mut direct, 0.5),
            ms(&mut direct, 0.99),
            ms(&mut through, 0.5),
            ms(&mut through, 0.99),
        )
    })
}

/// The same with httpx, as the official Python MCP SDK makes its calls.
fn python_latency(fleet: &Fleet, calls: usize) -> (f64, f64, f64, f64) {
    let py = pyclient::run(
        HTTPX_PROGRAM,
        &[
            fleet.ports[0].to_string(),
            fleet.gateway_port.to_string(),
            fleet.passwords[0].clone(),
            fleet.token.clone(),
            calls.to_string(),
        ],
    );
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    (
        num(&py["direct"][0]),
        num(&py["direct"][1]),
        num(&py["gateway"][0]),
        num(&py["gateway"][1]),
    )
}

fn main() {
    let calls = arg("--calls", 1000);
    let projects = arg("--projects", 10);
    let base = 43000 + (std::process::id() % 500) as u16 * 40;
    let scratch = tempfile::tempdir().unwrap();
    // Latency with one project, as users see a call; then the rest start for the load.
    let mut real = Fleet::start(
        scratch.path(),
        manifest(".tools/node_modules/.bin/opencode"),
        1,
        base,
    );
    let rust = rust_latency(&real, calls);
    let python = python_latency(&real, calls);
    real.grow(projects);
    let rss_before = daemon_rss_mib(&real.home);
    let real_rates = capacity(&real, calls);
    let rss_after = daemon_rss_mib(&real.home);
    drop(real);
    let fast_dir = tempfile::tempdir().unwrap();
    let fast = Fleet::start(
        fast_dir.path(),
        manifest("target/release/fake-opencode"),
        projects,
        base + 20,
    );
    let fast_rates = capacity(&fast, calls);
    drop(fast);

    println!("Gateway overhead, {calls} calls each, one project (milliseconds)\n");
    println!("| client | path | p50 | p99 |\n|---|---|---|---|");
    for (who, (d50, d99, g50, g99)) in [
        ("rmcp (Rust, 2026-07-28)", rust),
        ("httpx (Python SDK's, 2025-11-25 session, SSE)", python),
    ] {
        println!("| {who} | `GET /session` straight to OpenCode | {d50:.3} | {d99:.3} |");
        println!("| {who} | `opencode-session-list` through the gateway | {g50:.3} | {g99:.3} |");
        println!("| {who} | overhead | {:.3} | {:.3} |", g50 - d50, g99 - d99);
    }
    let (rust_over, py_over) = (rust.2 - rust.0, python.2 - python.0);
    println!(
        "\ngoal: p50 overhead under 0.5 ms: rmcp {rust_over:.3} ms ({}), httpx {py_over:.3} ms ({})",
        verdict(rust_over < 0.5),
        verdict(py_over < 0.5)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    print_capacity(
        &format!(
            "Throughput, 50 concurrent clients over {projects} real OpenCode projects, {cores} cores"
        ),
        &real_rates,
    );
    print_capacity(
        &format!(
            "The same over {projects} fake OpenCode instances (answers that cost nothing): the gateway's own capacity"
        ),
        &fast_rates,
    );
    let best = fast_rates.iter().map(|r| r.gateway).fold(0.0, f64::max);
    println!(
        "\ngoal: ≥ 2,000 calls/s through the gateway with 50 clients: {best:.0} ({})",
        verdict(best >= 2000.0)
    );
    println!(
        "Daemon RSS with the gateway open and {projects} projects running: {rss_before:.1} MiB before the \
         calls, {rss_after:.1} MiB after (goal < 20 MiB: {})",
        verdict(rss_before.max(rss_after) < 20.0)
    );
}
