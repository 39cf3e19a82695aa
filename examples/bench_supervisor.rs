//! The supervisor's two user-visible delays, with the real OpenCode, in one run:
//! - cold start on demand: a parked (idle) project answering its first gateway call
//!   (`opencode-session-list`), p50 over 20 runs, next to a plain `opencode-manager start` of the
//!   same stopped project;
//! - recovery: SIGKILL of an instance until its relaunch is spawned (against the backoff the
//!   supervisor chose, from manager.log) and until it is healthy again (4 runs, with the default
//!   backoff growing 1 s, 2 s, 4 s, 8 s as the failures add up; a fifth within ten minutes gives
//!   up).
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench_supervisor -- [--runs N]
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Home, arg, file_repo, free_port, manifest};

/// The home, and waiting on its state file.
struct Bench {
    home: Home,
}

impl Bench {
    fn cli(&self, args: &[&str]) -> Value {
        self.home.cli(args)
    }

    fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.home.dir.join("opencode-state.json")).unwrap_or_default(),
        )
        .unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.dir.join("opencode-logs/manager.log")).unwrap_or_default()
    }

    fn wait(&self, what: &str, mut done: impl FnMut(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(&self.state()) {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.home.dir.join("opencode-logs/manager.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "timed out waiting for {what}; state: {}\nlog:\n{}",
                    self.state(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One stateless MCP call to the gateway; returns when the reply is complete.
fn gateway_call(port: u16, token: &str) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "opencode-session-list", "arguments": {"server": "p"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
         Mcp-Name: opencode-session-list\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && !response.contains("\"isError\":true"),
        "{response}"
    );
    response
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    )
}

fn main() {
    let runs = arg("--runs", 20);
    let scratch = tempfile::tempdir().unwrap();
    let gateway_port = free_port();
    let bench = Bench {
        home: Home::new(
            scratch.path().join("home"),
            &format!(
                "allow_file = true\ngateway_port = {gateway_port}\nidle_timeout_secs = 1\nsupervisor_probe_interval_secs = 1\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n"
            ),
            manifest(".tools/node_modules/.bin/opencode"),
        ),
    };
    let url = file_repo(scratch.path());
    assert_eq!(
        bench.cli(&["start", "p", "--git-url", &url])["status"],
        "success"
    );
    let token = std::fs::read_to_string(bench.home.dir.join("global-mcp-token"))
        .unwrap()
        .trim()
        .to_owned();
    let status_of = |s: &Value| {
        s["projects"]["p"]["instance"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    let (mut on_demand, mut plain) = (Vec::new(), Vec::new());
    for run in 0..runs {
        bench.wait("the project to be parked", |s| status_of(s) == "idle");
        let t = Instant::now();
        gateway_call(gateway_port, &token);
        on_demand.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(bench.cli(&["stop", "p"])["status"], "success");
        let t = Instant::now();
        assert_eq!(
            bench.cli(&["start", "p", "--git-url", &url])["status"],
            "success"
        );
        plain.push(t.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "… run {}/{runs}: on demand {:.0} ms, plain start {:.0} ms",
            run + 1,
            on_demand[run],
            plain[run]
        );
    }

    // Recovery after SIGKILL, with idle parking out of the way (activity every run). Four kills:
    // a fifth within ten minutes would (rightly) make the supervisor give up. Each kill counts as
    // a failure, so the backoff grows 1 s, 2 s, 4 s, 8 s (plus up to a quarter in jitter) across
    // the runs. The daemon logs the backoff it chose and the relaunch's spawn, each with its
    // timestamp (the same clock as the kill's).
    let mut recovery = Vec::new();
    for run in 0..runs.min(4) {
        bench.wait("the project to run", |s| {
            status_of(s) == "running" || status_of(s) == "idle"
        });
        if status_of(&bench.state()) == "idle" {
            gateway_call(gateway_port, &token);
        }
        let pid = bench.state()["projects"]["p"]["instance"]["proc"]["pid"]
            .as_i64()
            .unwrap();
        let log_before = bench.log().len();
        let killed_at = seconds_of_day(std::time::SystemTime::now());
        let t = Instant::now();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        bench.wait("the instance to be healthy again", |s| {
            s["projects"]["p"]["instance"]["status"] == "running"
                && s["projects"]["p"]["instance"]["proc"]["pid"].as_i64() != Some(pid)
        });
        let healthy = t.elapsed().as_secs_f64() * 1000.0;
        let log = bench.log()[log_before..].to_owned();
        let backoff = log_field(
            &log,
            "starting opencode again after the backoff",
            "backoff_ms=",
        )
        .expect("the backoff in manager.log");
        let spawned = log_time(&log, "spawned opencode").expect("the spawn in manager.log");
        let relaunch = (spawned - killed_at) * 1000.0;
        eprintln!(
            "… kill {}: backoff {backoff:.0} ms, relaunch spawned after {relaunch:.0} ms (+{:.0} ms), healthy after {healthy:.0} ms",
            run + 1,
            relaunch - backoff
        );
        recovery.push((backoff, relaunch, healthy));
    }
    let (a, b, c) = median(on_demand);
    let (d, e, f) = median(plain);
    println!("| measurement | min | p50 | max |\n|---|---|---|---|");
    println!(
        "| parked → first gateway reply (start on demand) | {a:.0} ms | {b:.0} ms | {c:.0} ms |"
    );
    println!(
        "| plain `opencode-manager start` of the stopped project | {d:.0} ms | {e:.0} ms | {f:.0} ms |"
    );
    println!("\nSIGKILL of the instance → its relaunch (four kills in a row)\n");
    println!("| kill | backoff chosen | relaunch spawned | beyond the backoff | healthy again |");
    println!("|---|---|---|---|---|");
    let mut worst: f64 = 0.0;
    for (n, (backoff, relaunch, healthy)) in recovery.iter().enumerate() {
        worst = worst.max(relaunch - backoff);
        println!(
            "| {} | {backoff:.0} ms | {relaunch:.0} ms | {:.0} ms | {healthy:.0} ms |",
            n + 1,
            relaunch - backoff
        );
    }
    println!(
        "\ngoal: relaunch started ≤ backoff + 100 ms: worst +{worst:.0} ms ({})",
        if worst <= 100.0 { "met" } else { "NOT met" }
    );
}

/// Seconds since midnight UTC.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    since % 86_400.0
}

/// The timestamp (seconds since midnight UTC) of the first log line holding `what`.
fn log_time(log: &str, what: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    // 2026-11-30T10:48:43.178252Z
    let clock = line
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// A numeric field (`name=value`) of the first log line holding `what`.
fn log_field(log: &str, what: &str, name: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let value = line.split(name).nth(1)?.split_whitespace().next()?;
    value.parse().ok()
}
