//! Many Projects within a memory budget: a real OpenCode per Project (the fake OpenAI-compatible
//! provider on loopback), `--projects` of them registered (200), a `memory_budget` that holds about
//! `--live` of them (30), then `--calls` Gateway calls (1,000) from `--clients` rmcp clients (8),
//! each to a Project drawn from a Zipf popularity (s = 1.1): a call to a parked Project starts it
//! on demand, parking the least recently active ones.
//!
//! Reported: p50/p99 of calls to parked and to live Projects; the live count and the instances'
//! memory (RSS of every process of the home's Instances, read from `/proc`) sampled every 100 ms,
//! against the budget; failed calls. A call is to a live Project when the state file named the
//! same running launch of it a second before the call (ten samples earlier: an Instance answers
//! its first call slower, while OpenCode sets itself up) and in the sample after; a call to a
//! Project not running before it is to a parked one; the rest (a launch younger than a second, or
//! parked meanwhile) are counted apart. Baselines, in the same run and the same conditions (the fleet's idle Instances
//! around, the machine quiet before each): OpenCode's own warm start plus a first request
//! (`opencode serve` spawned directly in a clone of the same repository, until `GET /session`
//! answers), each paired with a call to a parked Project by one client alone; and, while the
//! clients run, an observer that asks one live Instance for `GET /session` directly and then the
//! same through the Gateway.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_fleet [-- --projects 200 --live 30 --calls 1000 --clients 8]
//! ```
//!
//! The Gateway keeps each live Instance's session list until that Instance's event stream says a
//! session changed (`gateway/session_lists.rs`); nothing changes sessions here, so most calls to
//! a live Project are answered from it: the report says how many, from the daemon's `/metrics`.
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

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// One 100 ms sample: the running launch of each Project (from the state file) and the RSS of
/// every process of the home's Instances.
#[derive(Default, Clone)]
struct Sample {
    running: HashMap<String, String>,
    rss: u64,
}

/// Reads the samples; remembers which pids are the home's Instances (their environ is read once).
struct Sampler {
    state: PathBuf,
    marker: String,
    ours: HashMap<u32, bool>,
}

impl Sampler {
    fn sample(&mut self) -> Sample {
        let mut running = HashMap::new();
        if let Ok(state) = std::fs::read_to_string(&self.state)
            && let Ok(state) = serde_json::from_str::<serde_json::Value>(&state)
            && let Some(projects) = state["projects"].as_object()
        {
            for (name, record) in projects {
                if record["instance"]["status"] == "running"
                    && let Some(id) = record["instance"]["launch_id"].as_str()
                {
                    running.insert(name.clone(), id.to_owned());
                }
            }
        }
        let mut rss = 0;
        let mut seen = HashMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let ours = match self.ours.get(&pid) {
                Some(ours) => *ours,
                None => std::fs::read(entry.path().join("environ")).is_ok_and(|environ| {
                    environ
                        .split(|b| *b == 0)
                        .any(|e| e.starts_with(self.marker.as_bytes()))
                }),
            };
            seen.insert(pid, ours);
            if !ours {
                continue;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            rss += status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        self.ours = seen;
        Sample { running, rss }
    }
}

/// Waits (up to 15 s) until the machine's CPUs were at least 90% idle over 200 ms.
fn quiet() {
    fn idle_total() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        (cpu[3] + cpu[4], cpu.iter().sum())
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let (idle0, total0) = idle_total();
        std::thread::sleep(Duration::from_millis(200));
        let (idle1, total1) = idle_total();
        if (idle1 - idle0) as f64 >= 0.9 * (total1 - total0).max(1) as f64 {
            return;
        }
    }
}

/// OpenCode's own warm start plus a first request: `opencode serve` spawned directly in `cwd`
/// with its directories under `dir`, until `GET /session` answers.
fn bare_start(opencode: &Path, dir: &Path, cwd: &Path, config: &str) -> Duration {
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
        .current_dir(cwd)
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

/// How the daemon answered its session lists (`kept`, `asked`), from its `/metrics`.
fn list_answers(home: &Path, dashboard: u16) -> (u64, u64) {
    let token = std::fs::read_to_string(home.join("mcp-http-token")).unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", dashboard)).unwrap();
    stream
        .write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{dashboard}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                token.trim()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let count = |answer: &str| {
        let prefix =
            format!("opencode_manager_gateway_session_lists_total{{answer=\"{answer}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    (count("kept"), count("asked"))
}

fn session_list(project: &str) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new("opencode-session-list");
    params.arguments = serde_json::json!({ "server": project })
        .as_object()
        .cloned();
    params
}

/// One call of the load: to whom, the last sample before it, the last sample when it ended, how
/// long it took, whether it succeeded.
struct Call {
    project: String,
    before: usize,
    after: usize,
    took: Duration,
    ok: bool,
}

/// One observation: the sample before, OpenCode asked directly, the same through the Gateway,
/// the sample after.
type Observed = (usize, Duration, Duration, usize);

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

    let gateway = free_port();
    let dashboard = free_port();
    let home = Home::new(
        dir.path().join("home"),
        &format!(
            "allow_file = true\ngateway_port = {gateway}\ndashboard_port = {dashboard}\nidle_timeout_secs = 0\nport_min = 20000\nport_max = 20999\n\
             memory_budget = \"{}M\"\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\nOPENCODE_CONFIG_CONTENT = {:?}\n",
            live_goal * PER_INSTANCE_MIB,
            config
        ),
        opencode.clone(),
    );
    let url = file_repo(dir.path());
    // Registered by two callers at once (each start clones, launches, and parks what the
    // budget needs).
    let registering = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= projects {
                        break;
                    }
                    let reply = home.cli(&["start", &format!("p{n:03}"), "--git-url", &url]);
                    assert_eq!(reply["status"], "success", "p{n:03}: {reply}");
                }
            });
        }
    });
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
    let mut sampler = Sampler {
        state: home.dir.join("opencode-state.json"),
        marker,
        ours: HashMap::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Paired on a quiet machine with the fleet's idle Instances around: OpenCode's own warm
    // start (its directories used once before, as a parked Project's are, in a clone of the same
    // repository) plus its first request, then a call to a parked Project by one client alone
    // (which parks another).
    let bare_dir = dir.path().join("bare");
    let bare_repo = dir.path().join("bare-repo");
    let cloned = Command::new("git")
        .args(["clone", "-q", &url])
        .arg(&bare_repo)
        .status()
        .unwrap();
    assert!(cloned.success());
    bare_start(&opencode, &bare_dir, &bare_repo, &config);
    let (mut bare, mut alone) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        let client = connect(gateway, &token).await;
        for n in 0..10 {
            tokio::task::block_in_place(quiet);
            bare.push(tokio::task::block_in_place(|| {
                bare_start(&opencode, &bare_dir, &bare_repo, &config)
            }));
            tokio::task::block_in_place(quiet);
            let running = tokio::task::block_in_place(|| sampler.sample().running);
            let Some(project) = (0..projects)
                .map(|k| format!("p{k:03}"))
                .filter(|p| !running.contains_key(p))
                .nth(n)
            else {
                break;
            };
            let begun = Instant::now();
            let result = client.call_tool(session_list(&project)).await.unwrap();
            assert_ne!(result.is_error, Some(true), "{result:?}");
            alone.push(begun.elapsed());
        }
        let _ = client.cancel().await;
    });

    // Sample the running launches and the memory every 100 ms while the calls run.
    let done = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(vec![sampler.sample()]));
    let sampling = {
        let (done, samples) = (done.clone(), samples.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let sample = sampler.sample();
                samples.lock().unwrap().push(sample);
            }
        })
    };
    let seq = {
        let samples = samples.clone();
        move || samples.lock().unwrap().len() - 1
    };

    let draws = Arc::new(Mutex::new(zipf_calls(projects, 1.1, calls)));
    let results: Arc<Mutex<Vec<Call>>> = Arc::default();
    let observed: Arc<Mutex<Vec<Observed>>> = Arc::default();
    let calling = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (draws, results, token, seq) =
                (draws.clone(), results.clone(), token.clone(), seq.clone());
            tasks.push(tokio::spawn(async move {
                let client = connect(gateway, &token).await;
                loop {
                    let Some(n) = draws.lock().unwrap().pop() else {
                        break;
                    };
                    let project = format!("p{n:03}");
                    let before = seq();
                    let begun = Instant::now();
                    let result = client.call_tool(session_list(&project)).await;
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
                    let after = seq();
                    results.lock().unwrap().push(Call {
                        project,
                        before,
                        after,
                        took,
                        ok,
                    });
                }
                let _ = client.cancel().await;
            }));
        }
        // The observer: the most popular Project's Instance asked directly, then through the
        // Gateway, every 50 ms while the clients run.
        let observer = {
            let (done, observed, token, seq, home_dir) = (
                Arc::new(AtomicBool::new(false)),
                observed.clone(),
                token.clone(),
                seq.clone(),
                home.dir.clone(),
            );
            let password = home.env_value("p000", "OPENCODE_SERVER_PASSWORD");
            let stop = done.clone();
            let task = tokio::spawn(async move {
                let client = connect(gateway, &token).await;
                let http = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let state: serde_json::Value = serde_json::from_str(
                        &std::fs::read_to_string(home_dir.join("opencode-state.json"))
                            .unwrap_or_default(),
                    )
                    .unwrap_or_default();
                    let record = &state["projects"]["p000"];
                    let Some(port) = record["port"].as_u64() else {
                        continue;
                    };
                    if record["instance"]["status"] != "running" {
                        continue;
                    }
                    let before = seq();
                    let begun = Instant::now();
                    let direct = http
                        .get(format!("http://127.0.0.1:{port}/session"))
                        .basic_auth("opencode", Some(&password))
                        .send()
                        .await;
                    let direct_took = begun.elapsed();
                    if !direct.is_ok_and(|r| r.status().is_success()) {
                        continue;
                    }
                    let begun = Instant::now();
                    let via = client.call_tool(session_list("p000")).await;
                    let via_took = begun.elapsed();
                    if via.is_ok_and(|r| r.is_error != Some(true)) {
                        observed
                            .lock()
                            .unwrap()
                            .push((before, direct_took, via_took, seq()));
                    }
                }
                let _ = client.cancel().await;
            });
            (done, task)
        };
        for task in tasks {
            task.await.unwrap();
        }
        observer.0.store(true, Ordering::SeqCst);
        observer.1.await.unwrap();
    });
    let elapsed = calling.elapsed();
    done.store(true, Ordering::SeqCst);
    sampling.join().unwrap();
    let samples = samples.lock().unwrap().clone();

    // Live: the same running launch a second before the call and in the first sample after.
    let same_launch = |project: &str, before: usize, after: usize| {
        let after = (after + 1).min(samples.len() - 1);
        let settled = before.saturating_sub(10);
        [before, after].iter().all(|n| {
            samples[settled].running.contains_key(project)
                && samples[*n].running.get(project) == samples[settled].running.get(project)
        })
    };
    let was_running = |project: &str, before: usize| samples[before].running.contains_key(project);
    let results = std::mem::take(&mut *results.lock().unwrap());
    let failed = results.iter().filter(|c| !c.ok).count();
    let (mut parked, mut live, mut other) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(to) = std::env::var_os("BENCH_FLEET_CALLS") {
        let lines: Vec<String> = results
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {} {:.3} {}",
                    c.project,
                    c.before,
                    c.after,
                    if same_launch(&c.project, c.before, c.after) {
                        "live"
                    } else if was_running(&c.project, c.before) {
                        "other"
                    } else {
                        "parked"
                    },
                    c.took.as_secs_f64() * 1000.0,
                    c.ok
                )
            })
            .collect();
        std::fs::write(to, lines.join("\n")).unwrap();
    }
    for call in results.iter().filter(|c| c.ok) {
        if same_launch(&call.project, call.before, call.after) {
            live.push(call.took);
        } else if was_running(&call.project, call.before) {
            other.push(call.took);
        } else {
            parked.push(call.took);
        }
    }
    let (mut direct, mut via): (Vec<Duration>, Vec<Duration>) = observed
        .lock()
        .unwrap()
        .iter()
        .filter(|(before, _, _, after)| same_launch("p000", *before, *after))
        .map(|(_, d, v, _)| (*d, *v))
        .unzip();
    // A class with no call shows as zero rather than failing the report.
    for class in [
        &mut parked,
        &mut live,
        &mut other,
        &mut direct,
        &mut via,
        &mut alone,
    ] {
        if class.is_empty() {
            class.push(Duration::ZERO);
        }
    }
    let max_live = samples.iter().map(|s| s.running.len()).max().unwrap_or(0);
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let over = samples.iter().filter(|s| s.rss > budget).count();
    let bare_p50 = ms(&mut bare, 0.5);
    let alone_p50 = ms(&mut alone, 0.5);
    let live_p50 = ms(&mut live, 0.5);

    println!(
        "Fleet: {projects} projects (real OpenCode, fake provider), memory_budget {} MiB (~{live_goal} live), {calls} gateway calls, {clients} clients, Zipf s = 1.1; {:.0} s of calls\n",
        budget / 1024 / 1024,
        elapsed.as_secs_f64()
    );
    println!("| calls to | count | p50 | p99 | goal |\n|---|---|---|---|---|");
    println!(
        "| a parked project, one client alone (each call parks another) | {} | {alone_p50:.0} ms | {:.0} ms | p50 ≤ baseline + 300 ms ({:.0} ms): {} |",
        alone.len(),
        ms(&mut alone, 0.99),
        bare_p50 + 300.0,
        if alone_p50 <= bare_p50 + 300.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "| baseline: `opencode serve` warm start + first request, paired with the line above | {} | {bare_p50:.0} ms | {:.0} ms | |",
        bare.len(),
        ms(&mut bare, 0.99)
    );
    println!(
        "| parked projects, {clients} clients (waiting for start slots) | {} | {:.0} ms | {:.0} ms | |",
        parked.len(),
        ms(&mut parked, 0.5),
        ms(&mut parked, 0.99),
    );
    println!(
        "| live projects, {clients} clients | {} | {live_p50:.2} ms | {:.2} ms | p50 < 2 ms: {} |",
        live.len(),
        ms(&mut live, 0.99),
        if live_p50 < 2.0 { "met" } else { "NOT met" }
    );
    println!(
        "| projects started less than a second before, or parked meanwhile | {} | {:.0} ms | {:.0} ms | |",
        other.len(),
        ms(&mut other, 0.5),
        ms(&mut other, 0.99),
    );
    println!(
        "| observer, meanwhile: p000 through the Gateway | {} | {:.2} ms | {:.2} ms | |",
        via.len(),
        ms(&mut via, 0.5),
        ms(&mut via, 0.99),
    );
    println!(
        "| observer, meanwhile: p000's OpenCode asked directly (`GET /session`) | {} | {:.2} ms | {:.2} ms | |",
        direct.len(),
        ms(&mut direct, 0.5),
        ms(&mut direct, 0.99),
    );
    // The daemon's log, for where the time went (each launch and end logs its steps).
    if let Some(to) = std::env::var_os("BENCH_FLEET_LOG") {
        std::fs::copy(home.dir.join("opencode-logs/manager.log"), to).unwrap();
    }
    let (kept, asked) = list_answers(&home.dir, dashboard);
    println!(
        "\nSession lists the Gateway answered with the list it kept (current by the Instance's event stream): {kept}; asked of OpenCode: {asked}."
    );
    println!(
        "\nFailed calls: {failed}. Sampled every 100 ms ({} samples): live instances at most {max_live}; their memory at most {:.0} MiB of the {} MiB budget; samples over the budget: {over}.",
        samples.len(),
        max_rss as f64 / MIB,
        budget / 1024 / 1024
    );
}
