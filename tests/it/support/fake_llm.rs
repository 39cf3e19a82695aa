//! A fake OpenAI-compatible provider (testing-recipes §2): answers `POST …/chat/completions`
//! with a close-delimited HTTP/1.0 SSE stream.
//!
//! - title request (no `tools`): `Fake title`
//! - last message from a tool: `tool said: <its output, trimmed>`
//! - last user text `RUN: <cmd>`: a `bash` tool call running `<cmd>`
//! - anything else: `Hello from the fake model.`
//!
//! The last chunk carries `usage` 12 prompt / 6 completion tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};

pub struct FakeLlm {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeLlm {
    pub fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake LLM");
        let port = listener.local_addr().expect("fake LLM address").port();
        let requests = Arc::new(AtomicUsize::new(0));
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
        FakeLlm {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    /// `OPENCODE_CONFIG_CONTENT` pointing OpenCode at this fake (provider `fake`, model `fake/m1`).
    pub fn config_content(&self, permission_bash: &str) -> String {
        json!({
            "provider": {"fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": format!("http://127.0.0.1:{}/v1", self.port), "apiKey": "sk-fake"},
                "models": {"m1": {"name": "Fake M1"}}
            }},
            "model": "fake/m1",
            "small_model": "fake/m1",
            "enabled_providers": ["fake"],
            "permission": {"bash": permission_bash}
        })
        .to_string()
    }

    /// How many chat/completions requests were served.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn handle(stream: TcpStream, requests: &AtomicUsize) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some((path, body)) = read_request(&mut reader) else {
        return;
    };
    if !path
        .split('?')
        .next()
        .unwrap_or("")
        .ends_with("chat/completions")
    {
        let _ = out.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = out.write_all(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
    );
    let events = reply(&request);
    let count = events.len();
    for (i, event) in events.into_iter().enumerate() {
        let mut chunk = json!({"choices": [event]});
        if i + 1 == count {
            // OpenCode reports these as the message's input / output tokens.
            chunk["usage"] =
                json!({"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18});
        }
        if out
            .write_all(format!("data: {chunk}\n\n").as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
    let _ = out.write_all(b"data: [DONE]\n\n");
    let _ = out.flush();
    // Dropping both halves closes the connection, which ends the HTTP/1.0 body.
}

/// The `choices[0]` of each SSE chunk answering `request`.
pub fn reply(request: &Value) -> Vec<Value> {
    let text = |content: &str| {
        vec![
            json!({"index": 0, "delta": {"content": content}, "finish_reason": null}),
            json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
        ]
    };
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    if request.get("tools").is_none() {
        return text("Fake title");
    }
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if last["role"] == "tool" {
        return text(&format!("tool said: {}", message_text(&last).trim()));
    }
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(message_text)
        .unwrap_or_default();
    if let Some(command) = user.strip_prefix("RUN: ") {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let id = format!("call_{}", CALLS.fetch_add(1, Ordering::SeqCst) + 1);
        let arguments = json!({"command": command, "description": "run it"}).to_string();
        return vec![
            json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": id, "type": "function",
                "function": {"name": "bash", "arguments": arguments}}]}, "finish_reason": null}),
            json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
        ];
    }
    text("Hello from the fake model.")
}

/// A message's text: `content` as a string, or the concatenated `text` of its parts.
fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Reads one request; returns its target and body (Content-Length or chunked).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
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
    Some((target, body))
}
