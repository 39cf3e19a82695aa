//! Shared helpers for the integration tests: paths of the binaries under test, ports, polling,
//! a throwaway sshd ([`sshd`]), a fake OpenAI-compatible provider ([`fake_llm`]) and a tiny
//! blocking HTTP client.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_llm;
pub mod sshd;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The real OpenCode binary: `$OCM_TEST_OPENCODE`, else the copy `scripts/test` installs.
pub fn opencode_bin() -> PathBuf {
    let path = match std::env::var_os("OCM_TEST_OPENCODE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/opencode"),
    };
    if !path.exists() {
        panic!(
            "real opencode not found at {}: run scripts/test, which installs opencode-ai@1.18.33 into .tools/",
            path.display()
        );
    }
    path
}

/// The fault-injecting stand-in for `opencode` (`src/bin/fake-opencode.rs`).
pub fn fake_opencode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-opencode"))
}

pub fn manager_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opencode-manager"))
}

/// A port that was free a moment ago (bind `127.0.0.1:0`, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the command name, which is in parentheses.
    match stat.rfind(')') {
        Some(i) => !stat[i + 1..].trim_start().starts_with('Z'),
        None => false,
    }
}

/// Seed stub (testing-recipes §3.3): stops OpenCode's per-config-dir npm install.
pub fn seed_opencode_config_dir(xdg_config_home: &Path) {
    let dir = xdg_config_home.join("opencode");
    std::fs::create_dir_all(dir.join("node_modules")).expect("creating the opencode config dir");
    std::fs::write(
        dir.join("package-lock.json"),
        "{\"lockfileVersion\":3,\"packages\":{\"\":{\"dependencies\":{\"@opencode-ai/plugin\":\"1.18.33\"}}}}\n",
    )
    .expect("writing the seed package-lock.json");
}

/// The current user's name (`$USER`, else `id -un`).
pub fn current_user() -> String {
    match std::env::var("USER") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            let out = std::process::Command::new("id")
                .arg("-un")
                .output()
                .expect("running id -un");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    }
}

/// Basic-auth header value for user `opencode`.
pub fn basic_auth(password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("opencode:{password}").into_bytes();
    let mut out = String::from("Basic ");
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

/// A response from [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }
}

/// A blocking one-shot HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`).
/// `password` adds Basic auth for user `opencode`; `body` is sent as JSON.
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    password: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(pw) = password {
        request.push_str(&format!("Authorization: {}\r\n", basic_auth(pw)));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    parse_response(&read_response(&mut stream)?)
}

/// Reads one response: to the end of its `Content-Length` body when it has one (OpenCode may keep
/// the connection open despite `Connection: close`, e.g. for the first request after it starts),
/// else to the end of the stream.
fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if let Some(length) = length {
                while raw.len() < end + 4 + length {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&chunk[..n]);
                }
                return Ok(raw);
            }
            stream.read_to_end(&mut raw)?;
            return Ok(raw);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Kills (SIGKILL) and reaps the child when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid fits in i32")
    }

    /// Sends `signal` (e.g. `"TERM"`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the child to exit, panicking after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("the child process to exit", timeout, || {
            status = self.0.try_wait().expect("polling the child");
            status.is_some()
        });
        status.expect("exit status after waiting")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one line from `reader` on a helper thread, panicking after `timeout`.
/// Returns the reader so further lines can be read.
pub fn read_line_within<R: std::io::BufRead + Send + 'static>(
    mut reader: R,
    timeout: Duration,
    what: &str,
) -> (String, R) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send((result, reader));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(line), reader)) => (line, reader),
        Ok((Err(e), _)) => panic!("reading {what}: {e}"),
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}
