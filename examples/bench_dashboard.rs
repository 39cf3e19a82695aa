//! The dashboard in a real browser (Debian's chromium, over the DevTools protocol), in one run:
//! - first paint of the board with 40 projects (`first-contentful-paint`), 20 loads, next to the
//!   same browser painting a static page of the same size (the baseline);
//! - change to screen: SIGKILL of an instance (at a time taken on this machine's clock) until
//!   its row shows the change, 20 projects once each;
//! - the daemon's RSS with the dashboard open (board and a project page streaming) and 10 real
//!   OpenCode projects running.
//!
//! ```sh
//! cargo build --release --all-features
//! cargo run --release --all-features --example bench_dashboard
//! ```
//! Needs chromium (`scripts/test` installs it), git and the pinned OpenCode. The 40 projects of
//! the first two parts run the test-only fake OpenCode: they measure the dashboard, not OpenCode.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

// The tests' browser driver; the benchmark uses part of it.
#[allow(dead_code)]
#[path = "../tests/it/support/browser.rs"]
mod browser;

use std::time::Duration;

use browser::Browser;
use serde_json::Value;
use support::{Home, file_repo, free_port, manifest};

fn home_with(dir: &std::path::Path, opencode: std::path::PathBuf, base: u16) -> (Home, u16) {
    let dashboard = free_port();
    let home = Home::new(
        dir.join("home"),
        &format!(
            "allow_file = true\ndashboard_port = {dashboard}\ngateway_port = {}\nport_min = {base}\nport_max = {}\nidle_timeout_secs = 0\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n",
            free_port(),
            base + 59
        ),
        opencode,
    );
    (home, dashboard)
}

fn start_all(home: &Home, url: &str, count: usize) {
    for n in 0..count {
        let reply = home.cli(&["start", &format!("p{n:02}"), "--git-url", url]);
        assert_eq!(reply["status"], "success", "{reply}");
    }
}

/// A browser logged in to `home`'s dashboard, on the board.
async fn logged_in(home: &Home, port: u16) -> Browser {
    let login = home.cli(&["dashboard"]);
    let url = login["url"].as_str().unwrap().to_owned();
    let mut browser = Browser::launch(1280, 900).await;
    browser.open(&url).await;
    assert_eq!(
        browser.eval("location.href").await,
        format!("http://127.0.0.1:{port}/")
    );
    browser
}

fn pick(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    )
}

fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = 44000 + (std::process::id() % 200) as u16 * 60;

    // 40 projects on the fake OpenCode.
    let scratch = tempfile::tempdir().unwrap();
    let (home, port) = home_with(
        scratch.path(),
        manifest("target/release/fake-opencode"),
        base,
    );
    let url = file_repo(scratch.path());
    eprintln!("… starting 40 projects (fake OpenCode)");
    start_all(&home, &url, 40);
    let (paints, baseline, latencies, html_bytes) = runtime.block_on(async {
        let mut browser = logged_in(&home, port).await;
        let html = browser.eval("document.documentElement.outerHTML").await;
        let html = html.as_str().unwrap().to_owned();
        // First paint of the live board, 20 loads.
        let mut paints = Vec::new();
        for _ in 0..20 {
            browser.open(&format!("http://127.0.0.1:{port}/")).await;
            browser
                .wait_for(
                    "first contentful paint",
                    "performance.getEntriesByName('first-contentful-paint').length > 0 && document.getElementById('live').textContent === 'live'",
                    Duration::from_secs(30),
                )
                .await;
            let fcp = browser
                .eval("performance.getEntriesByName('first-contentful-paint')[0].startTime")
                .await;
            paints.push(fcp.as_f64().unwrap());
        }
        // The baseline: the same markup as a static page (no server work, no stream).
        let static_page = scratch.path().join("static.html");
        std::fs::write(&static_page, html.replace("/assets/app.js", "data:,")).unwrap();
        let mut baseline = Vec::new();
        for _ in 0..20 {
            browser
                .open(&format!("file://{}", static_page.display()))
                .await;
            browser
                .wait_for(
                    "first contentful paint",
                    "performance.getEntriesByName('first-contentful-paint').length > 0",
                    Duration::from_secs(30),
                )
                .await;
            baseline.push(
                browser
                    .eval("performance.getEntriesByName('first-contentful-paint')[0].startTime")
                    .await
                    .as_f64()
                    .unwrap(),
            );
        }
        // Change to screen: kill one instance at a time; its row leaves `running`.
        browser.open(&format!("http://127.0.0.1:{port}/")).await;
        browser
            .wait_for(
                "the live board",
                "document.getElementById('live').textContent === 'live'",
                Duration::from_secs(30),
            )
            .await;
        browser
            .eval(
                "window.changed = {}; new MutationObserver(() => { for (const tr of document.querySelectorAll('#projects tbody tr')) { \
                 if (tr.dataset.state !== 'running' && !(tr.dataset.project in window.changed)) window.changed[tr.dataset.project] = Date.now(); } }) \
                 .observe(document.querySelector('#projects tbody'), {subtree: true, attributes: true, childList: true}); true",
            )
            .await;
        let mut latencies = Vec::new();
        for n in 0..20 {
            let name = format!("p{n:02}");
            let pid = home.cli(&["status", &name])["opencode_pid"].as_i64().unwrap();
            let killed_at = now_ms();
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            browser
                .wait_for(
                    "the row to change",
                    &format!("'{name}' in window.changed"),
                    Duration::from_secs(30),
                )
                .await;
            let shown = browser.eval(&format!("window.changed['{name}']")).await;
            latencies.push(shown.as_f64().unwrap() - killed_at);
        }
        (paints, baseline, latencies, html.len())
    });
    drop(home);

    // The daemon's memory with the dashboard open and 10 real projects.
    let real_dir = tempfile::tempdir().unwrap();
    let (real, real_port) = home_with(
        real_dir.path(),
        manifest(".tools/node_modules/.bin/opencode"),
        base + 30,
    );
    let real_url = file_repo(real_dir.path());
    eprintln!("… starting 10 projects (real OpenCode)");
    start_all(&real, &real_url, 10);
    let daemon = std::fs::read_to_string(real.dir.join("opencode-manager.lock"))
        .unwrap()
        .trim()
        .to_owned();
    let (idle, open) = runtime.block_on(async {
        let idle = rss_mib(&daemon);
        let mut board = logged_in(&real, real_port).await;
        board
            .wait_for(
                "the live board",
                "document.getElementById('live').textContent === 'live'",
                Duration::from_secs(30),
            )
            .await;
        let mut page = logged_in(&real, real_port).await;
        page.open(&format!("http://127.0.0.1:{real_port}/project/p00"))
            .await;
        page.wait_for(
            "the live project page",
            "document.getElementById('live').textContent === 'live'",
            Duration::from_secs(30),
        )
        .await;
        // A few changes flow through both pages.
        for n in 0..3 {
            real.cli(&["restart", &format!("p0{n}")]);
        }
        let open = rss_mib(&daemon);
        let _: Value = board.eval("1").await;
        (idle, open)
    });
    drop(real);

    let (p_min, p50, p_max) = pick(paints);
    let (b_min, b50, b_max) = pick(baseline);
    let (l_min, l50, l_max) = pick(latencies);
    println!("Dashboard, 40 projects (fake OpenCode), chromium headless (milliseconds)\n");
    println!("| measurement | min | p50 | max | goal |\n|---|---|---|---|---|");
    println!(
        "| first contentful paint of the board ({} KiB of HTML), 20 loads | {p_min:.0} | {p50:.0} | {p_max:.0} | < 300 ms: {} |",
        html_bytes / 1024,
        if p_max < 300.0 { "met" } else { "NOT met" }
    );
    println!(
        "| the same markup as a static file (baseline) | {b_min:.0} | {b50:.0} | {b_max:.0} | |"
    );
    println!(
        "| SIGKILL of an instance → its row changes on screen, 20 projects | {l_min:.0} | {l50:.0} | {l_max:.0} | < 200 ms: {} |",
        if l_max < 200.0 { "met" } else { "NOT met" }
    );
    println!(
        "\nDaemon RSS with 10 real projects: {idle:.1} MiB; with the board and a project page open and streaming: {open:.1} MiB (goal < 25 MiB: {})",
        if open < 25.0 { "met" } else { "NOT met" }
    );
}
