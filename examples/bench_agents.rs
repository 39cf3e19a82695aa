//! Agent kinds side by side, each a real agent with a fake model server on loopback (the fake
//! OpenAI-compatible provider for OpenCode, fake Gemini and Anthropic APIs; Codex has none, so
//! only its start is measured):
//! - start to ready: `restart` of the Project until its reply (for an ACP agent the bridge is
//!   ready once the agent has answered `initialize`; for `opencode serve`, its health check);
//!   and, from the bridge's own log lines, the agent's spawn → `initialize` answered;
//! - a prompt round trip through the Gateway: `opencode-session-message` "Say hello" in a new
//!   session, until the agent's text comes back;
//! - memory of each idle Instance (the process tree: bridge and agent), from `status`.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_agents [-- --rounds 5]
//! ```
//! Needs the agents `scripts/test` installs into `.tools/`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/fake_anthropic.rs"]
mod fake_anthropic;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/fake_gemini.rs"]
mod fake_gemini;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/fake_llm.rs"]
mod fake_llm;

use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};
use support::{Client, Home, arg, connect, file_repo, free_port, manifest, ms};

/// The kinds measured, and the text their fake model answers (none: no prompt measured).
const KINDS: [(&str, Option<&str>); 5] = [
    ("opencode", Some("Hello from the fake model.")),
    ("opencode-acp", Some("Hello from the fake model.")),
    ("gemini", Some("Hello from the fake Gemini.")),
    ("claude", Some("Hello from the fake Claude.")),
    ("codex", None),
];

async fn call(client: &Client, tool: &'static str, args: Value) -> Value {
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = args.as_object().cloned();
    let result = client.call_tool(params).await.unwrap();
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert_ne!(result.is_error, Some(true), "{tool}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Spawn → `initialize` answered, from the bridge's two log lines of the latest launch.
fn initialize_ms(home: &Home, project: &str) -> Option<f64> {
    let log = std::fs::read_to_string(
        home.dir
            .join(format!("opencode-logs/{project}-opencode.log")),
    )
    .ok()?;
    let time = |needle: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(chrono_ms)
    };
    Some(time("acp bridge listening on")? - time("acp bridge started the")?)
}

/// Milliseconds of the day in an RFC 3339 timestamp (`2026-11-30T13:17:35.543156Z`).
fn chrono_ms(stamp: &str) -> Option<f64> {
    let clock = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

fn main() {
    let rounds = arg("--rounds", 5);
    let llm = fake_llm::FakeLlm::start();
    let gemini = fake_gemini::FakeGemini::start();
    let anthropic = fake_anthropic::FakeAnthropic::start();
    let dir = tempfile::tempdir().unwrap();
    let bin = |name: &str| manifest(&format!(".tools/node_modules/.bin/{name}"));
    let mut instance_env = vec![
        (
            "OPENCODE_CONFIG_CONTENT".to_owned(),
            llm.config_content("allow"),
        ),
        ("OPENCODE_DISABLE_MODELS_FETCH".to_owned(), "1".to_owned()),
        ("OPENAI_API_KEY".to_owned(), "sk-fake".to_owned()),
    ];
    instance_env.extend(gemini.env());
    instance_env.extend(anthropic.env());
    let env_table: String = instance_env
        .iter()
        .map(|(k, v)| format!("{k} = {}\n", toml_string(v)))
        .collect();
    let home = Home::new(
        dir.path().join("home"),
        &format!(
            "allow_file = true\ngateway_port = {}\nidle_timeout_secs = 0\nsupervisor_probe_interval_secs = 1\n\
             gemini_bin = {}\nclaude_bin = {}\ncodex_bin = {}\n[instance_env]\n{env_table}",
            free_port(),
            toml_string(&bin("gemini").display().to_string()),
            toml_string(&bin("claude-code-acp").display().to_string()),
            toml_string(&bin("codex-acp").display().to_string()),
        ),
        bin("opencode"),
    );
    let url = file_repo(dir.path());
    for (kind, _) in KINDS {
        let reply = home.cli(&["start", kind, "--git-url", &url, "--agent", kind]);
        assert_eq!(reply["status"], "success", "{kind}: {reply}");
    }
    let token = std::fs::read_to_string(home.dir.join("global-mcp-token"))
        .unwrap()
        .trim()
        .to_owned();
    let gateway: u16 = std::fs::read_to_string(home.dir.join("opencode-manager.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("gateway_port = "))
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "Agent kinds, {rounds} rounds each, fake model servers on loopback (milliseconds; memory in MiB)\n"
    );
    println!(
        "| agent | start → ready p50 (max) | spawn → initialize answered p50 (max) | prompt round trip p50 (max) | memory idle |"
    );
    println!("|---|---|---|---|---|");
    for (kind, hello) in KINDS {
        let (mut ready, mut initialize, mut prompt) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let begun = Instant::now();
            let reply = home.cli(&["restart", kind]);
            assert_eq!(reply["status"], "success", "{kind}: {reply}");
            ready.push(begun.elapsed());
            if let Some(ms) = initialize_ms(&home, kind) {
                initialize.push(Duration::from_secs_f64(ms / 1000.0));
            }
            if let Some(hello) = hello {
                runtime.block_on(async {
                    let client = connect(gateway, &token).await;
                    let created =
                        call(&client, "opencode-session-create", json!({ "server": kind })).await;
                    let begun = Instant::now();
                    let answer = call(
                        &client,
                        "opencode-session-message",
                        json!({ "server": kind, "sessionId": created["id"], "content": "Say hello" }),
                    )
                    .await;
                    prompt.push(begun.elapsed());
                    assert_eq!(answer["text"], hello, "{kind}");
                    let _ = client.cancel().await;
                });
            }
        }
        // Two probes after the last turn: the memory of the idle Instance.
        std::thread::sleep(Duration::from_secs(3));
        let memory = home.cli(&["status", kind])["memory_bytes"]
            .as_f64()
            .map_or("—".to_owned(), |b| format!("{:.0}", b / 1024.0 / 1024.0));
        let show = |samples: &mut Vec<Duration>| {
            if samples.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.0} ({:.0})", ms(samples, 0.5), ms(samples, 1.0))
            }
        };
        println!(
            "| {kind} | {} | {} | {} | {memory} |",
            show(&mut ready),
            show(&mut initialize),
            show(&mut prompt)
        );
    }
}

fn toml_string(value: &str) -> String {
    format!("{value:?}")
}
