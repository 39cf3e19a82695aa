//! A fake Gemini API (generativelanguage `v1beta`) for the real Gemini CLI 0.61.0 in ACP mode
//! (acp.md §3): one loopback thread per connection, one request per connection, every request
//! recorded.
//!
//! - `POST …/models/<model>:streamGenerateContent?alt=sse`: one SSE `data:` event, then close.
//!   The reply depends on the last user content:
//!   - a `functionResponse` part: `tool said: <its output, trimmed>`
//!   - a line `RUN: <cmd>` in any text part: a `run_shell_command` function call running `<cmd>`
//!   - anything else: `Hello from the fake Gemini.`
//! - `POST …:generateContent` (the `auto` model's routing classifier, other JSON helper calls):
//!   `{"complexity_reasoning":"simple","complexity_score":10}` as the candidate's text when the
//!   call asks for JSON, else `Fake title`.
//! - `POST …:countTokens`: one token. `GET …/models`: a one-model list. Anything else: 404.
//!
//! Launch the CLI as [`gemini_bin`] with [`ARGS`], the environment of [`FakeGemini::env`] and a
//! private `HOME` (prepared by [`FakeGemini::prepare_home`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

/// The model the CLI is pinned to: a named model skips the `auto` routing classifier call.
pub const MODEL: &str = "gemini-2.5-flash";

/// Arguments after [`gemini_bin`]: ACP on stdio, pinned model.
pub const ARGS: &[&str] = &["--acp", "-m", MODEL];

/// `~/.gemini/settings.json` for a private `HOME`: API-key auth, no folder-trust prompt, and no
/// update checks, usage statistics or telemetry (all of which would try to reach Google).
pub const SETTINGS: &str = r#"{
  "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": false}},
  "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
  "privacy": {"usageStatisticsEnabled": false},
  "telemetry": {"enabled": false}
}
"#;

/// The real Gemini CLI: `$OCM_TEST_GEMINI`, else the copy `scripts/test` installs.
pub fn gemini_bin() -> PathBuf {
    let path = match std::env::var_os("OCM_TEST_GEMINI") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/gemini"),
    };
    if !path.exists() {
        panic!(
            "gemini not found at {}: run scripts/test, which installs @google/gemini-cli@0.61.0 into .tools/",
            path.display()
        );
    }
    path
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target, query included (`/v1beta/models/…:streamGenerateContent?alt=sse`).
    pub path: String,
    /// The JSON body; `Null` when there was none or it did not parse.
    pub body: Value,
}

pub struct FakeGemini {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeGemini {
    pub fn start() -> FakeGemini {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake Gemini");
        let port = listener.local_addr().expect("fake Gemini address").port();
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
        FakeGemini {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the value of `GOOGLE_GEMINI_BASE_URL` (plain http is allowed
    /// for loopback only).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables pointing Gemini CLI at this fake with API-key auth. Add a private `HOME`
    /// (see [`FakeGemini::prepare_home`]); no ACP `authenticate` call is needed.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("GEMINI_API_KEY", "fake".to_string()),
            ("GOOGLE_GEMINI_BASE_URL", self.base_url()),
            // OpenTelemetry export off (already the default; usage statistics need SETTINGS).
            ("GEMINI_TELEMETRY_ENABLED", "false".to_string()),
            // One process. Otherwise the CLI re-spawns itself as a child node with a bigger heap,
            // and the parent ignores SIGTERM/SIGINT/SIGHUP: a SIGTERM to the spawned pid does
            // nothing and a SIGKILL orphans the child.
            ("GEMINI_CLI_NO_RELAUNCH", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates `home/.gemini/settings.json` ([`SETTINGS`]) and returns `HOME=home`.
    pub fn prepare_home(home: &Path) -> Vec<(String, String)> {
        let dir = home.join(".gemini");
        std::fs::create_dir_all(&dir).expect("creating ~/.gemini");
        std::fs::write(dir.join("settings.json"), SETTINGS).expect("writing settings.json");
        vec![("HOME".to_string(), home.display().to_string())]
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("fake Gemini log").clone()
    }

    /// The `streamGenerateContent` requests so far (the model turns).
    pub fn turns(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(":streamGenerateContent"))
            .collect()
    }
}

impl Drop for FakeGemini {
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
        .expect("fake Gemini log")
        .push(request.clone());
    let path = request.path.split('?').next().unwrap_or("");
    let response = match request.method.as_str() {
        "GET" if path.ends_with("/models") => json_response(
            "200 OK",
            &json!({"models": [{
                "name": format!("models/{MODEL}"),
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]
            }]}),
        ),
        "POST" if path.ends_with(":streamGenerateContent") => {
            let event = json!({
                "candidates": [candidate(reply_parts(&request.body))],
                "usageMetadata": usage(),
                "modelVersion": MODEL
            });
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                 Connection: close\r\n\r\ndata: {event}\n\n"
            )
        }
        "POST" if path.ends_with(":generateContent") => json_response(
            "200 OK",
            &json!({
                "candidates": [candidate(vec![json!({"text": helper_text(&request.body)})])],
                "usageMetadata": usage()
            }),
        ),
        "POST" if path.ends_with(":countTokens") => {
            json_response("200 OK", &json!({"totalTokens": 1}))
        }
        _ => json_response(
            "404 Not Found",
            &json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}),
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

fn candidate(parts: Vec<Value>) -> Value {
    json!({"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0})
}

fn usage() -> Value {
    json!({"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2})
}

/// The model's parts answering a `streamGenerateContent` request.
pub fn reply_parts(request: &Value) -> Vec<Value> {
    let parts = request["contents"]
        .as_array()
        .and_then(|contents| {
            contents
                .iter()
                .rev()
                .find(|c| c["role"].as_str().unwrap_or("user") == "user")
        })
        .and_then(|c| c["parts"].as_array().cloned())
        .unwrap_or_default();
    if let Some(response) = parts.iter().find_map(|p| p.get("functionResponse")) {
        let output = match &response["response"]["output"] {
            Value::String(s) => s.clone(),
            _ => response["response"].to_string(),
        };
        return vec![json!({"text": format!("tool said: {}", output.trim())})];
    }
    // The first turn's text comes after a `<session_context>` part: look at every line of all.
    let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    let command = text
        .iter()
        .flat_map(|t| t.lines())
        .find_map(|line| line.trim().strip_prefix("RUN: "));
    match command {
        Some(command) => vec![json!({"functionCall": {
            "name": "run_shell_command",
            "args": {"command": command, "description": "run it"}
        }})],
        None => vec![json!({"text": "Hello from the fake Gemini."})],
    }
}

/// The text answering a non-streaming `generateContent` call: JSON for the routing classifier
/// (and any other call asking for JSON), else a title.
fn helper_text(request: &Value) -> String {
    let config = &request["generationConfig"];
    let wants_json = config["responseMimeType"] == "application/json"
        || config.get("responseJsonSchema").is_some()
        || config.get("responseSchema").is_some();
    if wants_json {
        json!({"complexity_reasoning": "simple", "complexity_score": 10}).to_string()
    } else {
        "Fake title".to_string()
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
