//! The client registrations that README.md documents ("Registering the MCP server") work as
//! written: each snippet is read from the README, parsed, and used to reach the real server, over
//! stdio for the `claude mcp add` command and the Claude Desktop config, and over Streamable HTTP
//! for the generic client and MoJoAssistant configs.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use rmcp::model::ProtocolVersion;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;

use crate::home::TestHome;
use crate::support::{KillOnDrop, free_port, manager_bin, opencode_bin, wait_until};

/// How many tools `src/mcp/tools.rs` declares.
const TOOL_COUNT: usize = 10;

/// The port the documented URLs use: the default of `serve --port`.
const DOCUMENTED_PORT: &str = "8000";

fn readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).expect("reading README.md")
}

/// The fenced block after `<!-- snippet: NAME -->`: (info string, body).
fn snippet(readme: &str, name: &str) -> (String, String) {
    let marker = format!("<!-- snippet: {name} -->");
    let mut lines = readme.lines().skip_while(|l| l.trim() != marker);
    assert!(lines.next().is_some(), "README.md has no `{marker}` marker");
    let opening = lines
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("nothing follows `{marker}` in README.md"));
    let info = opening
        .trim()
        .strip_prefix("```")
        .unwrap_or_else(|| panic!("`{marker}` is not followed by a fenced block: {opening:?}"))
        .trim()
        .to_owned();
    let mut body = String::new();
    for line in lines.by_ref() {
        if line.trim() == "```" {
            return (info, body);
        }
        body.push_str(line);
        body.push('\n');
    }
    panic!("the fenced block after `{marker}` is not closed");
}

fn json_snippet(readme: &str, name: &str) -> Value {
    let (info, body) = snippet(readme, name);
    assert_eq!(info, "json", "snippet {name} should be a ```json block");
    serde_json::from_str(&body)
        .unwrap_or_else(|err| panic!("snippet {name} is not valid JSON ({err}):\n{body}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs a documented stdio command line (`opencode-manager` replaced by the built binary) as an
/// rmcp stdio client, and returns the names of the tools it lists.
fn list_tools_over_stdio(
    argv: &[String],
    env: &[(String, String)],
    home: &TestHome,
) -> Vec<String> {
    assert_eq!(
        argv.first().map(String::as_str),
        Some("opencode-manager"),
        "the documented command should be opencode-manager: {argv:?}"
    );
    assert_eq!(
        &argv[1..],
        ["serve", "--mode", "stdio"],
        "the documented arguments should be `serve --mode stdio`"
    );
    let args = argv[1..].to_vec();
    let mut env = env.to_vec();
    env.retain(|(k, _)| k != "OPENCODE_MANAGER_HOME");
    env.push((
        "OPENCODE_MANAGER_HOME".into(),
        home.path().display().to_string(),
    ));
    runtime().block_on(async {
        let transport = TokioChildProcess::new(
            tokio::process::Command::new(manager_bin()).configure(|cmd| {
                cmd.args(&args)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("OPENCODE_BIN", opencode_bin())
                    .env_remove("ENVIRONMENT")
                    // Only the shipped tools: no benchmark baseline tool.
                    .env_remove("OCM_BENCH_TOOL");
            }),
        )
        .expect("spawning the documented stdio command");
        let client =
            ().serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
                .await
                .expect("initialize over stdio");
        let tools = client
            .list_all_tools()
            .await
            .expect("tools/list over stdio");
        client.cancel().await.expect("closing the stdio client");
        tools.into_iter().map(|t| t.name.to_string()).collect()
    })
}

fn assert_all_tools(names: &[String], how: &str) {
    assert_eq!(names.len(), TOOL_COUNT, "{how}: tools listed: {names:?}");
    for expected in ["opencode_start", "opencode_status", "opencode_destroy"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{how}: {expected} missing from {names:?}"
        );
    }
}

#[test]
fn the_claude_code_command_starts_a_working_stdio_server() {
    let (info, body) = snippet(&readme(), "claude-code");
    assert!(
        matches!(info.as_str(), "sh" | "bash" | "console"),
        "the claude-code snippet should be a shell block, is {info:?}"
    );
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("claude mcp add"))
        .unwrap_or_else(|| panic!("no `claude mcp add` line in the snippet:\n{body}"));
    let words = shlex::split(line).expect("the command line parses as shell words");
    let split = words
        .iter()
        .position(|w| w == "--")
        .expect("`claude mcp add` separates the server command with --");
    assert!(
        words[..split].iter().any(|w| w == "opencode-manager"),
        "the server should be registered under the name opencode-manager: {words:?}"
    );
    let home = TestHome::real();
    let names = list_tools_over_stdio(&words[split + 1..], &[], &home);
    assert_all_tools(&names, "claude-code snippet");
}

#[test]
fn the_claude_desktop_config_starts_a_working_stdio_server() {
    let config = json_snippet(&readme(), "claude-desktop");
    let server = &config["mcpServers"]["opencode-manager"];
    let command = server["command"]
        .as_str()
        .expect("mcpServers.opencode-manager.command is a string");
    let mut argv = vec![command.to_owned()];
    argv.extend(
        server["args"]
            .as_array()
            .expect("mcpServers.opencode-manager.args is an array")
            .iter()
            .map(|a| a.as_str().expect("each arg is a string").to_owned()),
    );
    let env: Vec<(String, String)> = server["env"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().expect("env values are strings").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        env.iter().any(|(k, _)| k == "OPENCODE_MANAGER_HOME"),
        "the Claude Desktop snippet shows OPENCODE_MANAGER_HOME"
    );
    let home = TestHome::real();
    let names = list_tools_over_stdio(&argv, &env, &home);
    assert_all_tools(&names, "claude-desktop snippet");
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
        .env_remove("OCM_BENCH_TOOL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve --mode http");
    wait_until("the HTTP server to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (KillOnDrop(child), port)
}

/// Checks a documented HTTP registration (`url` and `Authorization` header template), fills in the
/// port and token of a real server, and lists its tools with an rmcp Streamable HTTP client.
fn list_tools_over_http(entry: &Value, name: &str, lifecycle: ClientLifecycleMode) -> Vec<String> {
    let url = entry["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: url is a string: {entry}"));
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{name}: the url should be http://…: {url}"));
    let (authority, path) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("{name}: the url has no path: {url}"));
    assert_eq!(
        format!("/{path}"),
        "/mcp",
        "{name}: the endpoint path is /mcp"
    );
    assert_eq!(
        authority,
        format!("127.0.0.1:{DOCUMENTED_PORT}"),
        "{name}: the documented address is the default of `serve --mode http`"
    );
    let header = entry["headers"]["Authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: headers.Authorization is a string: {entry}"));
    let placeholder = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("{name}: the Authorization header starts with `Bearer `"));
    assert!(
        placeholder.starts_with('<') && placeholder.ends_with('>'),
        "{name}: the token is shown as a <placeholder>, never a real value: {header}"
    );

    let token = format!("readme-{name}-token");
    let home = TestHome::real();
    let (_server, port) = http_server(&home, &token);
    let url = url.replace(&format!(":{DOCUMENTED_PORT}/"), &format!(":{port}/"));
    let header = header.replace(placeholder, &token);
    let raw_token = header
        .strip_prefix("Bearer ")
        .expect("the filled-in header still starts with Bearer")
        .to_owned();
    runtime().block_on(async {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url.clone(),
            )
            .auth_header(raw_token);
        let client = ()
            .serve_with_lifecycle(
                StreamableHttpClientTransport::from_config(config),
                lifecycle,
            )
            .await
            .unwrap_or_else(|err| panic!("{name}: connecting to {url}: {err}"));
        let tools = client
            .list_all_tools()
            .await
            .unwrap_or_else(|err| panic!("{name}: tools/list: {err}"));
        client.cancel().await.expect("closing the HTTP client");
        tools.into_iter().map(|t| t.name.to_string()).collect()
    })
}

#[test]
fn the_readme_says_how_to_start_the_http_server_and_where_the_token_is() {
    let readme = readme();
    assert!(
        readme.contains(&format!(
            "opencode-manager serve --mode http --port {DOCUMENTED_PORT}"
        )),
        "README.md shows the command that starts the HTTP server"
    );
    assert!(
        readme.contains("OPENCODE_MANAGER_TOKEN") && readme.contains("mcp-http-token"),
        "README.md says where the bearer token comes from"
    );
}

#[test]
fn the_streamable_http_config_reaches_a_working_server() {
    let config = json_snippet(&readme(), "streamable-http");
    let entry = &config["mcpServers"]["opencode-manager"];
    assert_eq!(
        entry["type"], "http",
        "a Streamable HTTP entry has type http"
    );
    let names = list_tools_over_http(
        entry,
        "streamable-http",
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        },
    );
    assert_all_tools(&names, "streamable-http snippet");
}

#[test]
fn the_mojoassistant_config_reaches_a_working_server() {
    let config = json_snippet(&readme(), "mojoassistant");
    let names = list_tools_over_http(
        &config["opencode-manager"],
        "mojoassistant",
        ClientLifecycleMode::Initialize,
    );
    assert_all_tools(&names, "mojoassistant snippet");
}
