//! The dashboard in a real browser (Debian's chromium over the DevTools protocol), with two real
//! OpenCode projects: the login URL that works once and leaves the address bar, the session
//! cookie, rows that follow a SIGKILL through the restart without a reload, the Stop button, a
//! permission request answered from a project's page, a foreign `Origin` refused, `/metrics` read
//! by a Prometheus text parser, and the audit log. The test saves a screenshot.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::{env_value, start_project};
use crate::home::TestHome;
use crate::support::browser::Browser;
use crate::support::fake_llm::FakeLlm;
use crate::support::sshd::TestSshd;
use crate::support::{HttpResponse, free_port, http, opencode_bin, parse_response, wait_until};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One request to the dashboard with whatever headers a test needs.
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut text =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        text.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    parse_response(&raw).expect("HTTP response")
}

fn state(browser_rows: &Value, project: &str) -> String {
    browser_rows[project].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_dashboard_follows_every_project_live_and_its_buttons_act_through_the_operations() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let port = free_port();
    let home = TestHome::with_opencode(opencode_bin(), &format!("dashboard_port = {port}\n"));
    start_project(&home, &sshd, &llm, "alpha", "ask");
    start_project(&home, &sshd, &llm, "beta", "ask");

    let login = home.run(&["dashboard"]);
    assert_eq!(login.status(), "success", "{login:?}");
    let url = login.json["url"].as_str().expect("url").to_owned();
    let prefix = format!("http://127.0.0.1:{port}/login?code=");
    assert!(url.starts_with(&prefix), "{url}");
    let login_path = url
        .trim_start_matches(&format!("http://127.0.0.1:{port}"))
        .to_owned();
    // Without a session every page says how to log in.
    let anonymous = http("GET", port, "/", None, None, Duration::from_secs(10)).expect("GET /");
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous.body.contains("opencode-manager dashboard"),
        "{}",
        anonymous.body
    );

    runtime().block_on(async {
        let mut browser = Browser::launch(1440, 520).await;
        browser.open(&url).await;
        assert_eq!(
            browser.eval("location.pathname + location.search").await,
            "/",
            "the code left the address bar"
        );
        let cookies = browser.cookies().await;
        let session = cookies
            .iter()
            .find(|c| c["name"] == "ocm_session")
            .expect("session cookie");
        assert_eq!(session["httpOnly"], true);
        assert_eq!(session["sameSite"], "Strict");
        assert_eq!(
            browser.eval("document.cookie.includes('ocm_session')").await,
            false,
            "scripts cannot read the session"
        );
        let cookie = format!("ocm_session={}", session["value"].as_str().expect("value"));
        // The code worked once.
        let again = request(port, "GET", &login_path, &[], "");
        assert_eq!(again.status, 403, "a used code opens nothing");

        let rows = "Object.fromEntries([...document.querySelectorAll('#projects tbody tr')].map(r => [r.dataset.project, r.dataset.state]))";
        browser
            .wait_for(
                "both rows running and the page live",
                "document.querySelector('#row-alpha')?.dataset.state === 'running' && document.querySelector('#row-beta')?.dataset.state === 'running' && document.getElementById('live').textContent === 'live'",
                Duration::from_secs(30),
            )
            .await;
        let seen = browser.eval(rows).await;
        assert_eq!(state(&seen, "alpha"), "running");
        let named = browser
            .eval("[...document.querySelectorAll('button')].map(b => b.textContent.trim())")
            .await;
        for label in ["Stop alpha", "Restart alpha", "Stop beta", "Restart beta"] {
            assert!(
                named.as_array().expect("buttons").iter().any(|b| b == label),
                "{label} in {named}"
            );
        }

        // SIGKILL alpha's instance: its row goes through the restart back to running, live.
        let old_pid = home.run(&["status", "alpha"]).json["opencode_pid"]
            .as_i64()
            .expect("pid");
        browser
            .eval(
                "window.noReload = true; window.alphaStates = []; \
                 new MutationObserver(() => { const s = document.querySelector('#row-alpha')?.dataset.state; \
                 if (s && window.alphaStates[window.alphaStates.length - 1] !== s) window.alphaStates.push(s); }) \
                 .observe(document.querySelector('#projects tbody'), {subtree: true, attributes: true, childList: true}); true",
            )
            .await;
        #[allow(clippy::disallowed_methods)]
        let killed = std::process::Command::new("kill")
            .args(["-9", &old_pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        browser
            .wait_for(
                "alpha's row to go through a restart and back to running",
                &format!(
                    "window.alphaStates.some(s => s !== 'running') && document.querySelector('#row-alpha').dataset.state === 'running' \
                     && document.querySelector('#row-alpha [data-col=pid]').textContent !== '{old_pid}' \
                     && document.querySelector('#row-alpha [data-col=pid]').textContent !== '—'"
                ),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(browser.eval("window.noReload === true").await, true, "no reload");
        assert_eq!(
            browser.eval("document.querySelector('#row-alpha [data-col=restarts]').textContent").await,
            "1"
        );
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        browser.screenshot(&shot).await;
        assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000));
        if std::env::var("OCM_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
            std::fs::copy(&shot, docs).expect("update docs/dashboard.png");
        }

        // Without JavaScript the page is complete: a real table with every row and its state.
        let plain = request(port, "GET", "/", &[("Cookie", &cookie)], "");
        assert_eq!(plain.status, 200);
        for needle in [
            "<table id=\"projects\">",
            "<th scope=\"row\"><a href=\"/project/alpha\">alpha</a></th>",
            "state-running\">running</span>",
            ">Stop beta</button>",
        ] {
            assert!(plain.body.contains(needle), "{needle} in {}", plain.body);
        }
        for secret in ["ocm_session", &env_value(&home, "alpha", "OPENCODE_SERVER_PASSWORD")] {
            assert!(!plain.body.contains(secret), "no secret in the page");
        }

        // A foreign Origin is refused, even with the session and its CSRF token.
        let csrf = browser
            .eval("document.querySelector('meta[name=csrf]').content")
            .await;
        let csrf = csrf.as_str().expect("csrf").to_owned();
        let foreign = request(
            port,
            "POST",
            "/project/beta/stop",
            &[("Cookie", &cookie), ("Origin", "http://evil.example")],
            &format!("csrf={csrf}"),
        );
        assert_eq!(foreign.status, 403, "{}", foreign.body);
        let no_token = request(
            port,
            "POST",
            "/project/beta/stop",
            &[("Cookie", &cookie), ("Origin", &format!("http://127.0.0.1:{port}"))],
            "",
        );
        assert_eq!(no_token.status, 403, "{}", no_token.body);
        assert_eq!(state(&browser.eval(rows).await, "beta"), "running", "nothing was stopped");

        // Stop, pressed on the page, stops the project through the same operation as the CLI.
        browser.click("Stop beta").await;
        browser
            .wait_for(
                "beta's row to show stopped",
                "document.querySelector('#row-beta').dataset.state === 'stopped' && [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Start beta')",
                Duration::from_secs(30),
            )
            .await;
        let beta = home.run(&["status", "beta"]);
        assert_eq!(beta.json["opencode"]["status"], "stopped", "{beta:?}");

        // The daemon goes away (as on an upgrade): the page says so, reconnects to the next
        // daemon by itself with the same session, and shows what that one does, without a reload.
        let daemon = home.daemon_pid().expect("daemon pid");
        #[allow(clippy::disallowed_methods)]
        let stopped = std::process::Command::new("kill")
            .args(["-TERM", &daemon.to_string()])
            .status()
            .expect("kill");
        assert!(stopped.success());
        browser
            .wait_for(
                "the page to notice the lost connection",
                "document.getElementById('live').textContent !== 'live'",
                Duration::from_secs(30),
            )
            .await;
        let started = home.run(&["restart", "beta"]);
        assert_eq!(started.status(), "success", "{started:?}");
        assert_ne!(home.daemon_pid(), Some(daemon), "a new daemon");
        browser
            .wait_for(
                "the page to reconnect and show beta running again",
                "document.getElementById('live').textContent === 'live' && document.querySelector('#row-beta').dataset.state === 'running'",
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(browser.eval("window.noReload === true").await, true, "no reload");

        // Usable at 360 px (only the table scrolls, sideways, inside the page) and dark when
        // the system is.
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": true}),
            )
            .await;
        browser
            .call(
                "Emulation.setEmulatedMedia",
                json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
            )
            .await;
        assert_eq!(
            browser.eval("document.documentElement.scrollWidth <= 360 && document.querySelector('main').scrollWidth > 360").await,
            true,
            "the page fits 360 px; the table scrolls within it"
        );
        assert_eq!(
            browser.eval("getComputedStyle(document.body).backgroundColor").await,
            "rgb(13, 17, 23)"
        );
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1440, "height": 520, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;

        // A permission request, answered from alpha's page, reaches the agent.
        let status = home.run(&["status", "alpha"]);
        let alpha_port = status.json["opencode_port"].as_u64().expect("port") as u16;
        let password = env_value(&home, "alpha", "OPENCODE_SERVER_PASSWORD");
        let created = http("POST", alpha_port, "/session", Some(&password), Some("{}"), Duration::from_secs(30))
            .expect("create a session");
        let session_id = created.json()["id"].as_str().expect("session id").to_owned();
        let prompt = json!({"parts": [{"type": "text", "text": "RUN: echo from-the-page"}]}).to_string();
        let sent = http(
            "POST",
            alpha_port,
            &format!("/session/{session_id}/prompt_async"),
            Some(&password),
            Some(&prompt),
            Duration::from_secs(30),
        )
        .expect("prompt");
        assert!(sent.status < 300, "{}", sent.body);
        browser.open(&format!("http://127.0.0.1:{port}/project/alpha")).await;
        browser
            .wait_for(
                "the permission request on alpha's page",
                "document.querySelector('#permissions li') !== null && document.getElementById('live').textContent === 'live'",
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(
            browser.eval("document.querySelector('#permissions li span').textContent").await,
            "bash: echo from-the-page"
        );
        browser.click("Allow once").await;
        browser
            .wait_for(
                "the answered request to leave the page",
                "document.querySelector('#permissions li') === null",
                Duration::from_secs(60),
            )
            .await;
        wait_until("the agent to run the command", Duration::from_secs(60), || {
            http(
                "GET",
                alpha_port,
                &format!("/session/{session_id}/message"),
                Some(&password),
                None,
                Duration::from_secs(10),
            )
            .is_ok_and(|r| r.body.contains("tool said: from-the-page"))
        });
    });

    // /metrics: the HTTP token, read by a Prometheus text parser.
    let refused = request(port, "GET", "/metrics", &[], "");
    assert_eq!(refused.status, 401);
    let token = std::fs::read_to_string(home.path().join("mcp-http-token")).expect("HTTP token");
    let bearer = format!("Bearer {}", token.trim());
    let metrics = request(port, "GET", "/metrics", &[("Authorization", &bearer)], "");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let lines = metrics.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition");
    let sample = |name: &str, project: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("project") == Some(project))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(sample("opencode_manager_instance_up", "alpha"), Some(1.0));
    assert_eq!(
        sample("opencode_manager_instance_up", "beta"),
        Some(1.0),
        "running again"
    );
    // Counters start again with each daemon, as Prometheus counters do (this one is new).
    assert_eq!(
        sample("opencode_manager_restarts_total", "alpha"),
        Some(0.0)
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "opencode_manager_start_duration_seconds_count"),
        "{}",
        metrics.body
    );

    // The audit log has the dashboard's stop, as the dashboard's, and the CLI's starts.
    let audit = home.run(&["audit"]);
    let entries = audit.json["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["door"] == "dashboard"
            && e["action"] == "stop"
            && e["project"] == "beta"
            && e["outcome"] == "ok"
            && e["caller"]["kind"] == "dashboard_session"),
        "{audit:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["door"] == "dashboard" && e["action"] == "permission-reply")
    );
    assert!(
        entries
            .iter()
            .any(|e| e["door"] == "cli" && e["action"] == "start")
    );
    let text =
        std::fs::read_to_string(home.path().join("opencode-logs/audit.log")).expect("audit.log");
    assert!(
        !text.contains("from-the-page"),
        "no prompt text in the audit log"
    );
    assert!(!text.contains(&env_value(&home, "alpha", "OPENCODE_SERVER_PASSWORD")));
}
