//! Core benchmarks of opencode-manager against the real OpenCode, printed as a markdown table:
//!
//! 1. start-to-ready overhead: `opencode-manager start --json` (returns once OpenCode is healthy)
//!    against a bare `opencode serve` spawned with an equivalent isolated environment and polled the
//!    way the manager polls (listening line, then `GET /global/health` every 50 ms, 500 ms timeout),
//!    in paired, alternating runs; goal: overhead ≤ max(10 % of baseline, 150 ms);
//! 2. `opencode-manager list --json` with 1,000 projects in the state file; goal: median < 50 ms;
//! 3. the daemon's VmRSS with 10 running projects; goal: < 20 MiB.
//!
//! Run: `cargo build --release && scripts/test` once (the binary, and OpenCode in `.tools/`), then
//! `cargo run --release --example bench_core -- [--runs N]` (N paired runs for 1, default 10).
//! `OCM_TEST_OPENCODE` overrides the OpenCode path. Everything lives in one temp dir on loopback;
//! every process it starts is stopped at the end, also on failure. Timings are wall-clock, so run
//! it on an otherwise idle machine.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]
// A harness outside the crate: it drives the binaries as a user would, so it spawns them itself.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

const STUB: &str =
    r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#;
const XDG: [(&str, &str); 6] = [
    ("HOME", "home"),
    ("XDG_DATA_HOME", "data"),
    ("XDG_CONFIG_HOME", "config"),
    ("XDG_STATE_HOME", "state"),
    ("XDG_CACHE_HOME", "cache"),
    ("TMPDIR", "tmp"),
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_core: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Owns the temp dir and the manager homes. `Drop` stops every project and daemon, then kills any
/// process left whose environment names the temp dir, before the dir itself is removed.
struct Bench {
    manager: PathBuf,
    opencode: PathBuf,
    homes: Vec<PathBuf>,
    rows: Vec<String>,
    root: tempfile::TempDir,
}

fn run() -> Res<()> {
    let mut runs = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--runs", Some(Ok(n))) if n > 0 => runs = n,
            _ => return Err("usage: bench_core [--runs N]  (N ≥ 1, default 10)".into()),
        }
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manager = crate_dir.join("target/release/opencode-manager");
    let opencode = std::env::var_os("OCM_TEST_OPENCODE").map_or_else(
        || crate_dir.join(".tools/node_modules/.bin/opencode"),
        PathBuf::from,
    );
    for (what, path) in [("opencode-manager", &manager), ("opencode", &opencode)] {
        if !path.is_file() {
            return Err(format!(
                "{what} not found at {}: build with cargo build --release; run scripts/test to install opencode",
                path.display()
            ));
        }
    }
    let root = tempfile::Builder::new().prefix("ocm-bench-").tempdir();
    let root = root.map_err(|e| format!("creating a temp dir: {e}"))?;
    let (homes, rows) = (Vec::new(), Vec::new());
    let mut bench = Bench {
        manager,
        opencode,
        homes,
        rows,
        root,
    };
    bench.start_overhead(runs)?;
    bench.list_1000()?;
    bench.rss_10()?;
    println!("\n| measurement | runs | min | median | max | goal | result |");
    println!("|---|---|---|---|---|---|---|");
    for row in &bench.rows {
        println!("{row}");
    }
    Ok(())
}

impl Bench {
    fn path(&self, sub: &str) -> PathBuf {
        self.root.path().join(sub)
    }

    /// Runs the CLI against `home`; the first call starts the daemon, which inherits this env.
    fn cli(&self, home: &Path, args: &[&str], timeout: Duration) -> Res<(Duration, Output)> {
        let mut cmd = Command::new(&self.manager);
        cmd.args(args)
            .env("OPENCODE_MANAGER_HOME", home)
            .env("OPENCODE_BIN", &self.opencode)
            .env("OPENCODE_MANAGER_LINGER_SECS", "600")
            .env("ENVIRONMENT", "development")
            .env_remove("RUST_LOG");
        let (took, out) = run_timed(&mut cmd, timeout)?;
        if !out.status.success() {
            let (stdout, stderr, status) = (text(&out.stdout), text(&out.stderr), out.status);
            let args = args.join(" ");
            return Err(format!(
                "`opencode-manager {args}` failed ({status}): {stdout}{stderr}"
            ));
        }
        Ok((took, out))
    }

    fn new_home(&mut self, name: &str, config: &str) -> Res<PathBuf> {
        let home = self.path(name);
        mkdir(&home)?;
        std::fs::write(home.join("opencode-manager.toml"), config).map_err(s)?;
        self.homes.push(home.clone());
        Ok(home)
    }

    fn start_overhead(&mut self, runs: usize) -> Res<()> {
        let config = "allow_file = true\n\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n";
        let home = self.new_home("home", config)?;
        let url = self.make_repo()?;
        let start = ["start", "bench", "--git-url", &url, "--json"];
        eprintln!("… first start of `bench` (clone; warm-up, not counted)");
        self.cli(&home, &start, secs(300))?;
        self.cli(&home, &["stop", "bench"], secs(60))?;
        let repo = home.join("opencode-sandboxes/bench/repo");
        let base = self.path("baseline");
        for (_, sub) in XDG {
            mkdir(&base.join(sub))?;
        }
        mkdir(&base.join("config/opencode/node_modules"))?;
        std::fs::write(base.join("config/opencode/package-lock.json"), STUB).map_err(s)?;
        eprintln!("… baseline warm-up (not counted)");
        self.baseline(&repo, &base)?;
        let [mut managed, mut bare, mut prov, mut diff, mut diff_prov]: [Vec<f64>; 5] =
            Default::default();
        let (mut ready_seen, mut diff_ready) = (Vec::new(), Vec::new());
        let env_text =
            std::fs::read_to_string(home.join("opencode-sandboxes/bench/.env")).map_err(s)?;
        let pw = env_text
            .lines()
            .find_map(|l| l.strip_prefix("OPENCODE_SERVER_PASSWORD="))
            .ok_or("no password in .env")?
            .to_owned();
        let log = home.join("opencode-logs/bench-opencode.log");
        for i in 0..runs {
            let (mut m, mut r, mut b) = (0.0, 0.0, (0.0, 0.0));
            for manager_turn in [i % 2 == 0, i % 2 == 1] {
                if manager_turn {
                    // Ready as seen from outside, the same way as the baseline: the listening
                    // line (in the instance's log), then a healthy answer.
                    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
                    let started = Instant::now();
                    let (cli, home2, start2) =
                        (self.manager.clone(), home.clone(), start.map(String::from));
                    let opencode = self.opencode.clone();
                    let runner = std::thread::spawn(move || {
                        let mut cmd = Command::new(cli);
                        cmd.args(&start2)
                            .env("OPENCODE_MANAGER_HOME", &home2)
                            .env("OPENCODE_BIN", opencode)
                            .env("OPENCODE_MANAGER_LINGER_SECS", "600")
                            .env("ENVIRONMENT", "development");
                        run_timed(&mut cmd, secs(120))
                    });
                    let ready = wait_ready_from_log(&log, offset, &pw, started)?;
                    let (took, out) = runner.join().map_err(|_| "start thread panicked")??;
                    let reply = json(&out)?;
                    if reply["status"] != "success" {
                        return Err(format!("start did not succeed: {reply}"));
                    }
                    self.cli(&home, &["stop", "bench"], secs(60))?;
                    m = ms(took);
                    r = ms(ready);
                } else {
                    let (ready, providers) = self.baseline(&repo, &base)?;
                    b = (ms(ready), ms(ready + providers));
                }
            }
            let (n, bare_ms) = (i + 1, b.0);
            eprintln!("… run {n}/{runs}: manager {m:.0} ms, bare {bare_ms:.0} ms");
            managed.push(m);
            ready_seen.push(r);
            diff_ready.push(r - b.0);
            bare.push(b.0);
            prov.push(b.1);
            diff.push(m - b.0);
            diff_prov.push(m - b.1);
        }
        let base_median = stats(&bare).1;
        let allowed = (base_median * 0.10).max(150.0);
        let goal = format!("median ≤ max(10 % of baseline, 150 ms) = {allowed:.0} ms");
        let name = "start → ready (healthy): `opencode-manager start`";
        self.timing(name, &ready_seen, "", None);
        self.timing(
            "start → ready (healthy): bare `opencode serve`",
            &bare,
            "",
            None,
        );
        let name = "overhead to ready, paired (manager − baseline)";
        self.timing(
            name,
            &diff_ready,
            &goal,
            Some(stats(&diff_ready).1 <= allowed),
        );
        let name =
            "start → reply: `start --json` returns (after also asking OpenCode for its providers)";
        self.timing(name, &managed, "", None);
        let name = "reply overhead, paired (manager reply − baseline ready)";
        self.timing(name, &diff, "", None);
        let ratio = format!("{:.3}", stats(&managed).1 / base_median);
        self.single("ratio manager / baseline (medians)", &ratio, "", None);
        let name = "baseline + its first `GET /config/providers` (the manager makes this call before replying)";
        self.timing(name, &prov, "", None);
        let name = "overhead vs that (manager − baseline − providers call), paired";
        self.timing(name, &diff_prov, "", None);
        Ok(())
    }

    /// A bare repository with one commit; returns its `file://` URL.
    fn make_repo(&self) -> Res<String> {
        let script = "set -e; cd \"$1\"; git init -q seed; echo benchmark > seed/README.md
            git -C seed add README.md
            git -C seed -c user.name=bench -c user.email=bench@example.invalid \
                -c commit.gpgsign=false commit -q -m 'initial commit'
            git clone -q --bare seed repo.git";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "sh"]).arg(self.root.path());
        let out = run_timed(&mut cmd, secs(60))?.1;
        if !out.status.success() {
            return Err(format!("creating the repository: {}", text(&out.stderr)));
        }
        Ok(format!("file://{}", self.path("repo.git").display()))
    }

    /// One bare `opencode serve` in `repo`: the time from spawn to the first healthy answer, then
    /// the time of a first `GET /config/providers`. The process is stopped on every path.
    fn baseline(&self, repo: &Path, base: &Path) -> Res<(Duration, Duration)> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(s)?;
        let port = listener.local_addr().map_err(s)?.port();
        drop(listener);
        let nanos = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
        let pw = format!("bench{nanos:x}");
        let inherited = ["PATH", "LANG", "LC_ALL", "TZ", "TERM"]
            .into_iter()
            .filter_map(|k| Some((k, std::env::var_os(k)?)));
        let mut cmd = Command::new(&self.opencode);
        let port_arg = port.to_string();
        cmd.args(["serve", "--hostname", "127.0.0.1", "--port", &port_arg])
            .current_dir(repo)
            .env_clear()
            .envs(inherited)
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .envs(XDG.map(|(k, sub)| (k, base.join(sub))))
            .env("OPENCODE_SERVER_PASSWORD", &pw)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let deadline = started + secs(60);
        let mut serve = Serve(cmd.spawn().map_err(|e| format!("spawning opencode: {e}"))?);
        let stdout = serve.0.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("opencode server listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "bare opencode printed no listening line (it exited, or 60 s passed)")?;
        loop {
            let health = http_get(port, "/global/health", &pw, Duration::from_millis(500));
            if health.is_ok_and(|(status, body)| status == 200 && body.contains("\"healthy\":true"))
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err("bare opencode did not become healthy within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (ready, t) = (started.elapsed(), Instant::now());
        match http_get(port, "/config/providers", &pw, secs(10))? {
            (200, _) => Ok((ready, t.elapsed())),
            (status, body) => Err(format!("GET /config/providers: HTTP {status}: {body}")),
        }
    }

    fn list_1000(&mut self) -> Res<()> {
        let home = self.new_home("list-home", "")?;
        let projects: serde_json::Map<String, serde_json::Value> = (0..1000u16)
            .map(|i| {
                let name = format!("p{i:04}");
                let record = serde_json::json!({
                    "project_name": name,
                    "sandbox_dir": home.join("opencode-sandboxes").join(&name),
                    "git_url": format!("git@example.invalid:bench/{name}.git"),
                    "ssh_key_path": null,
                    "port": 4100 + i,
                    "desired": "stopped",
                    "instance": {"status": "stopped", "last_exit": null},
                    "created_at": "2026-11-25T00:00:00Z",
                    "last_health_check": null,
                });
                (name, record)
            })
            .collect();
        let state = serde_json::json!({"version": 2, "projects": projects}).to_string();
        std::fs::write(home.join("opencode-state.json"), state).map_err(s)?;
        eprintln!("… list: starting its daemon (first call, not counted)");
        let (first, _) = self.cli(&home, &["list", "--json"], secs(60))?;
        let mut times = Vec::new();
        for _ in 0..30 {
            let (took, out) = self.cli(&home, &["list", "--json"], secs(30))?;
            let count = json(&out)?["projects"].as_array().map_or(0, Vec::len);
            if count != 1000 {
                return Err(format!("list returned {count} projects, expected 1000"));
            }
            times.push(ms(took));
        }
        let ok = Some(stats(&times).1 < 50.0);
        self.timing(
            "`list --json`, 1,000 projects",
            &times,
            "median < 50 ms",
            ok,
        );
        let first = format!("{:.1} ms", ms(first));
        let name = "first `list` (starts the daemon, reconciles 1,000 records)";
        self.single(name, &first, "", None);
        let rss = format!("{:.1} MiB", mib(rss_kib(&home)?.0));
        self.single("daemon VmRSS, 1,000 stopped projects", &rss, "", None);
        self.shutdown(&home)
    }

    fn rss_10(&mut self) -> Res<()> {
        let home = self.path("home");
        let url = format!("file://{}", self.path("repo.git").display());
        for i in 0..10 {
            eprintln!("… starting bench{i}");
            let name = format!("bench{i}");
            self.cli(&home, &["start", &name, "--git-url", &url], secs(300))?;
        }
        let (rss, hwm) = rss_kib(&home)?;
        let name = format!(
            "daemon VmRSS, 10 running projects (VmHWM {:.1} MiB)",
            mib(hwm)
        );
        let value = format!("{:.1} MiB", mib(rss));
        self.single(&name, &value, "< 20 MiB", Some(mib(rss) < 20.0));
        self.shutdown(&home)?;
        let left = leftovers(self.root.path()).len();
        let name = "processes left after `stop --all` and SIGTERM to the daemon";
        self.single(name, &left.to_string(), "0", Some(left == 0));
        Ok(())
    }

    /// `stop --all`, then SIGTERM to the daemon (SIGKILL after 10 s).
    fn shutdown(&mut self, home: &Path) -> Res<()> {
        self.homes.retain(|h| h != home);
        let stopped = self.cli(home, &["stop", "--all"], secs(120));
        if let Some(pid) = daemon_pid(home) {
            signal(pid, "TERM");
            if !wait_gone(pid, secs(10)) {
                signal(pid, "KILL");
            }
        }
        stopped.map(drop)
    }

    fn timing(&mut self, name: &str, values: &[f64], goal: &str, ok: Option<bool>) {
        let (min, median, max) = stats(values);
        let (n, result) = (values.len(), ok.map_or("", verdict));
        self.rows.push(format!(
            "| {name} | {n} | {min:.1} ms | {median:.1} ms | {max:.1} ms | {goal} | {result} |"
        ));
    }

    fn single(&mut self, name: &str, value: &str, goal: &str, ok: Option<bool>) {
        let result = ok.map_or("info", verdict);
        let row = format!("| {name} | | | {value} | | {goal} | {result} |");
        self.rows.push(row);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for home in self.homes.clone() {
            if home.join("opencode-manager.lock").exists()
                && let Err(err) = self.shutdown(&home)
            {
                eprintln!("bench_core: cleanup of {}: {err}", home.display());
            }
        }
        for pid in leftovers(self.root.path()) {
            eprintln!("bench_core: killing leftover process {pid}");
            signal(pid, "KILL");
            wait_gone(pid, secs(5));
        }
    }
}

/// A bare opencode; dropping it sends SIGTERM and waits for it (SIGKILL after 5 s).
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        signal(self.0.id(), "TERM");
        if !wait_gone(self.0.id(), secs(5)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with piped output; returns the time from spawn to exit. Killed after `timeout`.
fn run_timed(cmd: &mut Command, timeout: Duration) -> Res<(Duration, Output)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((started.elapsed(), out));
    });
    match rx.recv_timeout(timeout) {
        Ok((took, Ok(out))) => Ok((took, out)),
        Ok((_, Err(e))) => Err(format!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            signal(pid, "KILL");
            Err(format!("{cmd:?} did not finish within {timeout:?}"))
        }
    }
}

/// Waits for the listening line to appear in `log` after `offset`, then for a healthy answer
/// (500 ms per request, every 50 ms, as the baseline polls); returns the time since `started`.
fn wait_ready_from_log(log: &Path, offset: u64, pw: &str, started: Instant) -> Res<Duration> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let deadline = started + secs(60);
    let port = loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            let _ = file.seek(SeekFrom::Start(offset));
            let _ = file.read_to_string(&mut text);
        }
        if let Some(rest) = text
            .split("opencode server listening on http://127.0.0.1:")
            .nth(1)
        {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().map_err(s)?;
        }
        if Instant::now() >= deadline {
            return Err("the managed instance printed no listening line within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    loop {
        let health = http_get(port, "/global/health", pw, Duration::from_millis(500));
        if health.is_ok_and(|(status, body)| status == 200 && body.contains("\"healthy\":true")) {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err("the managed instance did not become healthy within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET with Basic auth (`opencode:<pw>`), bounded as a whole by `timeout`.
fn http_get(port: u16, path: &str, pw: &str, timeout: Duration) -> Res<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(s)?;
    stream.set_write_timeout(Some(left())).map_err(s)?;
    let auth = base64(format!("opencode:{pw}").as_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(s)?;
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 16384]);
    loop {
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        stream.set_read_timeout(Some(left())).map_err(s)?;
        let n = stream.read(&mut chunk).map_err(s)?;
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if n == 0 {
                return Err("connection closed before the headers ended".into());
            }
            continue;
        };
        let (head, body) = (text(&buf[..end]).to_ascii_lowercase(), &buf[end + 4..]);
        let length = head.lines().find_map(|l| l.strip_prefix("content-length:"));
        let length = length.and_then(|v| v.trim().parse::<usize>().ok());
        let complete = n == 0
            || length.is_some_and(|len| body.len() >= len)
            || (head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n"));
        if complete {
            let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            return Ok((status.ok_or("no HTTP status line")?, text(body)));
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.extend((0..4).map(|i| char::from(T[(n >> (18 - 6 * i)) as usize & 63])));
    }
    let pad = (3 - input.len() % 3) % 3;
    out.truncate(out.len() - pad);
    out + &"=".repeat(pad)
}

fn mkdir(dir: &Path) -> Res<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    let created = builder.recursive(true).mode(0o700).create(dir);
    created.map_err(|e| format!("creating {}: {e}", dir.display()))
}

fn daemon_pid(home: &Path) -> Option<u32> {
    let lock = std::fs::read_to_string(home.join("opencode-manager.lock")).ok()?;
    let pid = lock.trim().parse().ok()?;
    (alive(pid) && environ_contains(pid, home)).then_some(pid)
}

/// The daemon's (VmRSS, VmHWM) in KiB.
fn rss_kib(home: &Path) -> Res<(u64, u64)> {
    let pid = daemon_pid(home).ok_or("the daemon is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(s)?;
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name));
        let value = line.and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        value.ok_or(format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn environ_contains(pid: u32, needle: &Path) -> bool {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle))
}

/// Live processes (other than this one) whose environment names `root`.
fn leftovers(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && alive(pid) && environ_contains(pid, root))
        .collect()
}

/// Exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn signal(pid: u32, sig: &str) {
    let mut kill = Command::new("kill");
    let _ = kill.args([format!("-{sig}"), pid.to_string()]).status();
}

fn json(out: &Output) -> Res<serde_json::Value> {
    serde_json::from_slice(&out.stdout).map_err(|e| format!("decoding {}: {e}", text(&out.stdout)))
}

fn s(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// (min, median, max) of a non-empty slice.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = (v[(n - 1) / 2] + v[n / 2]) / 2.0;
    (v[0], median, v[n - 1])
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}
