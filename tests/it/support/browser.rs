//! A real browser for the dashboard's tests: Debian's `/usr/bin/chromium`, headless, driven over
//! the DevTools protocol (JSON over a websocket) from Rust. No browser download, no WebDriver.
//!
//! Each `Browser` has its own profile directory and remote-debugging port (chosen by chromium and
//! read from `DevToolsActivePort`), one page target attached with a flat session, and is killed
//! when dropped. Waiting is always on a condition with a deadline. Self-contained, so the
//! dashboard's benchmark includes it too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CHROMIUM: &str = "/usr/bin/chromium";

pub(crate) struct Browser {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _process: Chromium,
    _profile: tempfile::TempDir,
}

/// The browser process, killed (and reaped) when dropped.
struct Chromium(std::process::Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromium with one blank page, `width` × `height` pixels.
    pub(crate) async fn launch(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: scripts/test installs Debian's chromium"
        );
        let profile = tempfile::Builder::new()
            .prefix("ocm-chromium-")
            .tempdir()
            .expect("profile dir");
        #[allow(clippy::disallowed_methods)]
        let child = std::process::Command::new(CHROMIUM)
            .args([
                "--headless=new",
                // Required as root; the page under test is our own.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        let process = Chromium(child);
        let endpoint = devtools_endpoint(profile.path()).await;
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("connect to the DevTools websocket");
        let mut browser = Browser {
            ws,
            session: String::new(),
            next_id: 0,
            _process: process,
            _profile: profile,
        };
        let target = browser
            .browser_call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser.call("Network.enable", json!({})).await;
        browser
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = Value::String(session);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send to chromium");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within 30 s"));
            let Some(Ok(Message::Text(text))) = next else {
                match next {
                    Some(Ok(_)) => continue,
                    other => panic!("the DevTools connection ended: {other:?}"),
                }
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] == id {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
            // Events (and answers to nothing we wait for) are not needed: tests wait on the page.
        }
    }

    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// A command to the page.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session)).await
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Opens `url` and waits until the page has loaded.
    pub(crate) async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            &format!("the page at {url} to load"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// Waits until `condition` (JavaScript) is true in the page; fails naming `what`.
    pub(crate) async fn wait_for(&mut self, what: &str, condition: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.eval(&format!("!!({condition})")).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {what} ({condition}); page: {}",
                self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the button whose text is `label`.
    pub(crate) async fn click(&mut self, label: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === {label:?}); if (!b) return false; b.click(); return true; }})()"
            ))
            .await;
        assert_eq!(found, Value::Bool(true), "no button labelled {label:?}");
    }

    /// The browser's cookies for the page (HttpOnly ones included).
    pub(crate) async fn cookies(&mut self) -> Vec<Value> {
        self.call("Network.getCookies", json!({})).await["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the page as it is.
    pub(crate) async fn screenshot(&mut self, path: &PathBuf) {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// The browser's websocket URL, from the `DevToolsActivePort` file chromium writes into its
/// profile once it listens.
async fn devtools_endpoint(profile: &Path) -> String {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium wrote no DevToolsActivePort within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
