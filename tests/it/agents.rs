//! ACP agents behind the same lifecycle, Gateway, isolation and supervision as OpenCode: the real
//! `opencode acp` against the fake OpenAI-compatible provider, and the real Gemini CLI against a
//! fake Gemini API, each through the manager's ACP bridge. A prompt round trip and a permission
//! request answered through the Gateway, a crash restarted, confinement, stop leaving nothing;
//! Claude's adapter does the same round trip against a fake Anthropic API; the Codex adapter and a
//! custom ACP command start and answer `initialize`; a missing program is named; a start with
//! another kind is refused.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::{call, connect, global_token, poll, runtime};
use crate::home::TestHome;
use crate::support::fake_anthropic::{FakeAnthropic, claude_acp_bin};
use crate::support::fake_gemini::{FakeGemini, gemini_bin};
use crate::support::fake_llm::FakeLlm;
use crate::support::sshd::TestSshd;
use crate::support::{opencode_bin, wait_until};

/// Starts `project` with agent `kind` through the two-step start (key, then ready), with `env`
/// appended to its `.env`.
fn start_agent(
    home: &TestHome,
    sshd: &TestSshd,
    project: &str,
    kind: &str,
    env: &[(String, String)],
) -> Value {
    let url = sshd.create_repo(project);
    let waiting = home.run_dev(&["start", project, "--git-url", &url, "--agent", kind]);
    assert_eq!(waiting.status(), "waiting_for_key", "{waiting:?}");
    sshd.authorize(waiting.json["public_key"].as_str().expect("key"));
    let path = home.env_file(project);
    let mut text = std::fs::read_to_string(&path).expect("read .env");
    for (key, value) in env {
        text.push_str(&format!("{key}='{value}'\n"));
    }
    std::fs::write(&path, text).expect("write .env");
    let started = home.run_dev(&["start", project, "--git-url", &url, "--agent", kind]);
    assert_eq!(started.status(), "success", "{started:?}");
    assert_eq!(started.json["agent"], kind, "{started:?}");
    started.json
}

fn repo_file(home: &TestHome, project: &str, name: &str) -> PathBuf {
    home.sandbox(project).join("repo").join(name)
}

/// Through the Gateway: a session, a prompt answered with the fake model's text, a shell command
/// that waits for permission, allowed once, that writes `file`; the record of the turns.
async fn round_trip(home: &TestHome, project: &str, hello: &str, file: &str) {
    let client = connect(home, &global_token(home)).await;
    let server = json!(project);
    let (is_error, text, created) = call(
        &client,
        "opencode-session-create",
        json!({ "server": server }),
    )
    .await;
    assert!(!is_error, "{text}");
    let id = created["id"].as_str().expect("session id").to_owned();
    assert!(id.starts_with("ses_"), "{id}");

    let (is_error, text, answer) = call(
        &client,
        "opencode-session-message",
        json!({ "server": server, "sessionId": id, "content": "Say hello" }),
    )
    .await;
    assert!(!is_error, "{text}");
    assert_eq!(answer["text"], hello, "{text}");

    let command = format!("RUN: echo from-{project} > {file}");
    let (is_error, text, _) = call(
        &client,
        "opencode-session-prompt-async",
        json!({ "server": server, "sessionId": id, "content": command }),
    )
    .await;
    assert!(!is_error, "{text}");
    let asked = poll(
        &client,
        "opencode-permission-list",
        json!({ "server": server }),
        "the agent's permission request",
        |j| j["permissions"].as_array().is_some_and(|a| !a.is_empty()),
    )
    .await;
    let permission = &asked["permissions"][0];
    assert_eq!(permission["sessionID"], id.as_str());
    assert!(
        permission["patterns"][0]
            .as_str()
            .is_some_and(|p| p.contains("echo")),
        "{asked}"
    );
    assert!(
        !repo_file(home, project, file).exists(),
        "nothing ran before the answer"
    );
    let (is_error, text, _) = call(
        &client,
        "opencode-permission-reply",
        json!({ "server": server, "permissionId": permission["id"], "reply": "once" }),
    )
    .await;
    assert!(!is_error, "{text}");
    poll(
        &client,
        "opencode-session-status",
        json!({ "server": server, "sessionId": id }),
        "the turn to end",
        |j| j["status"]["type"] == "idle",
    )
    .await;
    let written = std::fs::read_to_string(repo_file(home, project, file)).expect("the file");
    assert_eq!(written.trim(), format!("from-{project}"));

    let (is_error, text, messages) = call(
        &client,
        "opencode-session-messages",
        json!({ "server": server, "sessionId": id }),
    )
    .await;
    assert!(!is_error, "{text}");
    let turns = messages.as_array().expect("messages");
    assert_eq!(turns.len(), 4, "two turns, user and assistant each: {text}");
    assert_eq!(turns[1]["parts"][0]["text"], hello);
    let (is_error, text, listed) = call(
        &client,
        "opencode-session-list",
        json!({ "server": server }),
    )
    .await;
    assert!(!is_error, "{text}");
    assert_eq!(listed[0]["id"], id.as_str());
    let _ = client.cancel().await;
}

/// SIGKILL of the agent (the bridge's child): the Instance is restarted, with a new bridge.
fn crash_is_restarted(home: &TestHome, project: &str) {
    let bridge = home.run(&["status", project]).json["opencode_pid"]
        .as_i64()
        .expect("pid") as i32;
    let agent = children(bridge);
    assert_eq!(agent.len(), 1, "one agent under the bridge: {agent:?}");
    #[allow(clippy::disallowed_methods)]
    let killed = std::process::Command::new("kill")
        .args(["-9", &agent[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_until(
        "the agent to be restarted under a new bridge",
        Duration::from_secs(90),
        || {
            let status = home.run(&["status", project]);
            status.json["opencode"]["status"] == "running"
                && status.json["opencode_pid"]
                    .as_i64()
                    .is_some_and(|p| p as i32 != bridge)
        },
    );
    let status = home.run(&["status", project]);
    assert_eq!(status.json["restarts"], 1, "{status:?}");
    assert!(
        status.json["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("exit code 137")),
        "the bridge exits as its agent did: {status:?}"
    );
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The agent cannot read the manager's token, nor another project's `.env`.
async fn confined(home: &TestHome, project: &str, other: &str) {
    let client = connect(home, &global_token(home)).await;
    let server = json!(project);
    let (_, _, created) = call(
        &client,
        "opencode-session-create",
        json!({ "server": server }),
    )
    .await;
    let id = created["id"].as_str().expect("session id").to_owned();
    let token = home.path().join("global-mcp-token");
    let command = format!(
        "RUN: cat {} {} > leak.txt 2>&1; echo exit=$? >> leak.txt",
        token.display(),
        home.env_file(other).display()
    );
    call(
        &client,
        "opencode-session-prompt-async",
        json!({ "server": server, "sessionId": id, "content": command }),
    )
    .await;
    // Every request the agent makes (the command, a path outside the project) is allowed.
    let leak = repo_file(home, project, "leak.txt");
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("exit=") {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never ran"
        );
        let (_, _, asked) = call(
            &client,
            "opencode-permission-list",
            json!({ "server": server }),
        )
        .await;
        for permission in asked["permissions"].as_array().into_iter().flatten() {
            call(
                &client,
                "opencode-permission-reply",
                json!({ "server": server, "permissionId": permission["id"], "reply": "once" }),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = std::fs::read_to_string(&leak).unwrap_or_default();
    }
    let secret = std::fs::read_to_string(&token).expect("token");
    assert!(!seen.contains(secret.trim()), "the token leaked: {seen}");
    assert!(
        !seen.contains("OPENCODE_SERVER_PASSWORD="),
        "the .env leaked: {seen}"
    );
    assert!(seen.contains("ermission denied"), "{seen}");
    let _ = client.cancel().await;
}

#[test]
fn opencode_acp_runs_behind_the_bridge_with_the_same_lifecycle_gateway_and_confinement() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::with_opencode(opencode_bin(), "");
    let config = vec![(
        "OPENCODE_CONFIG_CONTENT".to_owned(),
        llm.config_content("ask"),
    )];
    start_agent(&home, &sshd, "acp", "opencode-acp", &config);
    crate::gateway::start_project(&home, &sshd, &llm, "plain", "ask");

    let status = home.run(&["status", "acp"]);
    assert_eq!(status.json["agent"], "opencode-acp");
    assert!(
        status.json["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("landlock")),
        "{status:?}"
    );
    let list = home.run(&["list"]);
    let kinds: Vec<(&str, &str)> = list.json["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["agent"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds, [("acp", "opencode-acp"), ("plain", "opencode")]);

    // `opencode acp` serves an API of its own on a second port, without a password: the start
    // says so.
    let started = home.run(&["restart", "acp"]);
    assert!(
        started.json["warning"]
            .as_str()
            .is_some_and(|w| w.contains("opencode acp also serves its own API")),
        "{started:?}"
    );

    // A project keeps its kind.
    let url = status.json["git_url"].as_str().expect("git_url").to_owned();
    let mismatch = home.run(&["start", "acp", "--git-url", &url, "--agent", "gemini"]);
    assert_eq!(mismatch.error(), "agent_mismatch", "{mismatch:?}");
    assert_eq!(mismatch.code, 2);

    runtime().block_on(round_trip(
        &home,
        "acp",
        "Hello from the fake model.",
        "acp.txt",
    ));
    runtime().block_on(confined(&home, "acp", "plain"));
    crash_is_restarted(&home, "acp");
    runtime().block_on(round_trip(
        &home,
        "acp",
        "Hello from the fake model.",
        "again.txt",
    ));

    let stopped = home.run(&["stop", "--all"]);
    assert_eq!(stopped.status(), "success", "{stopped:?}");
    wait_until(
        "no process of the home left",
        Duration::from_secs(10),
        || home.marked_processes().is_empty(),
    );
}

#[test]
fn gemini_cli_runs_behind_the_bridge_against_a_fake_gemini_api() {
    let sshd = TestSshd::start();
    let gemini = FakeGemini::start();
    let home = TestHome::with_opencode(opencode_bin(), "");
    let mut env = gemini.env();
    env.push(("GEMINI_BIN".to_owned(), gemini_bin().display().to_string()));
    start_agent(&home, &sshd, "gem", "gemini", &env);
    // Its HOME is the Instance's own, seeded with API-key settings.
    assert!(
        home.sandbox("gem")
            .join("instance/home/.gemini/settings.json")
            .is_file()
    );
    runtime().block_on(round_trip(
        &home,
        "gem",
        "Hello from the fake Gemini.",
        "gem.txt",
    ));
    assert!(
        gemini
            .turns()
            .iter()
            .any(|r| r.body.to_string().contains("functionResponse")),
        "the command's output went back to the model"
    );
    crash_is_restarted(&home, "gem");
    let stopped = home.run(&["stop", "gem"]);
    assert_eq!(stopped.status(), "success", "{stopped:?}");
    wait_until(
        "no process of the home left",
        Duration::from_secs(10),
        || home.marked_processes().is_empty(),
    );
}

#[test]
fn the_claude_and_codex_adapters_and_a_custom_agent_start_and_answer_initialize() {
    let sshd = TestSshd::start();
    let anthropic = FakeAnthropic::start();
    let home = TestHome::with_opencode(opencode_bin(), "");
    let mut env = anthropic.env();
    env.push((
        "CLAUDE_BIN".to_owned(),
        claude_acp_bin().display().to_string(),
    ));
    start_agent(&home, &sshd, "claude", "claude", &env);
    let codex =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/codex-acp");
    start_agent(
        &home,
        &sshd,
        "codex",
        "codex",
        &[
            ("CODEX_BIN".to_owned(), codex.display().to_string()),
            ("OPENAI_API_KEY".to_owned(), "sk-fake".to_owned()),
        ],
    );
    // Any ACP agent, by its command line.
    let mut custom = FakeGemini::start().env();
    custom.push((
        "AGENT_COMMAND".to_owned(),
        format!("{} --acp", gemini_bin().display()),
    ));
    start_agent(&home, &sshd, "custom", "custom", &custom);
    // A program that is not there is named, with what to do.
    let url = sshd.create_repo("missing");
    let waiting = home.run_dev(&["start", "missing", "--git-url", &url, "--agent", "gemini"]);
    sshd.authorize(waiting.json["public_key"].as_str().expect("key"));
    let path = home.env_file("missing");
    let text = std::fs::read_to_string(&path).expect(".env");
    std::fs::write(&path, format!("{text}GEMINI_BIN=/nonexistent/gemini\n")).expect("write");
    let missing = home.run_dev(&["start", "missing", "--git-url", &url]);
    assert_eq!(missing.error(), "agent_not_found", "{missing:?}");
    assert!(
        missing.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("GEMINI_BIN /nonexistent/gemini")),
        "{missing:?}"
    );
    for project in ["claude", "codex", "custom"] {
        let health = home.run(&["status", project]);
        assert_eq!(health.json["opencode"]["status"], "running", "{health:?}");
        let log = std::fs::read_to_string(
            home.path()
                .join(format!("opencode-logs/{project}-opencode.log")),
        )
        .expect("log");
        assert!(log.contains("acp bridge listening on"), "{log}");
    }
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let (is_error, text, _) = call(
            &client,
            "opencode-session-message",
            json!({ "server": "claude", "sessionId": "ses_unknown", "content": "hi" }),
        )
        .await;
        assert!(is_error && text.contains("no session"), "{text}");
        let _ = client.cancel().await;
    });
    // Claude's adapter also does a whole round trip against the fake Anthropic API.
    runtime().block_on(round_trip(
        &home,
        "claude",
        "Hello from the fake Claude.",
        "claude.txt",
    ));
    let stopped = home.run(&["stop", "--all"]);
    assert_eq!(stopped.status(), "success", "{stopped:?}");
    wait_until(
        "no process of the home left",
        Duration::from_secs(10),
        || home.marked_processes().is_empty(),
    );
}

#[test]
fn an_idle_acp_agent_is_parked_and_a_gateway_call_starts_it_again() {
    let sshd = TestSshd::start();
    let gemini = FakeGemini::start();
    let home = TestHome::with_opencode(
        opencode_bin(),
        "supervisor_probe_interval_secs = 1\nidle_timeout_secs = 3\n",
    );
    let mut env = gemini.env();
    env.push(("GEMINI_BIN".to_owned(), gemini_bin().display().to_string()));
    let started = start_agent(&home, &sshd, "gem", "gemini", &env);
    let bridge = started["opencode_pid"].as_i64().expect("pid") as i32;
    // Watch the state file, not `status`: a status call asks the Instance, which is activity.
    wait_until("the agent to be parked", Duration::from_secs(60), || {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(home.path().join("opencode-state.json")).unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        state["projects"]["gem"]["instance"]["status"] == "idle"
    });
    wait_until(
        "the parked bridge and agent to be gone",
        Duration::from_secs(10),
        || home.marked_processes().is_empty(),
    );
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let (is_error, text, created) = call(
            &client,
            "opencode-session-create",
            json!({ "server": "gem" }),
        )
        .await;
        assert!(!is_error, "{text}");
        let (is_error, text, answer) = call(
            &client,
            "opencode-session-message",
            json!({ "server": "gem", "sessionId": created["id"], "content": "Say hello" }),
        )
        .await;
        assert!(!is_error, "{text}");
        assert_eq!(answer["text"], "Hello from the fake Gemini.");
        let _ = client.cancel().await;
    });
    let status = home.run(&["status", "gem"]);
    assert_eq!(status.json["opencode"]["status"], "running", "{status:?}");
    assert_ne!(
        status.json["opencode_pid"].as_i64(),
        Some(i64::from(bridge))
    );
    home.run(&["stop", "gem"]);
}
