//! A stand-in for `opencode serve`, for faults the real server will not produce on demand.
//!
//! Built only with `--features test-support`. Invoked like the real binary:
//! `fake-opencode serve --hostname 127.0.0.1 --port P` (or `--version`).
//!
//! Environment:
//! - `OPENCODE_SERVER_PASSWORD`: Basic auth for user `opencode` (empty or unset: no auth).
//! - `FAKE_OPENCODE_MODE`: `ok` (default), `crash`, `port-conflict`, `slow`, `hang`,
//!   `exit-after-ready`, `wedge` (answers, then after the delay stops answering while staying
//!   alive), `child`, `memory-growth` (serves, and takes 16 MiB more every 100 ms).
//! - `FAKE_OPENCODE_DELAY_MS`: delay for `slow` (default 3000), `exit-after-ready` and `wedge`
//!   (default 500).
//! - `FAKE_OPENCODE_NO_PROVIDERS=1`: `GET /config/providers` lists no provider.
//! - `FAKE_OPENCODE_RSS_MB`: hold this much touched memory from the start (a measurable size).
//! - `FAKE_OPENCODE_CHILD_PID_FILE`: where the `child` mode's detached child writes its pid.
//!
//! `POST /session/<id>/message` is a turn that runs until a file named `release-turn` appears in
//! the working directory (the clone), then answers `turn done`; until then it says on stdout that
//! it started, so a test can stop the Instance, or close the gateway, in the middle of it.
#![allow(clippy::disallowed_methods)] // A test tool: it spawns what it pleases.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const VERSION: &str = "1.18.33-fake";
const SERVE_ERROR: &str = "Error: Unexpected error\n\nServeError";

struct Server {
    /// Expected value of the `Authorization` header, if auth is on.
    auth: Option<String>,
    no_providers: bool,
    /// The detached child of `child` mode, killed by `POST /global/dispose`.
    child: Mutex<Option<Child>>,
    /// In `wedge` mode, when it stops answering, on new and kept-alive connections alike (as an
    /// event loop that hangs does).
    wedged_at: Option<std::time::Instant>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-v") {
        return say(&mut std::io::stdout(), VERSION, 0);
    }
    if args.first().map(String::as_str) != Some("serve") {
        return fail("usage: fake-opencode serve --hostname H --port P", 2);
    }
    let mut hostname = "127.0.0.1".to_string();
    let mut port = "0".to_string();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match key {
            "--hostname" => &mut hostname,
            "--port" => &mut port,
            _ => continue,
        };
        match inline.or_else(|| it.next().cloned()) {
            Some(v) => *slot = v,
            None => return fail(format!("fake-opencode: {key} needs a value"), 2),
        }
    }
    let mode = std::env::var("FAKE_OPENCODE_MODE").unwrap_or_else(|_| "ok".into());
    let delay = |default: u64| {
        let ms = std::env::var("FAKE_OPENCODE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok());
        Duration::from_millis(ms.unwrap_or(default))
    };
    match mode.as_str() {
        "ok" | "hang" | "exit-after-ready" | "wedge" | "child" | "memory-growth" => {}
        "crash" => return fail("fake-opencode: crashing on purpose", 3),
        "port-conflict" => return fail(SERVE_ERROR, 1),
        "slow" => thread::sleep(delay(3000)),
        other => {
            return fail(
                format!("fake-opencode: unknown FAKE_OPENCODE_MODE {other:?}"),
                2,
            );
        }
    }
    let password = std::env::var("OPENCODE_SERVER_PASSWORD").unwrap_or_default();
    let wedged_at = std::time::Instant::now() + delay(500);
    let server = Arc::new(Server {
        auth: (!password.is_empty()).then(|| {
            format!(
                "Basic {}",
                base64(format!("opencode:{password}").as_bytes())
            )
        }),
        no_providers: std::env::var("FAKE_OPENCODE_NO_PROVIDERS").is_ok_and(|v| v == "1"),
        child: Mutex::new(None),
        wedged_at: (mode == "wedge").then_some(wedged_at),
    });
    if mode == "child" {
        match spawn_detached_child() {
            Ok(child) => *server.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child),
            Err(e) => return fail(format!("fake-opencode: spawning child: {e}"), 4),
        }
    }
    let port: u16 = match port.parse() {
        Ok(p) => p,
        Err(_) => return fail(SERVE_ERROR, 1),
    };
    let listener = match TcpListener::bind((hostname.as_str(), port)) {
        Ok(l) => l,
        Err(_) => return fail(SERVE_ERROR, 1),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let held_memory: Vec<u8> = std::env::var("FAKE_OPENCODE_RSS_MB")
        .ok()
        .and_then(|mb| mb.parse::<usize>().ok())
        .map_or_else(Vec::new, |mb| vec![1u8; mb << 20]);
    std::hint::black_box(&held_memory);
    let mut out = std::io::stdout().lock();
    if server.auth.is_none() {
        // The real server warns on stdout before the listening line.
        let _ = writeln!(
            out,
            "Warning: OPENCODE_SERVER_PASSWORD is not set; server is unsecured."
        );
    }
    let _ = writeln!(out, "opencode server listening on http://{hostname}:{port}");
    let _ = out.flush();
    drop(out);
    if mode == "exit-after-ready" {
        let wait = delay(500);
        thread::spawn(move || {
            thread::sleep(wait);
            std::process::exit(7);
        });
    }
    if mode == "memory-growth" {
        thread::spawn(|| {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 16 << 20]);
                thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let mut held = Vec::new();
    for stream in listener.incoming().flatten() {
        if mode == "hang" || (mode == "wedge" && std::time::Instant::now() >= wedged_at) {
            held.push(stream); // never answered, never closed
            continue;
        }
        let server = Arc::clone(&server);
        thread::spawn(move || serve_connection(&server, stream));
    }
    ExitCode::SUCCESS
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    say(&mut std::io::stderr(), &msg.to_string(), code)
}

fn say(w: &mut dyn Write, msg: &str, code: u8) -> ExitCode {
    let _ = writeln!(w, "{msg}");
    let _ = w.flush();
    ExitCode::from(code)
}

/// Like OpenCode's bash tool: a child in its own process group, so a group signal misses it.
fn spawn_detached_child() -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$FAKE_OPENCODE_CHILD_PID_FILE\"; exec sleep 300")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .spawn()
}

fn serve_connection(server: &Server, stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let http10 = parts.next() == Some("HTTP/1.0");
        let (mut length, mut authorization, mut close) = (0usize, None, http10);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value.to_string()),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if server
            .wedged_at
            .is_some_and(|at| std::time::Instant::now() >= at)
        {
            // Hold the connection open and never answer.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
            return;
        }
        let path = target.split('?').next().unwrap_or("");
        let (status, extra, json) = if server.auth.is_some() && authorization != server.auth {
            (
                "401 Unauthorized",
                "www-authenticate: Basic realm=\"Secure Area\"\r\n",
                String::new(),
            )
        } else {
            let (status, json) = route(server, &method, path);
            (status, "Content-Type: application/json\r\n", json)
        };
        let connection = if close { "Connection: close\r\n" } else { "" };
        let response = format!(
            "HTTP/1.1 {status}\r\n{extra}{connection}Content-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if writer
            .write_all(response.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
            || close
        {
            return;
        }
    }
}

fn route(server: &Server, method: &str, path: &str) -> (&'static str, String) {
    let ok = |s: &str| ("200 OK", s.to_string());
    match (method, path) {
        ("GET", "/global/health") => ok(&format!("{{\"healthy\":true,\"version\":\"{VERSION}\"}}")),
        ("GET", "/config/providers") if server.no_providers => {
            ok(r#"{"providers":[],"default":{}}"#)
        }
        ("GET", "/config/providers") => ok(concat!(
            r#"{"providers":[{"id":"fake","name":"Fake","models":{"m1":{"id":"m1","name":"Fake M1"}}}],"#,
            r#""default":{"fake":"m1"}}"#
        )),
        ("GET", "/session") => ok("[]"),
        ("GET", "/session/status") => ok("{}"),
        ("POST", "/global/dispose") => {
            let child = server
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(mut child) = child {
                let _ = Command::new("kill")
                    .arg("-9")
                    .arg(child.id().to_string())
                    .status();
                let _ = child.wait();
            }
            ok("true")
        }
        ("POST", "/instance/dispose") => ok("true"),
        ("POST", p) if p.starts_with("/session/") && p.ends_with("/message") => {
            // Said on stdout (the project log), so a test knows the turn is under way.
            let _ = say(
                &mut std::io::stdout(),
                &format!("fake-opencode: turn started for POST {p}"),
                0,
            );
            while !std::path::Path::new("release-turn").exists() {
                thread::sleep(Duration::from_millis(20));
            }
            ok(r#"{"info":{"role":"assistant"},"parts":[{"type":"text","text":"turn done"}]}"#)
        }
        _ => (
            "404 Not Found",
            format!(
                r#"{{"name":"NotFoundError","data":{{"message":"no route {method} {path}"}}}}"#
            ),
        ),
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
