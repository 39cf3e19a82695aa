//! The MCP server driven by real rmcp clients: over stdio (spawning the built binary) at protocol
//! 2025-11-25, and over Streamable HTTP at 2026-07-28, through the whole workflow against the real
//! OpenCode and sshd; plus the HTTP auth matrix and snapshots of the contract.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, ProtocolVersion, RequestMetaObject,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::{Value, json};

use crate::home::TestHome;
use crate::support::sshd::TestSshd;
use crate::support::{KillOnDrop, free_port, manager_bin, opencode_bin, wait_until};

/// A client that records the progress messages it receives.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .expect("lock")
            .push(params.message.unwrap_or_default());
    }
}

type Client = RunningService<RoleClient, Recorder>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn stdio_client(home: &TestHome, recorder: Recorder) -> Client {
    stdio_client_with(
        home,
        recorder,
        &[("OPENCODE_BIN", opencode_bin().to_string_lossy().as_ref())],
    )
    .await
}

async fn stdio_client_with(home: &TestHome, recorder: Recorder, env: &[(&str, &str)]) -> Client {
    let home_path = home.path().to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let transport = TokioChildProcess::new(tokio::process::Command::new(manager_bin()).configure(
        |cmd| {
            cmd.args(["serve", "--mode", "stdio"])
                .env("OPENCODE_MANAGER_HOME", &home_path)
                .env_remove("ENVIRONMENT")
                .envs(env.iter().map(|(k, v)| (k, v)));
        },
    ))
    .expect("spawn serve --mode stdio");
    recorder
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("initialize over stdio")
}

/// `serve --mode http` on a free port, with a known token.
fn http_server(home: &TestHome, token: &str) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = std::process::Command::new(manager_bin())
        .args(["serve", "--mode", "http", "--port", &port.to_string()])
        .env("OPENCODE_MANAGER_HOME", home.path())
        .env("OPENCODE_BIN", opencode_bin())
        .env("OPENCODE_MANAGER_TOKEN", token)
        .env_remove("ENVIRONMENT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve --mode http");
    wait_until("the HTTP server to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (KillOnDrop(child), port)
}

async fn http_client(port: u16, token: &str, recorder: Recorder) -> Client {
    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("http://127.0.0.1:{port}/mcp"),
        )
        .auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(config);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    recorder
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("discover over HTTP")
}

/// Calls a tool; returns (isError, structuredContent, text).
async fn call(
    client: &Client,
    tool: &'static str,
    args: Value,
    with_progress: bool,
) -> (bool, Value, String) {
    let mut params = CallToolRequestParams::new(tool);
    if let Value::Object(map) = args {
        params.arguments = Some(map);
    }
    if with_progress {
        params.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
            NumberOrString::String(format!("{tool}-progress").into()),
        )));
    }
    let result: CallToolResult = client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"));
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    (
        result.is_error.unwrap_or(false),
        result.structured_content.unwrap_or(Value::Null),
        text,
    )
}

/// The workflow of the original README, through MCP: passwords, key, success, status, list,
/// stop, destroy. Returns the redacted replies for the contract snapshot.
async fn drive_workflow(
    client: &Client,
    recorder: &Recorder,
    home: &TestHome,
    sshd: &TestSshd,
    project: &str,
) -> Vec<(String, Value)> {
    let url = sshd.create_repo(project);
    let redact = |v: &Value| redacted(v, home, sshd);
    let mut shapes = Vec::new();
    let start = json!({"project_name": project, "git_url": url});

    let (is_error, reply, text) = call(client, "opencode_start", start.clone(), false).await;
    assert!(
        !is_error && reply["status"] == "waiting_for_passwords",
        "{reply}"
    );
    assert!(text.starts_with("Status: waiting_for_passwords"), "{text}");
    shapes.push(("start_waiting_for_passwords".to_owned(), redact(&reply)));

    let env = home.env_file(project);
    let body = std::fs::read_to_string(&env)
        .expect("read .env")
        .replace("CHANGE_ME_REQUIRED", &format!("secret-{project}-value"));
    std::fs::write(&env, body).expect("write .env");
    let (is_error, reply, _) = call(client, "opencode_start", start.clone(), false).await;
    assert!(!is_error && reply["status"] == "waiting_for_key", "{reply}");
    shapes.push(("start_waiting_for_key".to_owned(), redact(&reply)));
    sshd.authorize(reply["public_key"].as_str().expect("public key"));

    let (is_error, reply, text) = call(client, "opencode_start", start.clone(), true).await;
    assert!(!is_error && reply["status"] == "success", "{reply}");
    assert!(text.contains("OpenCode: http://127.0.0.1:"), "{text}");
    let progress = recorder.progress.lock().expect("lock").clone();
    assert!(
        progress
            .iter()
            .any(|p| p.contains("cloning the repository")),
        "progress: {progress:?}"
    );
    assert!(
        progress.iter().any(|p| p.contains("OpenCode is ready")),
        "progress: {progress:?}"
    );
    shapes.push(("start_success".to_owned(), redact(&reply)));

    let (_, reply, _) = call(client, "opencode_start", start.clone(), false).await;
    assert_eq!(reply["status"], "already_running");
    let (is_error, reply, _) = call(
        client,
        "opencode_status",
        json!({"project_name": project}),
        false,
    )
    .await;
    assert!(!is_error && reply["opencode"]["running"] == true, "{reply}");
    assert!(
        reply["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("landlock ABI ")),
        "{reply}"
    );
    shapes.push(("status_running".to_owned(), redact(&reply)));
    let (_, reply, _) = call(client, "opencode_list", json!({}), false).await;
    assert_eq!(reply["projects"][0]["name"], project);
    shapes.push(("list".to_owned(), redact(&reply)));
    let (_, reply, _) = call(
        client,
        "opencode_logs",
        json!({"project_name": project, "lines": 3}),
        false,
    )
    .await;
    assert_eq!(reply["status"], "success", "{reply}");
    // The gateway opened with the project; stop it on request, restart it, and it follows.
    let (_, reply, _) = call(client, "opencode_mcp_status", json!({}), false).await;
    assert_eq!(
        (reply["status"].as_str(), reply["active_projects"].as_u64()),
        (Some("running"), Some(1)),
        "{reply}"
    );
    assert_eq!(reply["port"].as_u64(), Some(u64::from(home.gateway_port)));
    shapes.push(("mcp_status".to_owned(), redact(&reply)));
    let (is_error, reply, _) = call(client, "opencode_stop_mcp_tool", json!({}), false).await;
    assert!(!is_error && reply["status"] == "success", "{reply}");
    let (_, reply, _) = call(client, "opencode_mcp_status", json!({}), false).await;
    assert_eq!(reply["status"], "stopped", "{reply}");
    let (is_error, reply, _) = call(client, "opencode_stop_mcp_tool", json!({}), false).await;
    assert!(
        is_error && reply["error"] == "gateway_not_running",
        "{reply}"
    );
    let (is_error, reply, _) = call(client, "opencode_mcp_restart", json!({}), false).await;
    assert!(!is_error && reply["status"] == "success", "{reply}");
    shapes.push(("mcp_restart".to_owned(), redact(&reply)));

    let (is_error, reply, _) = call(
        client,
        "opencode_stop",
        json!({"project_name": project}),
        false,
    )
    .await;
    assert!(!is_error && reply["status"] == "success", "{reply}");
    shapes.push(("stop".to_owned(), redact(&reply)));
    let (is_error, reply, _) = call(
        client,
        "opencode_destroy",
        json!({"project_name": project}),
        false,
    )
    .await;
    assert!(!is_error && reply["status"] == "success", "{reply}");
    shapes.push(("destroy".to_owned(), redact(&reply)));
    let (is_error, reply, _) = call(
        client,
        "opencode_status",
        json!({"project_name": project}),
        false,
    )
    .await;
    assert!(!is_error && reply["status"] == "not_found", "{reply}");
    shapes.push(("status_not_found".to_owned(), redact(&reply)));

    // Bad arguments are tool errors with a code and a hint, never protocol errors.
    let (is_error, reply, _) = call(
        client,
        "opencode_start",
        json!({"project_name": "../evil", "git_url": url}),
        false,
    )
    .await;
    assert!(
        is_error && reply["error"] == "invalid_project_name" && reply["hint"].is_string(),
        "{reply}"
    );
    shapes.push(("start_invalid_project_name".to_owned(), redact(&reply)));
    let (is_error, _, text) = call(client, "opencode_status", json!({}), false).await;
    assert!(is_error && text.contains("project_name"), "{text}");
    shapes
}

#[test]
fn an_rmcp_client_over_stdio_drives_the_whole_workflow() {
    let sshd = TestSshd::start();
    let home = TestHome::real();
    runtime().block_on(async {
        let recorder = Recorder::default();
        let client = stdio_client(&home, recorder.clone()).await;
        assert_eq!(
            client.peer_info().map(|i| i.protocol_version.clone()),
            Some(ProtocolVersion::V_2025_11_25)
        );
        let info = client.peer_info().expect("server info");
        assert_eq!(
            info.server_info.as_ref().map(|s| s.name.as_str()),
            Some("opencode-manager")
        );
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut listed = serde_json::to_value(&tools).expect("json");
        sort_by_name(&mut listed);
        assert_snapshot("tools_list", &listed);
        let shapes = drive_workflow(&client, &recorder, &home, &sshd, "viastdio").await;
        for (name, shape) in shapes {
            assert_snapshot(&format!("reply_{name}"), &shape);
        }
        client.cancel().await.expect("close");
    });
    // The audit log names the MCP server as the door of its tool calls.
    let audit = home.run(&["audit", "--project", "viastdio"]);
    let entries = audit.json["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["door"] == "mcp"
            && e["action"] == "start"
            && e["caller"]["kind"] == "local_user"),
        "{audit:?}"
    );
    assert!(entries.iter().all(|e| e["door"] == "mcp"), "{audit:?}");
}

#[test]
fn an_rmcp_client_over_http_drives_the_whole_workflow_at_the_newest_protocol() {
    let sshd = TestSshd::start();
    let home = TestHome::real();
    let (_server, port) = http_server(&home, "test-token-123");
    runtime().block_on(async {
        let recorder = Recorder::default();
        let client = http_client(port, "test-token-123", recorder.clone()).await;
        assert_eq!(
            client.peer_info().map(|i| i.protocol_version.clone()),
            Some(ProtocolVersion::LATEST)
        );
        let tools = client.list_all_tools().await.expect("tools/list");
        assert_eq!(tools.len(), 10);
        drive_workflow(&client, &recorder, &home, &sshd, "viahttp").await;
        client.cancel().await.expect("close");
    });
    // A 2025-era client is served on the same endpoint.
    runtime().block_on(async {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                format!("http://127.0.0.1:{port}/mcp"),
            )
            .auth_header("test-token-123");
        let client = Recorder::default()
            .serve_with_lifecycle(
                StreamableHttpClientTransport::from_config(config),
                ClientLifecycleMode::Initialize,
            )
            .await
            .expect("initialize over HTTP");
        assert_eq!(
            client.peer_info().map(|i| i.protocol_version.clone()),
            Some(ProtocolVersion::V_2025_11_25)
        );
        let (_, reply, _) = call(&client, "opencode_list", json!({}), false).await;
        assert_eq!(reply["status"], "success");
        client.cancel().await.expect("close");
    });
}

/// One raw HTTP request; returns the status code.
fn raw_status(port: u16, headers: &[(&str, &str)]) -> u16 {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("status line");
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status code")
}

#[test]
fn the_http_endpoint_refuses_missing_or_wrong_tokens_and_foreign_hosts_or_origins() {
    let home = TestHome::real();
    let (mut server, port) = http_server(&home, "right-token");
    let host = format!("127.0.0.1:{port}");
    assert_eq!(raw_status(port, &[("Host", &host)]), 401, "no token");
    assert_eq!(
        raw_status(
            port,
            &[("Host", &host), ("Authorization", "Bearer wrong-token")]
        ),
        401,
        "wrong token"
    );
    assert_eq!(
        raw_status(
            port,
            &[
                ("Host", "evil.example"),
                ("Authorization", "Bearer right-token")
            ]
        ),
        403,
        "foreign Host"
    );
    assert_eq!(
        raw_status(
            port,
            &[
                ("Host", &host),
                ("Authorization", "Bearer right-token"),
                ("Origin", "https://evil.example")
            ]
        ),
        403,
        "foreign Origin"
    );
    assert_eq!(
        raw_status(
            port,
            &[
                ("Host", &host),
                ("Authorization", "Bearer right-token"),
                ("Origin", "http://localhost:3000")
            ]
        ),
        200,
        "right token, local origin"
    );
    assert_eq!(
        raw_status(
            port,
            &[("Host", &host), ("Authorization", "Bearer right-token")]
        ),
        200,
        "right token"
    );
    // The token never shows in argv or in what the server prints.
    server.signal("TERM");
    server.wait_timeout(Duration::from_secs(10));
    let mut stderr = String::new();
    server
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains("/mcp") && !stderr.contains("right-token"),
        "{stderr}"
    );
}

#[test]
fn without_a_token_one_is_generated_into_a_private_file_whose_path_is_printed() {
    let home = TestHome::real();
    let port = free_port();
    let mut child = KillOnDrop(
        std::process::Command::new(manager_bin())
            .args(["serve", "--mode", "http", "--port", &port.to_string()])
            .env("OPENCODE_MANAGER_HOME", home.path())
            .env_remove("OPENCODE_MANAGER_TOKEN")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    wait_until("the HTTP server to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let token_file = home.path().join("mcp-http-token");
    let token = std::fs::read_to_string(&token_file)
        .expect("token file")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&token_file).expect("meta"))
            & 0o777,
        0o600
    );
    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        raw_status(
            port,
            &[
                ("Host", &host),
                ("Authorization", &format!("Bearer {token}"))
            ]
        ),
        200
    );
    child.signal("TERM");
    child.wait_timeout(Duration::from_secs(10));
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert!(
        stderr.contains(token_file.to_str().expect("utf8")) && !stderr.contains(&token),
        "{stderr}"
    );

    // A non-loopback bind without an explicit token refuses to start.
    let refused = std::process::Command::new(manager_bin())
        .args([
            "serve",
            "--mode",
            "http",
            "--host",
            "0.0.0.0",
            "--port",
            &free_port().to_string(),
        ])
        .env("OPENCODE_MANAGER_HOME", home.path())
        .env_remove("OPENCODE_MANAGER_TOKEN")
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("OPENCODE_MANAGER_TOKEN"));
}

fn sort_by_name(value: &mut Value) {
    if let Value::Array(items) = value {
        items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    }
}

/// Replaces volatile values (pids, ports, times, paths, keys) so a reply's shape can be pinned.
fn redacted(value: &Value, home: &TestHome, sshd: &TestSshd) -> Value {
    const VOLATILE: [&str; 16] = [
        "opencode_pid",
        "opencode_port",
        "pid",
        "port",
        "started_at",
        "created_at",
        "last_health_check",
        "public_key",
        "git_url",
        "opencode_url",
        "uptime_secs",
        "lines",
        "mcp_tool_port",
        "mcp_tool_url",
        "memory_bytes",
        // What this kernel's Landlock offers (`landlock ABI 7` here).
        "isolation",
    ];
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) && !v.is_null() {
                        json!(format!("[{k}]"))
                    } else {
                        redacted(v, home, sshd)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| redacted(v, home, sshd)).collect())
        }
        Value::String(s) => {
            let s = s
                .replace(home.path().to_str().unwrap_or("-"), "<HOME>")
                .replace(sshd.dir().to_str().unwrap_or("-"), "<SSHD>");
            let s = s
                .replace("viastdio", "<PROJECT>")
                .replace("viahttp", "<PROJECT>");
            let s = s.replace(
                &format!("{}@127.0.0.1", crate::support::current_user()),
                "<USER>@127.0.0.1",
            );
            // The public key inside the waiting_for_key message, and ports in git's text.
            let s = regex_lite_replace(&s, "ssh-ed25519 ", ' ', "ssh-ed25519 <KEY>");
            let s = loopback_ports_redacted(&s);
            Value::String(s)
        }
        other => other.clone(),
    }
}

/// Replaces `prefix<token>` (up to `end`) with `with`.
fn regex_lite_replace(text: &str, prefix: &str, end: char, with: &str) -> String {
    let Some(start) = text.find(prefix) else {
        return text.to_owned();
    };
    let rest = &text[start + prefix.len()..];
    let stop = rest.find(end).unwrap_or(rest.len());
    format!("{}{with}{}", &text[..start], &rest[stop..])
}

/// Compares with `tests/snapshots/<name>.json`; writes it when missing (outside CI) or when
/// `OCM_UPDATE_SNAPSHOTS=1`.
fn assert_snapshot(name: &str, value: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    let text = format!("{}\n", serde_json::to_string_pretty(value).expect("json"));
    let update = std::env::var_os("OCM_UPDATE_SNAPSHOTS").is_some();
    match std::fs::read_to_string(&path) {
        Ok(expected) if !update => assert_eq!(
            text, expected,
            "snapshot {name} changed; rerun with OCM_UPDATE_SNAPSHOTS=1 if intended"
        ),
        Err(_) if std::env::var_os("CI").is_some() && !update => {
            panic!("snapshot {} is missing", path.display())
        }
        _ => std::fs::write(&path, text).expect("write snapshot"),
    }
}

#[test]
fn a_long_clone_blocks_no_other_tool_and_a_cancelled_start_still_finishes_whole() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = crate::faults::file_repo(repos.path(), "r");
    let flag = repos.path().join("slow");
    std::fs::write(&flag, "").expect("flag");
    let bin = crate::faults::slow_clone_git(repos.path(), &flag);
    let pid_file = std::path::PathBuf::from(format!("{}.pid", flag.display()));
    let home = TestHome::fake("ok", "allow_file = true");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let fake = crate::support::fake_opencode_bin();
    runtime().block_on(async {
        let env = [
            ("PATH", path.as_str()),
            ("OPENCODE_BIN", fake.to_str().expect("utf8")),
            ("ENVIRONMENT", "development"),
        ];
        let client = stdio_client_with(&home, Recorder::default(), &env).await;
        let mut params = CallToolRequestParams::new("opencode_start");
        params.arguments = json!({"project_name": "p", "git_url": url})
            .as_object()
            .cloned();
        let request =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        let handle = client
            .peer()
            .send_cancellable_request(request, rmcp::service::PeerRequestOptions::default())
            .await
            .expect("send start");
        tokio::task::spawn_blocking({
            let pid_file = pid_file.clone();
            move || {
                wait_until("the clone to be under way", Duration::from_secs(30), || {
                    pid_file.exists()
                })
            }
        })
        .await
        .expect("wait");
        // Another tool answers while the clone runs.
        let (is_error, reply, _) = call(&client, "opencode_list", json!({}), false).await;
        assert!(!is_error && reply["status"] == "success", "{reply}");
        // The caller gives up; the start is not abandoned halfway.
        handle
            .cancel(Some("the user changed their mind".into()))
            .await
            .expect("cancel");
        std::fs::remove_file(&flag).expect("let the clone finish");
        client.cancel().await.expect("close");
    });
    wait_until(
        "the cancelled start to finish",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(home.path().join("opencode-state.json"))
                .is_ok_and(|s| s.contains("\"running\""))
        },
    );
    assert!(
        home.sandbox("p").join("repo/README.md").exists(),
        "the clone is whole"
    );
    let leftovers = std::fs::read_dir(home.sandbox("p"))
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".repo-clone-"))
        .count();
    assert_eq!(leftovers, 0);
}

/// `127.0.0.1:4101` → `127.0.0.1:<PORT>` (ports differ per test home).
fn loopback_ports_redacted(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..i + 10]);
        rest = &rest[i + 10..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<PORT>");
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn a_client_at_the_newest_protocol_is_served_over_stdio_too() {
    let home = TestHome::real();
    runtime().block_on(async {
        let home_path = home.path().to_owned();
        let transport = TokioChildProcess::new(
            tokio::process::Command::new(manager_bin()).configure(|cmd| {
                cmd.args(["serve", "--mode", "stdio"])
                    .env("OPENCODE_MANAGER_HOME", &home_path)
                    .env("OPENCODE_BIN", opencode_bin());
            }),
        )
        .expect("spawn serve --mode stdio");
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        };
        let client = Recorder::default()
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .expect("discover over stdio");
        assert_eq!(
            client.peer_info().map(|i| i.protocol_version.clone()),
            Some(ProtocolVersion::LATEST)
        );
        assert_eq!(client.list_all_tools().await.expect("tools/list").len(), 10);
        let (is_error, reply, _) = call(&client, "opencode_list", json!({}), false).await;
        assert!(!is_error && reply["status"] == "success", "{reply}");
        client.cancel().await.expect("close");
    });
}
