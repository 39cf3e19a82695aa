//! The global gateway, served by the daemon, driven by an rmcp HTTP client against two real
//! OpenCode projects whose model is the fake provider.

use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::{Value, json};

use crate::home::TestHome;
use crate::support::fake_llm::FakeLlm;
use crate::support::sshd::TestSshd;
use crate::support::{pid_alive, wait_until};

type Client = RunningService<RoleClient, ()>;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts `project` in development mode with the fake provider as its model.
pub(crate) fn start_project(
    home: &TestHome,
    sshd: &TestSshd,
    llm: &FakeLlm,
    project: &str,
    permission: &str,
) -> Value {
    let url = sshd.create_repo(project);
    let waiting = home.run_dev(&["start", project, "--git-url", &url]);
    assert_eq!(waiting.status(), "waiting_for_key", "{waiting:?}");
    sshd.authorize(waiting.json["public_key"].as_str().expect("key"));
    let env = home.env_file(project);
    let text = std::fs::read_to_string(&env).expect("read .env");
    std::fs::write(
        &env,
        format!(
            "{text}OPENCODE_CONFIG_CONTENT='{}'\n",
            llm.config_content(permission)
        ),
    )
    .expect("write .env");
    let started = home.run_dev(&["start", project, "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    started.json
}

pub(crate) fn env_value(home: &TestHome, project: &str, key: &str) -> String {
    let text = std::fs::read_to_string(home.env_file(project)).expect("read .env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .expect("key")
        .to_owned()
}

pub(crate) fn global_token(home: &TestHome) -> String {
    std::fs::read_to_string(home.path().join("global-mcp-token"))
        .expect("global token file")
        .trim()
        .to_owned()
}

pub(crate) async fn connect(home: &TestHome, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!(
        "http://127.0.0.1:{}/mcp",
        home.gateway_port
    ))
    .auth_header(token);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    ().serve_with_lifecycle(
        StreamableHttpClientTransport::from_config(config),
        lifecycle,
    )
    .await
    .expect("connect to the gateway")
}

/// Calls a gateway tool: (isError, text, parsed JSON of the text if it is JSON).
pub(crate) async fn call(
    client: &Client,
    tool: &'static str,
    args: Value,
) -> (bool, String, Value) {
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = args.as_object().cloned();
    let result = client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"));
    let text = first_text(&result);
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (result.is_error.unwrap_or(false), text, json)
}

/// The text of a tool result's first content item (empty when there is none).
fn first_text(result: &rmcp::model::CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

fn health(home: &TestHome) -> Option<u16> {
    crate::support::http(
        "GET",
        home.gateway_port,
        "/health",
        None,
        None,
        Duration::from_secs(5),
    )
    .ok()
    .map(|r| r.status)
}

/// Polls a gateway tool until `done` holds for its JSON.
pub(crate) async fn poll(
    client: &Client,
    tool: &'static str,
    args: Value,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (is_error, text, json) = call(client, tool, args.clone()).await;
        assert!(!is_error, "{tool}: {text}");
        if done(&json) {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_gateway_serves_the_sessions_of_two_projects_within_each_tokens_scope() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::real();
    assert_ne!(health(&home), Some(200), "closed while nothing runs");
    start_project(&home, &sshd, &llm, "alpha", "ask");
    let beta = start_project(&home, &sshd, &llm, "beta", "ask");
    assert_eq!(
        health(&home),
        Some(200),
        "open with the first project, /health needs no token"
    );

    // Compatibility files: the servers list in the original's format, and the pid file.
    let servers: Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join("opencode-mcp-tool-servers.json"))
            .expect("servers"),
    )
    .expect("json");
    let ids: Vec<&str> = servers["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert!(
        servers["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .all(|s| s["status"] == "active")
    );
    let pid_file =
        std::fs::read_to_string(home.path().join("global-mcp-tool.pid")).expect("pid file");
    assert_eq!(pid_file.trim().parse::<i32>().ok(), home.daemon_pid());

    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        for name in [
            "opencode-server-health",
            "opencode-session-create",
            "opencode-session-list",
            "opencode-session-get",
            "opencode-session-delete",
            "opencode-session-message",
            "opencode-session-messages",
            "opencode-session-prompt-async",
            "opencode-session-status",
            "opencode-session-abort",
            "opencode-permission-list",
            "opencode-permission-reply",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let (is_error, _, json) = call(
            &client,
            "opencode-server-health",
            json!({"server": "alpha"}),
        )
        .await;
        assert!(!is_error && json["healthy"] == true, "{json}");
        let (is_error, text, _) = call(&client, "opencode-session-list", json!({})).await;
        assert!(is_error && text.contains("alpha, beta"), "{text}");
        let (is_error, text, _) =
            call(&client, "opencode-session-list", json!({"server": "gamma"})).await;
        assert!(
            is_error
                && text.contains(
                    "OpenCode server not found: \"gamma\". Available servers: alpha, beta"
                ),
            "{text}"
        );

        // Sessions are per project.
        let (_, _, session) = call(
            &client,
            "opencode-session-create",
            json!({"server": "alpha"}),
        )
        .await;
        let id = session["id"].as_str().expect("session id").to_owned();
        let (_, _, listed) =
            call(&client, "opencode-session-list", json!({"server": "alpha"})).await;
        assert!(
            listed
                .as_array()
                .expect("list")
                .iter()
                .any(|s| s["id"] == id.as_str())
        );
        let (_, _, other) = call(&client, "opencode-session-list", json!({"server": "beta"})).await;
        assert!(
            !other
                .as_array()
                .expect("list")
                .iter()
                .any(|s| s["id"] == id.as_str())
        );
        let (is_error, _, got) = call(
            &client,
            "opencode-session-get",
            json!({"server": "alpha", "sessionId": id}),
        )
        .await;
        assert!(!is_error && got["id"] == id.as_str());

        // A prompt round trip through the fake provider.
        let (is_error, text, reply) = call(
            &client,
            "opencode-session-message",
            json!({"server": "alpha", "sessionId": id, "content": "hi"}),
        )
        .await;
        assert!(!is_error, "{text}");
        assert_eq!(reply["text"], "Hello from the fake model.", "{text}");
        let (_, _, last) = call(
            &client,
            "opencode-session-messages",
            json!({"server": "alpha", "sessionId": id, "limit": 1}),
        )
        .await;
        assert_eq!(last.as_array().map(Vec::len), Some(1));

        // An async prompt that asks for a permission, answered through the gateway.
        let (is_error, text, _) = call(
            &client,
            "opencode-session-prompt-async",
            json!({"server": "alpha", "sessionId": id, "content": "RUN: echo from-the-agent"}),
        )
        .await;
        assert!(!is_error, "{text}");
        let pending = poll(
            &client,
            "opencode-permission-list",
            json!({"server": "alpha", "sessionId": id}),
            "a permission request",
            |j| j["permissions"].as_array().is_some_and(|p| !p.is_empty()),
        )
        .await;
        let permission = pending["permissions"][0]["id"]
            .as_str()
            .expect("permission id")
            .to_owned();
        let (is_error, text, _) = call(
            &client,
            "opencode-permission-reply",
            json!({"server": "alpha", "permissionId": permission, "reply": "once"}),
        )
        .await;
        assert!(!is_error, "{text}");
        poll(
            &client,
            "opencode-session-status",
            json!({"server": "alpha", "sessionId": id}),
            "the turn to end",
            |j| j["status"]["type"] == "idle",
        )
        .await;
        let (_, text, _) = call(
            &client,
            "opencode-session-messages",
            json!({"server": "alpha", "sessionId": id}),
        )
        .await;
        assert!(text.contains("tool said: from-the-agent"), "{text}");
        let (is_error, text, _) = call(
            &client,
            "opencode-session-delete",
            json!({"server": "alpha", "sessionId": id}),
        )
        .await;
        assert!(
            !is_error && text == format!("Session {id} deleted successfully"),
            "{text}"
        );

        // A project's own token reaches that project only.
        let scoped = connect(&home, &env_value(&home, "alpha", "MCP_TOOL_BEARER_TOKEN")).await;
        let (is_error, text, _) = call(&scoped, "opencode-session-list", json!({})).await;
        assert!(!is_error, "its own project is the default: {text}");
        let (is_error, text, _) =
            call(&scoped, "opencode-session-list", json!({"server": "beta"})).await;
        assert!(
            is_error && text.contains("reaches only project alpha"),
            "{text}"
        );
        scoped.cancel().await.expect("close");

        // A project restarted on another port stays reachable through the same client.
        let old_port = beta["opencode_port"].as_u64().expect("port") as u16;
        let answer = home.run(&["stop", "beta"]);
        assert_eq!(answer.status(), "success");
        let holder =
            std::net::TcpListener::bind(("127.0.0.1", old_port)).expect("hold beta's port");
        let restarted = home.run(&["restart", "beta"]);
        assert_eq!(restarted.status(), "success", "{restarted:?}");
        assert_eq!(
            restarted.json["message"], "Project restarted",
            "{restarted:?}"
        );
        assert_ne!(
            restarted.json["opencode_port"].as_u64(),
            Some(u64::from(old_port))
        );
        drop(holder);
        let (is_error, text, _) =
            call(&client, "opencode-session-list", json!({"server": "beta"})).await;
        assert!(!is_error, "{text}");
        client.cancel().await.expect("close");
    });

    // Wrong tokens are refused before any tool runs.
    let wrong = crate::support::http(
        "POST",
        home.gateway_port,
        "/mcp",
        None,
        Some("{}"),
        Duration::from_secs(5),
    )
    .expect("post");
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Missing Authorization header"),
        "{}",
        wrong.body
    );
}

#[test]
fn a_project_stopped_mid_call_is_a_clean_error_and_the_gateway_closes_and_reopens_with_projects() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::real();
    start_project(&home, &sshd, &llm, "solo", "allow");
    // Inside the repo: the agent is confined to its own directories.
    let child_pid_file = home.sandbox("solo").join("repo").join("child.pid");
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let (_, _, session) = call(&client, "opencode-session-create", json!({})).await;
        let id = session["id"].as_str().expect("session id").to_owned();
        let peer = client.peer().clone();
        let content = format!(
            "RUN: echo $$ > {}; exec sleep 300",
            child_pid_file.display()
        );
        let pending = tokio::spawn(async move {
            let mut params = CallToolRequestParams::new("opencode-session-message");
            params.arguments = json!({"sessionId": id, "content": content})
                .as_object()
                .cloned();
            peer.call_tool(params).await
        });
        let pid_file = child_pid_file.clone();
        tokio::task::spawn_blocking(move || {
            wait_until(
                "the agent's command to run",
                Duration::from_secs(60),
                || std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty()),
            )
        })
        .await
        .expect("wait");
        let answer = home.run(&["stop", "solo"]);
        assert_eq!(answer.status(), "success");
        let result = tokio::time::timeout(Duration::from_secs(60), pending)
            .await
            .expect("no hang")
            .expect("join")
            .expect("a tool result");
        assert_eq!(result.is_error, Some(true));
        let text = first_text(&result);
        assert!(
            text.starts_with("Error executing opencode-session-message:"),
            "{text}"
        );
        client.cancel().await.expect("close");
    });
    let child: i32 = std::fs::read_to_string(&child_pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        !pid_alive(child),
        "the agent's command ended with the project"
    );

    // The gateway closed with the last project, and says so.
    wait_until("the gateway to close", Duration::from_secs(10), || {
        health(&home) != Some(200)
    });
    let status = home.run(&["mcp-status"]);
    assert_eq!(
        (status.status(), status.json["active_projects"].as_u64()),
        ("stopped", Some(0)),
        "{status:?}"
    );
    assert!(!home.path().join("global-mcp-tool.pid").exists());
    let refused = home.run(&["mcp-restart"]);
    assert_eq!(refused.error(), "no_active_projects", "{refused:?}");

    // It reopens with the next project.
    let again = home.run(&["start", "solo", "--git-url", &sshd.create_repo("unused")]);
    assert_eq!(
        again.error(),
        "invalid_git_url",
        "the project keeps its URL: {again:?}"
    );
    let restarted = home.run(&["restart", "solo"]);
    assert_eq!(restarted.status(), "success", "{restarted:?}");
    assert_eq!(health(&home), Some(200));
    assert_eq!(home.run(&["mcp-status"]).status(), "running");
}

/// Regression (issue "Isolation and hardening"): stopping the last project while a gateway call
/// for it was under way sometimes answered HTTP 500, because the closing gateway ended the MCP
/// session before the handler replied. Twenty rounds in a row must each give a tool error.
#[test]
fn a_call_under_way_when_its_project_stops_is_a_tool_error_every_time() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = crate::faults::file_repo(repos.path(), "r");
    let home = TestHome::fake("ok", "allow_file = true\n");
    let log = home.path().join("opencode-logs/p-opencode.log");
    let turns_started = move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("fake-opencode: turn started")
            .count()
    };
    runtime().block_on(async {
        for round in 0..20 {
            let started = home.run_dev(&["start", "p", "--git-url", &url]);
            assert_eq!(started.status(), "success", "round {round}: {started:?}");
            let client = connect(&home, &global_token(&home)).await;
            let peer = client.peer().clone();
            let pending = tokio::spawn(async move {
                let mut params = CallToolRequestParams::new("opencode-session-message");
                params.arguments = json!({"sessionId": "ses_fake", "content": "hi"})
                    .as_object()
                    .cloned();
                peer.call_tool(params).await
            });
            tokio::task::spawn_blocking({
                let turns_started = turns_started.clone();
                move || {
                    wait_until("the turn to start", Duration::from_secs(30), || {
                        turns_started() > round
                    })
                }
            })
            .await
            .expect("wait");
            let stopped = tokio::task::block_in_place(|| home.run(&["stop", "p"]));
            assert_eq!(stopped.status(), "success", "round {round}: {stopped:?}");
            let result = tokio::time::timeout(Duration::from_secs(60), pending)
                .await
                .expect("no hang")
                .expect("join")
                .unwrap_or_else(|e| {
                    panic!("round {round}: a protocol error, not a tool error: {e}")
                });
            assert_eq!(result.is_error, Some(true), "round {round}: {result:?}");
            let text = first_text(&result);
            assert!(
                text.starts_with("Error executing opencode-session-message:"),
                "round {round}: {text}"
            );
            let _ = client.cancel().await;
        }
    });
}

/// Closing the gateway (`stop-mcp-tool`) refuses new connections at once but lets a call under
/// way finish with its real answer.
#[test]
fn a_closing_gateway_finishes_the_calls_under_way() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = crate::faults::file_repo(repos.path(), "r");
    let home = TestHome::fake("ok", "allow_file = true\n");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let log = home.path().join("opencode-logs/p-opencode.log");
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let peer = client.peer().clone();
        let pending = tokio::spawn(async move {
            let mut params = CallToolRequestParams::new("opencode-session-message");
            params.arguments = json!({"sessionId": "ses_fake", "content": "hi"})
                .as_object()
                .cloned();
            peer.call_tool(params).await
        });
        tokio::task::spawn_blocking(move || {
            wait_until("the turn to start", Duration::from_secs(30), || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("fake-opencode: turn started")
            })
        })
        .await
        .expect("wait");
        let closed = tokio::task::block_in_place(|| home.run(&["stop-mcp-tool"]));
        assert_eq!(closed.status(), "success", "{closed:?}");
        assert_ne!(health(&home), Some(200), "no new connection once closed");
        std::fs::write(home.sandbox("p").join("repo/release-turn"), "").expect("release");
        let result = tokio::time::timeout(Duration::from_secs(60), pending)
            .await
            .expect("no hang")
            .expect("join")
            .expect("the call's own answer, not a protocol error");
        assert_ne!(result.is_error, Some(true), "{result:?}");
        let text = first_text(&result);
        assert!(text.contains("turn done"), "{text}");
        let _ = client.cancel().await;
    });
}

/// A Gateway call under way holds a lease on its Instance: a start that needs the memory waits
/// for the call to be answered instead of parking the Instance under it, then parks it.
#[test]
fn a_call_under_way_keeps_its_project_from_being_parked_for_the_budget() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = crate::faults::file_repo(repos.path(), "r");
    // Each instance holds 160 MiB and may use 200: two do not fit in 300.
    let home = TestHome::fake(
        "ok",
        "allow_file = true\nmemory_max = \"200M\"\nmemory_budget = \"300M\"\n[instance_env]\nFAKE_OPENCODE_RSS_MB = \"160\"\n",
    );
    let first = home.run_dev(&["start", "first", "--git-url", &url]);
    assert_eq!(first.status(), "success", "{first:?}");
    let log = home.path().join("opencode-logs/first-opencode.log");
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let peer = client.peer().clone();
        let pending = tokio::spawn(async move {
            let mut params = CallToolRequestParams::new("opencode-session-message");
            params.arguments = json!({"server": "first", "sessionId": "ses_fake", "content": "hi"})
                .as_object()
                .cloned();
            peer.call_tool(params).await
        });
        tokio::task::spawn_blocking(move || {
            wait_until("the turn to start", Duration::from_secs(30), || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("fake-opencode: turn started")
            })
        })
        .await
        .expect("wait");
        // The second start needs first's memory; first serves a call: the start waits.
        let second = home.spawn(
            &["start", "second", "--git-url", &url],
            Some("development"),
        );
        tokio::task::block_in_place(|| {
            wait_until("second to wait for memory", Duration::from_secs(30), || {
                home.run(&["status", "second"]).json["opencode"]["status"] == "starting"
            });
        });
        assert_eq!(
            tokio::task::block_in_place(|| home.run(&["status", "first"])).json["opencode"]
                ["status"],
            "running",
            "not parked under its call"
        );
        std::fs::write(home.sandbox("first").join("repo/release-turn"), "").expect("release");
        let result = tokio::time::timeout(Duration::from_secs(60), pending)
            .await
            .expect("no hang")
            .expect("join")
            .expect("the call's own answer, not a protocol error");
        assert_ne!(result.is_error, Some(true), "{result:?}");
        let text = first_text(&result);
        assert!(text.contains("turn done"), "{text}");
        let second = tokio::task::spawn_blocking(move || second.wait_with_output())
            .await
            .expect("join")
            .expect("start second");
        let reply: Value = serde_json::from_slice(&second.stdout).unwrap_or(Value::Null);
        assert_eq!(reply["status"], "success", "{reply}");
        let _ = client.cancel().await;
    });
    assert_eq!(
        home.run(&["status", "first"]).json["opencode"]["status"],
        "idle",
        "parked once its call was answered"
    );
}

/// How many session lists the daemon answered from a kept answer (its `/metrics`).
fn kept_lists(home: &TestHome, dashboard: u16) -> f64 {
    let token = std::fs::read_to_string(home.path().join("mcp-http-token")).expect("HTTP token");
    let bearer = format!("Bearer {}", token.trim());
    let metrics = crate::dashboard::request(
        dashboard,
        "GET",
        "/metrics",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    metrics
        .body
        .lines()
        .find_map(|l| {
            l.strip_prefix("opencode_manager_gateway_session_lists_total{answer=\"kept\"} ")
        })
        .map_or(0.0, |n| n.parse().expect("a count"))
}

#[test]
fn a_session_list_is_kept_until_opencode_or_a_gateway_call_changes_it() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let dashboard = crate::support::free_port();
    let home = TestHome::with_opencode(
        crate::support::opencode_bin(),
        &format!("dashboard_port = {dashboard}\n"),
    );
    let started = start_project(&home, &sshd, &llm, "alpha", "ask");
    let port = started["opencode_port"].as_u64().expect("port") as u16;
    let password = env_value(&home, "alpha", "OPENCODE_SERVER_PASSWORD");
    let direct = |method: &str, path: &str, body: Option<&str>| {
        let answer = crate::support::http(
            method,
            port,
            path,
            Some(&password),
            body,
            Duration::from_secs(10),
        )
        .expect("OpenCode answers");
        assert_eq!(answer.status, 200, "{}", answer.body);
        serde_json::from_str::<Value>(&answer.body).expect("JSON")
    };
    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect()
    };
    runtime().block_on(async {
        let client = connect(&home, &global_token(&home)).await;
        let alpha = json!({"server": "alpha"});
        let (_, _, session) = call(&client, "opencode-session-create", alpha.clone()).await;
        let first = session["id"].as_str().expect("session id").to_owned();

        // Asked again with nothing changing, the list is kept: OpenCode's own answer, word for word.
        let kept = tokio::task::block_in_place(|| kept_lists(&home, dashboard));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let listed = loop {
            let (is_error, text, listed) =
                call(&client, "opencode-session-list", alpha.clone()).await;
            assert!(!is_error, "{text}");
            if tokio::task::block_in_place(|| kept_lists(&home, dashboard)) > kept {
                break listed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no list was ever kept"
            );
        };
        let asked = tokio::task::block_in_place(|| direct("GET", "/session", None));
        assert_eq!(listed, asked);
        assert_eq!(ids(&listed), std::slice::from_ref(&first));

        // A session made behind the Gateway's back: OpenCode's event drops what was kept.
        let behind = tokio::task::block_in_place(|| direct("POST", "/session", Some("{}")));
        let behind = behind["id"].as_str().expect("id").to_owned();
        poll(
            &client,
            "opencode-session-list",
            alpha.clone(),
            "the session made directly",
            |list| ids(list).contains(&behind),
        )
        .await;

        // What the Gateway changes is in the very next list, without waiting for the event.
        for _ in 0..5 {
            let (_, _, made) = call(&client, "opencode-session-create", alpha.clone()).await;
            let made = made["id"].as_str().expect("id").to_owned();
            let (_, _, listed) = call(&client, "opencode-session-list", alpha.clone()).await;
            assert!(ids(&listed).contains(&made), "{listed}");
            let (is_error, text, _) = call(
                &client,
                "opencode-session-delete",
                json!({"server": "alpha", "sessionId": made}),
            )
            .await;
            assert!(!is_error, "{text}");
            let (_, _, listed) = call(&client, "opencode-session-list", alpha.clone()).await;
            assert!(!ids(&listed).contains(&made), "{listed}");
        }

        // A turn retitles the session (OpenCode's title request): the list follows.
        let (is_error, text, _) = call(
            &client,
            "opencode-session-message",
            json!({"server": "alpha", "sessionId": first, "content": "hi"}),
        )
        .await;
        assert!(!is_error, "{text}");
        let titled = poll(
            &client,
            "opencode-session-list",
            alpha.clone(),
            "the title the fake model gave",
            |list| {
                list.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|s| s["id"] == first.as_str() && s["title"] == "Fake title")
                })
            },
        )
        .await;
        assert_eq!(
            titled,
            tokio::task::block_in_place(|| direct("GET", "/session", None))
        );
        let _ = client.cancel().await;
    });
}
