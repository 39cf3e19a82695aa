//! Many Projects within a memory budget: a real OpenCode per Project (the fake OpenAI-compatible
//! provider on loopback), `--projects` of them registered (200), a `memory_budget` that holds about
//! `--live` of them (30), then `--calls` Gateway calls (1,000) from `--clients` rmcp clients (8),
//! each to a Project drawn from a Zipf popularity (s = 1.1): a call to a parked Project starts it
//! on demand, parking the least recently active ones.
//!
//! Reported: p50/p99 of calls to parked and to live Projects; the live count and the instances'
//! memory (RSS of every process of the home's Instances, read from `/proc`) sampled every 100 ms,
//! against the budget; failed calls. The baseline: OpenCode's own warm start plus a first request
//! (`opencode serve` spawned directly, until `GET /session` answers), in the same run.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_fleet [-- --projects 200 --live 30 --calls 1000 --clients 8]
//! ```
//!
//! `BENCH_FLEET_LOG=<file>` keeps the daemon's log (each launch and end logs how long its steps
//! took).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/fake_llm.rs"]
mod fake_llm;

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use support::{Home, arg, connect, file_repo, free_port, manifest, ms};

const MIB: f64 = 1024.0 * 1024.0;
/// What one OpenCode with the fake provider holds once it has answered, about (measured here):
/// the budget is `--live` of these.
const PER_INSTANCE_MIB: u64 = 560;

/// A tiny deterministic generator (xorshift), so runs draw the same calls.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Project indices drawn from Zipf(s) over `n`, by inverting the cumulative weights.
fn zipf_calls(n: usize, s: f64, calls: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(n);
    let mut sum = 0.0;
    for w in &weights {
        sum += w / total;
        cumulative.push(sum);
    }
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    (0..calls)
        .map(|_| {
            let u = draw.next();
            cumulative.iter().position(|c| *c >= u).unwrap_or(n - 1)
        })
        .collect()
}

/// The live Instances of the home (by their marker) and their total RSS.
fn instances(home_marker: &str) -> (HashSet<String>, u64) {
    let mut live = HashSet::new();
    let mut rss = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(environ) = std::fs::read(path.join("environ")) else {
            continue;
        };
        let Some(marker) = environ
            .split(|b| *b == 0)
            .find_map(|e| e.strip_prefix(home_marker.as_bytes()))
        else {
            continue;
        };
        // What follows `OCM_INSTANCE=<home-hash>:` is `<project>:<launch>`.
        let marker = String::from_utf8_lossy(marker);
        if let Some(project) = marker.split(':').next() {
            live.insert(project.to_owned());
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        rss += status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
    }
    (live, rss)
}

/// OpenCode's own warm start plus a first request: `opencode serve` spawned directly, until
/// `GET /session` answers.
fn bare_start(opencode: &std::path::Path, dir: &std::path::Path, config: &str) -> Duration {
    let port = free_port();
    for sub in [
        "home",
        "data",
        "config/opencode/node_modules",
        "state",
        "cache",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("config/opencode/package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#,
    )
    .unwrap();
    let begun = Instant::now();
    let mut child = Command::new(opencode)
        .args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_CONFIG_CONTENT", config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            // A connection accepted before the server is ready may never be answered: retry.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
            let _ = stream.write_all(
                format!(
                    "GET /session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            // The status line is enough (the server may keep the connection open).
            let mut status = [0u8; 12];
            if stream.read_exact(&mut status).is_ok() && status.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "bare opencode never answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = begun.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn main() {
    let projects = arg("--projects", 200);
    let live_goal = arg("--live", 30) as u64;
    let calls = arg("--calls", 1000);
    let clients = arg("--clients", 8);
    let budget = live_goal * PER_INSTANCE_MIB * 1024 * 1024;
    let llm = fake_llm::FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let opencode = manifest(".tools/node_modules/.bin/opencode");
    let config = llm.config_content("allow");

    // The baseline first, on a quiet machine: OpenCode's warm start (its directories used once
    // before, as a parked Project's are) plus its first request.
    let bare_dir = dir.path().join("bare");
    bare_start(&opencode, &bare_dir, &config);
    let mut bare: Vec<Duration> = (0..10)
        .map(|_| bare_start(&opencode, &bare_dir, &config))
        .collect();

    let gateway = free_port();
    let home = Home::new(
        dir.path().join("home"),
        &format!(
            "allow_file = true\ngateway_port = {gateway}\nidle_timeout_secs = 0\nport_min = 20000\nport_max = 20999\n\
             memory_budget = \"{}M\"\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\nOPENCODE_CONFIG_CONTENT = {:?}\n",
            live_goal * PER_INSTANCE_MIB,
            config
        ),
        opencode.clone(),
    );
    let url = file_repo(dir.path());
    let registering = Instant::now();
    for n in 0..projects {
        let reply = home.cli(&["start", &format!("p{n:03}"), "--git-url", &url]);
        assert_eq!(reply["status"], "success", "p{n:03}: {reply}");
    }
    eprintln!(
        "… {projects} projects registered in {:.0} s",
        registering.elapsed().as_secs_f64()
    );
    let marker = format!(
        "OCM_INSTANCE={}",
        opencode_manager::sandbox::home_marker_prefix(&opencode_manager::config::Paths::new(
            home.dir.clone()
        ))
    );
    let token = std::fs::read_to_string(home.dir.join("global-mcp-token"))
        .unwrap()
        .trim()
        .to_owned();

    // One client alone first: a call to a parked Project at a time (each parks another), the
    // latency OpenCode's own start is compared with.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut alone: Vec<Duration> = runtime.block_on(async {
        let client = connect(gateway, &token).await;
        let mut took = Vec::new();
        for n in 0..10 {
            let live = instances(&marker).0;
            let Some(project) = (0..projects)
                .map(|k| format!("p{k:03}"))
                .filter(|p| !live.contains(p))
                .nth(n)
            else {
                break;
            };
            let mut params = CallToolRequestParams::new("opencode-session-list");
            params.arguments = serde_json::json!({ "server": project })
                .as_object()
                .cloned();
            let begun = Instant::now();
            let result = client.call_tool(params).await.unwrap();
            assert_ne!(result.is_error, Some(true), "{result:?}");
            took.push(begun.elapsed());
        }
        let _ = client.cancel().await;
        took
    });

    // Sample the live set and memory every 100 ms while the calls run.
    let done = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let live_now: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(instances(&marker).0));
    let sampler = {
        let (done, samples, live_now, marker) = (
            done.clone(),
            samples.clone(),
            live_now.clone(),
            marker.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let (live, rss) = instances(&marker);
                samples.lock().unwrap().push((live.len(), rss));
                *live_now.lock().unwrap() = live;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let draws = Arc::new(Mutex::new(zipf_calls(projects, 1.1, calls)));
    let results: Arc<Mutex<Vec<(bool, Duration, bool)>>> = Arc::default();
    let calling = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (draws, results, live_now, token) = (
                draws.clone(),
                results.clone(),
                live_now.clone(),
                token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = connect(gateway, &token).await;
                loop {
                    let Some(n) = draws.lock().unwrap().pop() else {
                        break;
                    };
                    let project = format!("p{n:03}");
                    let parked = !live_now.lock().unwrap().contains(&project);
                    let mut params = CallToolRequestParams::new("opencode-session-list");
                    params.arguments = serde_json::json!({ "server": project })
                        .as_object()
                        .cloned();
                    let begun = Instant::now();
                    let result = client.call_tool(params).await;
                    let took = begun.elapsed();
                    let ok = match result {
                        Ok(r) if r.is_error != Some(true) => true,
                        Ok(r) => {
                            eprintln!("… failed call to {project}: {:?}", r.content);
                            false
                        }
                        Err(err) => {
                            eprintln!("… failed call to {project}: {err}");
                            false
                        }
                    };
                    results.lock().unwrap().push((parked, took, ok));
                }
                let _ = client.cancel().await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = calling.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();

    let results = results.lock().unwrap().clone();
    let failed = results.iter().filter(|(_, _, ok)| !ok).count();
    let mut parked: Vec<Duration> = results.iter().filter(|r| r.0).map(|r| r.1).collect();
    let mut live: Vec<Duration> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
    // A class with no call shows as zero rather than failing the report.
    for class in [&mut parked, &mut live] {
        if class.is_empty() {
            class.push(Duration::ZERO);
        }
    }
    let samples = samples.lock().unwrap().clone();
    let max_live = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let over = samples.iter().filter(|s| s.1 > budget).count();
    let bare_p50 = ms(&mut bare, 0.5);

    println!(
        "Fleet: {projects} projects (real OpenCode, fake provider), memory_budget {} MiB (~{live_goal} live), {calls} gateway calls, {clients} clients, Zipf s = 1.1; {:.0} s of calls\n",
        budget / 1024 / 1024,
        elapsed.as_secs_f64()
    );
    println!("| calls to | count | p50 | p99 | goal |\n|---|---|---|---|---|");
    println!(
        "| a parked project, one client alone (each call parks another) | {} | {:.0} ms | {:.0} ms | p50 ≤ baseline + 300 ms ({:.0} ms): {} |",
        alone.len(),
        ms(&mut alone, 0.5),
        ms(&mut alone, 0.99),
        bare_p50 + 300.0,
        if ms(&mut alone, 0.5) <= bare_p50 + 300.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "| parked projects, {clients} clients (waiting for start slots) | {} | {:.0} ms | {:.0} ms | |",
        parked.len(),
        ms(&mut parked, 0.5),
        ms(&mut parked, 0.99),
    );
    println!(
        "| live projects | {} | {:.2} ms | {:.2} ms | p50 < 2 ms: {} |",
        live.len(),
        ms(&mut live, 0.5),
        ms(&mut live, 0.99),
        if ms(&mut live, 0.5) < 2.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "| baseline: `opencode serve` warm start + first request, 10 runs | 10 | {bare_p50:.0} ms | {:.0} ms | |",
        ms(&mut bare, 1.0)
    );
    // The daemon's log, for where the time went (each launch and end logs its steps).
    if let Some(to) = std::env::var_os("BENCH_FLEET_LOG") {
        std::fs::copy(home.dir.join("opencode-logs/manager.log"), to).unwrap();
    }
    println!(
        "\nFailed calls: {failed}. Sampled every 100 ms ({} samples): live instances at most {max_live}; their memory at most {:.0} MiB of the {} MiB budget; samples over the budget: {over}.",
        samples.len(),
        max_rss as f64 / MIB,
        budget / 1024 / 1024
    );
}
