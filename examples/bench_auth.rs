//! Unauthenticated requests cost the daemon O(1): requests with a wrong bearer token against the
//! gateway while every Project's `.env` is 60 KiB (just under the 64 KiB limit), in one run:
//! - 500 wrong-token `POST /mcp` one after another, p50 and p99, beside 500 `GET /health` (no
//!   token check at all) as the baseline, with our client (reqwest) and with Python's httpx;
//! - while 8 clients send wrong-token requests as fast as they can: `/health` latency and the
//!   CLI's `list` time, beside the same measured with no load.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_auth -- [--requests N] [--projects N]
//! ```
//! Needs git, python3 (a venv with httpx is made under target/) and the fake OpenCode (built with
//! `--all-features`): the Instances are idle, only the gateway's door is measured.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Home, arg, file_repo, free_port, manifest, ms, pyclient};

const HTTPX_PROGRAM: &str = r#"
import json, sys, time, httpx
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
samples = []
with httpx.Client() as client:
    for i in range(n + 20):
        t = time.perf_counter()
        r = client.post(url, content=body, headers=headers)
        if i >= 20:
            samples.append(time.perf_counter() - t)
        assert r.status_code == 401, r.status_code
samples.sort()
pick = lambda p: samples[round((len(samples) - 1) * p)] * 1000
print(json.dumps({"p50": pick(0.5), "p99": pick(0.99)}))
"#;

fn main() {
    let requests = arg("--requests", 500);
    let projects = arg("--projects", 10);
    let scratch = tempfile::tempdir().unwrap();
    let gateway_port = free_port();
    let port_min = 42000 + (std::process::id() % 1000) as u16 * 10;
    let home = Home::new(
        scratch.path().join("home"),
        &format!(
            "allow_file = true\ngateway_port = {gateway_port}\nport_min = {port_min}\nport_max = {}\nidle_timeout_secs = 0\n",
            port_min + 9 + projects as u16
        ),
        manifest("target/release/fake-opencode"),
    );
    let repo = file_repo(scratch.path());
    for i in 0..projects {
        let name = format!("p{i}");
        let reply = home.cli(&["start", &name, "--git-url", &repo]);
        assert_eq!(reply["status"], "success", "{reply}");
        // Pad the .env to 60 KiB with comments: what a request used to make the daemon read.
        let env = home.dir.join(format!("opencode-sandboxes/{name}/.env"));
        let mut text = std::fs::read_to_string(&env).unwrap();
        while text.len() < 60 * 1024 {
            text.push_str("# padding padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&env, text).unwrap();
    }
    let url = format!("http://127.0.0.1:{gateway_port}/mcp");
    let health_url = format!("http://127.0.0.1:{gateway_port}/health");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let wrong = |client: &reqwest::Client, i: usize| {
        client
            .post(&url)
            .bearer_auth(format!("wrong-token-{i:032}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
    };
    let (mut refused, mut health) = runtime.block_on(async {
        for i in 0..20 {
            wrong(&http, i).await.unwrap();
            http.get(&health_url).send().await.unwrap();
        }
        let mut refused = Vec::with_capacity(requests);
        let mut health = Vec::with_capacity(requests);
        for i in 0..requests {
            let t = Instant::now();
            let response = wrong(&http, i).await.unwrap();
            assert_eq!(response.status(), 401);
            response.bytes().await.unwrap();
            refused.push(t.elapsed());
            let t = Instant::now();
            let response = http.get(&health_url).send().await.unwrap();
            assert!(response.status().is_success());
            response.bytes().await.unwrap();
            health.push(t.elapsed());
        }
        (refused, health)
    });
    let httpx = pyclient::run(
        HTTPX_PROGRAM,
        &[url.clone(), "wrong-token".repeat(4), requests.to_string()],
    );

    // Under a flood of wrong tokens: /health and the CLI.
    let time_cli = || {
        let mut samples: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(home.cli(&["list"])["status"], "success");
                t.elapsed()
            })
            .collect();
        ms(&mut samples, 0.5)
    };
    let cli_idle = time_cli();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, http, url) = (stop.clone(), sent.clone(), http.clone(), url.clone());
            runtime.spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let response = http
                        .post(&url)
                        .bearer_auth(format!("flood-{i:040}"))
                        .body("{}")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 401);
                    response.bytes().await.unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let flood_started = Instant::now();
    let mut health_loaded = runtime.block_on(async {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            http.get(&health_url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            samples.push(t.elapsed());
        }
        samples
    });
    let cli_loaded = time_cli();
    stop.store(true, Ordering::Relaxed);
    let flood_secs = flood_started.elapsed().as_secs_f64();
    for task in flood {
        runtime.block_on(task).unwrap();
    }
    let flood_rate = sent.load(Ordering::Relaxed) as f64 / flood_secs;

    println!(
        "Wrong-token requests with {projects} projects whose .env is 60 KiB ({requests} each, milliseconds)\n"
    );
    println!("| request | p50 | p99 |\n|---|---|---|");
    println!(
        "| GET /health, no token check (baseline) | {:.3} | {:.3} |",
        ms(&mut health, 0.5),
        ms(&mut health, 0.99)
    );
    let (r50, r99) = (ms(&mut refused, 0.5), ms(&mut refused, 0.99));
    println!("| POST /mcp, wrong token, reqwest | {r50:.3} | {r99:.3} |");
    println!(
        "| POST /mcp, wrong token, httpx 0.28.1 | {:.3} | {:.3} |",
        httpx["p50"].as_f64().unwrap(),
        httpx["p99"].as_f64().unwrap()
    );
    println!("\nWhile 8 clients sent wrong tokens ({flood_rate:.0} requests/s, all 401):\n");
    println!("| | idle | under the flood |\n|---|---|---|");
    let (h_idle, h_loaded) = (ms(&mut health, 0.5), ms(&mut health_loaded, 0.5));
    println!("| GET /health p50 (ms) | {h_idle:.3} | {h_loaded:.3} |");
    println!("| opencode-manager list, median of 5 (ms) | {cli_idle:.1} | {cli_loaded:.1} |");
    let worst = r50.max(httpx["p50"].as_f64().unwrap());
    println!(
        "\ngoal: wrong-token p50 under 5 ms: {}",
        if worst < 5.0 { "met" } else { "NOT met" }
    );
}
