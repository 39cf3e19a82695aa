//! A fake Anthropic Messages API for the real Claude Code behind claude-code-acp 0.16.2
//! (acp.md §4): one loopback thread per connection, one request per connection, every request
//! recorded.
//!
//! - `POST /v1/messages[?beta=true]`, streaming (SSE `message_start` … `message_stop`) or not
//!   (one JSON message). The reply depends on the last message:
//!   - a `tool_result` block: `tool said: <its text, trimmed>`
//!   - a line `RUN: <cmd>` in its text, and the request offers tools: a `Bash` tool use
//!     running `<cmd>`
//!   - anything else: `Hello from the fake Claude.`
//! - `POST /v1/messages/count_tokens`: one token. `HEAD` anything: 200. `GET` anything: a
//!   one-model list. Other `POST`s: 404.
//!
//! Launch the adapter as [`claude_acp_bin`] with no arguments, the environment of
//! [`FakeAnthropic::env`] plus a private `HOME` and `CLAUDE_CONFIG_DIR`
//! ([`FakeAnthropic::prepare_home`]). It does not exit on stdin EOF: SIGTERM it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

/// The claude-code-acp adapter: `$OCM_TEST_CLAUDE_ACP`, else the copy `scripts/test` installs.
pub fn claude_acp_bin() -> PathBuf {
    let path = match std::env::var_os("OCM_TEST_CLAUDE_ACP") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/claude-code-acp"),
    };
    if !path.exists() {
        panic!(
            "claude-code-acp not found at {}: run scripts/test, which installs @zed-industries/claude-code-acp@0.16.2 into .tools/",
            path.display()
        );
    }
    path
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target, query included (`/v1/messages?beta=true`).
    pub path: String,
    /// The JSON body; `Null` when there was none or it did not parse.
    pub body: Value,
}

pub struct FakeAnthropic {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeAnthropic {
    pub fn start() -> FakeAnthropic {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake Anthropic");
        let port = listener
            .local_addr()
            .expect("fake Anthropic address")
            .port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let requests = Arc::clone(&requests);
                    std::thread::spawn(move || handle(stream, &requests));
                }
            })
        };
        FakeAnthropic {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the value of `ANTHROPIC_BASE_URL` (no `/v1`: the SDK adds it).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables pointing Claude Code at this fake with no other traffic. `IS_SANDBOX=1`
    /// lets the bundled CLI run as root (without it `session/new` fails). Add a private `HOME`
    /// and `CLAUDE_CONFIG_DIR` (see [`FakeAnthropic::prepare_home`]).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ANTHROPIC_BASE_URL", self.base_url()),
            ("ANTHROPIC_API_KEY", "sk-ant-fake".to_string()),
            ("DISABLE_TELEMETRY", "1".to_string()),
            ("DISABLE_AUTOUPDATER", "1".to_string()),
            ("DISABLE_ERROR_REPORTING", "1".to_string()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
            ("IS_SANDBOX", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates `dir/home` and `dir/claude` and returns `HOME` and `CLAUDE_CONFIG_DIR` for them.
    pub fn prepare_home(dir: &Path) -> Vec<(String, String)> {
        let (home, config) = (dir.join("home"), dir.join("claude"));
        for d in [&home, &config] {
            std::fs::create_dir_all(d).expect("creating a private Claude home");
        }
        vec![
            ("HOME".to_string(), home.display().to_string()),
            (
                "CLAUDE_CONFIG_DIR".to_string(),
                config.display().to_string(),
            ),
        ]
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("fake Anthropic log").clone()
    }

    /// The `/v1/messages` requests that offered tools (the main model's turns, not the small
    /// model's side calls).
    pub fn turns(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some("/v1/messages"))
            .filter(|r| r.body["tools"].as_array().is_some_and(|t| !t.is_empty()))
            .collect()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn handle(stream: TcpStream, requests: &Mutex<Vec<Request>>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    requests
        .lock()
        .expect("fake Anthropic log")
        .push(request.clone());
    let path = request.path.split('?').next().unwrap_or("");
    let response = match (request.method.as_str(), path) {
        ("HEAD", _) => {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
        ("GET", _) => json_response(
            "200 OK",
            &json!({"data": [{"id": "claude-sonnet-4-5", "type": "model", "display_name": "Fake"}],
                    "has_more": false}),
        ),
        ("POST", "/v1/messages/count_tokens") => {
            json_response("200 OK", &json!({"input_tokens": 1}))
        }
        ("POST", "/v1/messages") => messages(&request.body),
        _ => json_response(
            "404 Not Found",
            &json!({"type": "error", "error": {"type": "not_found_error", "message": "not found"}}),
        ),
    };
    let _ = out.write_all(response.as_bytes());
    let _ = out.flush();
    // Dropping both halves closes the connection, which ends a close-delimited SSE body.
}

fn json_response(status: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The whole response to a `/v1/messages` request: SSE when it asks for a stream.
fn messages(request: &Value) -> String {
    static MESSAGES: AtomicUsize = AtomicUsize::new(0);
    let id = format!("msg_fake_{}", MESSAGES.fetch_add(1, Ordering::SeqCst) + 1);
    let model = request["model"].as_str().unwrap_or("claude-sonnet-4-5");
    let blocks = reply_blocks(request);
    let stop = if blocks.iter().any(|b| b["type"] == "tool_use") {
        "tool_use"
    } else {
        "end_turn"
    };
    let usage = json!({"input_tokens": 1, "output_tokens": 1,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let message = |content: Vec<Value>, stop: Value| {
        json!({"id": id, "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage})
    };
    if request["stream"] != true {
        return json_response("200 OK", &message(blocks, stop.into()));
    }
    let mut body = String::new();
    let mut event = |name: &str, data: Value| {
        body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": message(Vec::new(), Value::Null)}),
    );
    for (index, block) in blocks.iter().enumerate() {
        let (start, delta) = if block["type"] == "tool_use" {
            (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
            )
        } else {
            (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": block["text"]}),
            )
        };
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        );
    }
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": 1}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         Connection: close\r\n\r\n{body}"
    )
}

/// The assistant's content blocks answering a `/v1/messages` request.
pub fn reply_blocks(request: &Value) -> Vec<Value> {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    let content = &last["content"];
    let is_tool_result = content
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    if is_tool_result {
        return vec![json!({"type": "text",
                           "text": format!("tool said: {}", blocks_text(content).trim())})];
    }
    let offers_tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    let text = blocks_text(content);
    let command = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("RUN: "));
    match command {
        Some(command) if offers_tools => {
            static CALLS: AtomicUsize = AtomicUsize::new(0);
            let id = format!("toolu_fake_{}", CALLS.fetch_add(1, Ordering::SeqCst) + 1);
            vec![json!({"type": "tool_use", "id": id, "name": "Bash",
                        "input": {"command": command, "description": "run it"}})]
        }
        _ => vec![json!({"type": "text", "text": "Hello from the fake Claude."})],
    }
}

/// A message content's text: a string, or the `text` blocks and `tool_result` contents joined
/// by newlines.
fn blocks_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().map(str::to_string),
                Some("tool_result") => Some(blocks_text(&b["content"])),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Reads one request: method, target and JSON body (Content-Length or chunked).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().ok()?;
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Request { method, path, body })
}
