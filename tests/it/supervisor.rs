//! The supervisor against real processes: crash loops end in a visible `failed` state, a killed
//! OpenCode comes back with its sessions, a wedged server is recycled, and an idle project is
//! parked and started again on demand by a gateway call.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::faults::file_repo;
use crate::home::TestHome;
use crate::support::{http, opencode_bin, pid_alive, wait_until};

const FAST: &str =
    "allow_file = true\nsupervisor_backoff_base_ms = 100\nsupervisor_probe_interval_secs = 1\n";

fn state(home: &TestHome) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(home.path().join("opencode-state.json")).unwrap_or_default(),
    )
    .unwrap_or(Value::Null)
}

fn password(home: &TestHome, project: &str) -> String {
    let text = std::fs::read_to_string(home.env_file(project)).expect("read .env");
    text.lines()
        .find_map(|l| l.strip_prefix("OPENCODE_SERVER_PASSWORD="))
        .expect("password")
        .to_owned()
}

#[test]
fn a_crash_loop_ends_in_a_visible_failed_state_with_the_reason_and_log_tail() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake("exit-after-ready", FAST);
    let toml = home.path().join("opencode-manager.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(&toml, text + "FAKE_OPENCODE_DELAY_MS = \"300\"\n").expect("toml");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    wait_until("the supervisor to give up", Duration::from_secs(60), || {
        home.run(&["status", "p"]).json["opencode"]["status"] == "failed"
    });
    let status = home.run(&["status", "p"]);
    let error = status.json["last_error"].as_str().expect("last_error");
    assert!(
        error.contains("5 failures within 10 minutes") && error.contains("exit code 7"),
        "{error}"
    );
    assert!(
        error.contains("log tail: ") && error.contains("opencode server listening on"),
        "{error}"
    );
    assert_eq!(status.json["restarts"], 4, "{status:?}");
    assert!(home.marked_processes().is_empty(), "nothing left running");
}

#[test]
fn a_killed_opencode_is_restarted_with_its_sessions_and_a_users_stop_is_final() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::with_opencode(opencode_bin(), FAST);
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let port = started.json["opencode_port"].as_u64().expect("port") as u16;
    let pw = password(&home, "p");
    let timeout = Duration::from_secs(10);
    let session = http("POST", port, "/session", Some(&pw), Some("{}"), timeout)
        .expect("create")
        .json();
    let id = session["id"].as_str().expect("id").to_owned();

    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    wait_until(
        "the instance to be restarted",
        Duration::from_secs(60),
        || {
            let status = home.run(&["status", "p"]);
            status.json["opencode"]["status"] == "running"
                && status.json["opencode"]["running"] == true
                && status.json["opencode_pid"].as_i64() != Some(i64::from(pid))
        },
    );
    let status = home.run(&["status", "p"]);
    assert_eq!(status.json["restarts"], 1, "{status:?}");
    assert!(!pid_alive(pid));
    let port = status.json["opencode_port"].as_u64().expect("port") as u16;
    let sessions = http("GET", port, "/session", Some(&pw), None, timeout)
        .expect("list")
        .json();
    assert!(
        sessions
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "the session lives in the instance's database"
    );
    assert!(
        home.manager_log()
            .contains("exited unexpectedly (killed by signal 9)")
    );

    // A user's stop is final: the supervisor does not start it again.
    assert_eq!(home.run(&["stop", "p"]).status(), "success");
    let log_before = home
        .manager_log()
        .matches("supervisor starting opencode")
        .count();
    let second = home.run_dev(&["start", "q", "--git-url", &url]);
    assert_eq!(
        second.status(),
        "success",
        "a later start proves time has passed: {second:?}"
    );
    assert_eq!(
        home.run(&["status", "p"]).json["opencode"]["status"],
        "stopped"
    );
    assert_eq!(
        home.manager_log()
            .matches("supervisor starting opencode")
            .count(),
        log_before
    );
}

#[test]
fn a_server_that_stops_answering_is_recycled() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake("wedge", FAST);
    let toml = home.path().join("opencode-manager.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(&toml, text + "FAKE_OPENCODE_DELAY_MS = \"1500\"\n").expect("toml");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    // The manager log says so, and `status` keeps it as the last exit.
    wait_until(
        "the wedged server to be recycled",
        Duration::from_secs(60),
        || {
            home.manager_log()
                .contains("recycled by the supervisor (no answer to 3 health probes")
        },
    );
    wait_until(
        "the old process to be gone",
        Duration::from_secs(10),
        || !pid_alive(pid),
    );
    let status = home.run(&["status", "p"]);
    assert!(
        status.json["restarts"].as_u64().is_some_and(|n| n >= 1),
        "{status:?}"
    );
    assert!(
        status.json["last_exit"].as_str().is_some_and(|e| e
            .starts_with("recycled by the supervisor (no answer to 3 health probes in a row) at ")),
        "{status:?}"
    );
}

#[test]
fn an_idle_project_is_parked_and_a_gateway_call_starts_it_again() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::with_opencode(opencode_bin(), &format!("{FAST}idle_timeout_secs = 3\n"));
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    // Watch the state file, not `status`: a status call talks to the instance, which is activity.
    wait_until("the project to be parked", Duration::from_secs(60), || {
        state(&home)["projects"]["p"]["instance"]["status"] == "idle"
    });
    wait_until(
        "the parked instance to be gone",
        Duration::from_secs(10),
        || !pid_alive(pid),
    );
    assert!(home.marked_processes().is_empty());
    let list = home.run(&["list"]);
    assert_eq!(list.json["projects"][0]["status"], "idle", "{list:?}");
    let health = http(
        "GET",
        home.gateway_port,
        "/health",
        None,
        None,
        Duration::from_secs(5),
    )
    .expect("gateway health");
    assert_eq!(
        health.status, 200,
        "a parked project keeps the gateway open"
    );

    let token = std::fs::read_to_string(home.path().join("global-mcp-token"))
        .expect("token")
        .trim()
        .to_owned();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "opencode-session-list", "arguments": {"server": "p"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let reply = raw_mcp_call(home.gateway_port, &token, &body.to_string());
    assert!(
        reply.contains("\"isError\":false") || !reply.contains("\"isError\":true"),
        "{reply}"
    );
    let status = home.run(&["status", "p"]);
    assert_eq!(
        (
            status.json["opencode"]["status"].as_str(),
            status.json["opencode"]["running"].as_bool()
        ),
        (Some("running"), Some(true)),
        "{status:?}"
    );
}

/// One stateless (2026-07-28) MCP call over raw HTTP; returns the response body.
fn raw_mcp_call(port: u16, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
         Mcp-Name: opencode-session-list\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn a_memory_limit_is_enforced_and_an_oom_kill_is_reported_and_restarted() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake("memory-growth", FAST);
    let waiting = home.run_dev(&["start", "p", "--git-url", &url]);
    let mechanism = home.run(&["doctor"]).json["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str())
                .find(|l| l.starts_with("limits: "))
                .map(str::to_owned)
        })
        .expect("limits line");
    assert_eq!(waiting.status(), "success", "{waiting:?}");
    assert_eq!(home.run(&["stop", "p"]).status(), "success");
    let env = home.env_file("p");
    let text = std::fs::read_to_string(&env).expect("read .env");
    std::fs::write(&env, format!("{text}MEMORY_MAX=96M\nTASKS_MAX=64\n")).expect("write .env");
    let started = home.run(&["restart", "p"]);
    assert_eq!(started.status(), "success", "{started:?}");
    if mechanism.starts_with("limits: cgroup") || mechanism.starts_with("limits: systemd") {
        wait_until(
            "the kernel to OOM-kill the instance",
            Duration::from_secs(60),
            || {
                home.manager_log()
                    .contains("killed by the kernel's OOM killer")
            },
        );
        wait_until(
            "the supervisor to restart it",
            Duration::from_secs(60),
            || {
                home.run(&["status", "p"]).json["restarts"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            },
        );
    } else {
        // No cgroup rights: rlimits apply and the RSS watchdog is the guard; the instance runs.
        assert!(mechanism.starts_with("limits: rlimit"), "{mechanism}");
    }
}

#[test]
fn a_start_past_the_memory_budget_parks_the_least_recently_active_first() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    // Each instance holds 160 MiB and may use 200: two do not fit in 300.
    let home = TestHome::fake(
        "ok",
        &format!(
            "{FAST}memory_max = \"200M\"\nmemory_budget = \"300M\"\n[instance_env]\nFAKE_OPENCODE_RSS_MB = \"160\"\n"
        ),
    );
    let first = home.run_dev(&["start", "first", "--git-url", &url]);
    assert_eq!(first.status(), "success", "{first:?}");
    let second = home.run_dev(&["start", "second", "--git-url", &url]);
    assert_eq!(second.status(), "success", "{second:?}");
    let list = home.run(&["list"]);
    let states: Vec<(&str, &str)> = list.json["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("first", "idle"), ("second", "running")],
        "{list:?}"
    );
    assert_eq!(home.marked_processes().len(), 1, "the parked one is gone");
    // A gateway call (here a start) brings the parked one back, parking the other.
    let again = home.run_dev(&["start", "first", "--git-url", &url]);
    assert_eq!(again.status(), "success", "{again:?}");
    assert_eq!(
        home.run(&["status", "second"]).json["opencode"]["status"],
        "idle"
    );
}

#[test]
fn a_start_that_parking_cannot_make_room_for_is_refused_naming_what_runs() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake(
        "ok",
        &format!("{FAST}memory_max = \"600M\"\nmemory_budget = \"500M\"\n"),
    );
    let refused = home.run_dev(&["start", "big", "--git-url", &url]);
    assert_eq!(refused.error(), "over_budget", "{refused:?}");
    let message = refused.json["message"].as_str().expect("message");
    assert!(
        message.contains("starting big (600 MiB)")
            && message.contains("500 MiB")
            && message.contains("running: nothing"),
        "{message}"
    );
    assert!(home.marked_processes().is_empty(), "nothing was started");
}

#[test]
fn simultaneous_starts_beyond_the_start_slots_wait_their_turn_and_all_succeed() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake(
        "slow",
        &format!(
            "{FAST}max_parallel_starts = 1\n[instance_env]\nFAKE_OPENCODE_DELAY_MS = \"700\"\n"
        ),
    );
    // One start first, so the daemon is up before the others race.
    assert_eq!(
        home.run_dev(&["start", "p0", "--git-url", &url]).status(),
        "success"
    );
    let children: Vec<_> = (1..=3)
        .map(|n| {
            home.spawn(
                &["start", &format!("p{n}"), "--git-url", &url],
                Some("development"),
            )
        })
        .collect();
    let mut waited = 0;
    for child in children {
        let out = child.wait_with_output().expect("start");
        let reply: Value = serde_json::from_slice(&out.stdout).expect("json reply");
        assert_eq!(reply["status"], "success", "{reply}");
        if String::from_utf8_lossy(&out.stderr).contains("waiting for a start slot") {
            waited += 1;
        }
    }
    assert!(
        waited >= 2,
        "two of three starts waited for the one slot ({waited})"
    );
}

#[test]
fn a_crashed_instance_leaves_nothing_its_agent_started() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let llm = crate::support::fake_llm::FakeLlm::start();
    let home = TestHome::with_opencode(opencode_bin(), FAST);
    let waiting = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(waiting.status(), "success", "{waiting:?}");
    assert_eq!(home.run(&["stop", "p"]).status(), "success");
    let env = home.env_file("p");
    let text = std::fs::read_to_string(&env).expect("read .env");
    std::fs::write(
        &env,
        format!(
            "{text}OPENCODE_CONFIG_CONTENT='{}'\n",
            llm.config_content("allow")
        ),
    )
    .expect("write .env");
    let started = home.run(&["restart", "p"]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let port = started.json["opencode_port"].as_u64().expect("port") as u16;
    let pw = password(&home, "p");
    let timeout = Duration::from_secs(10);
    let session = http("POST", port, "/session", Some(&pw), Some("{}"), timeout)
        .expect("session")
        .json();
    let id = session["id"].as_str().expect("id");
    // Inside the repo: the agent is confined to its own directories.
    let child_file = home.sandbox("p").join("repo").join("child.pid");
    let prompt = json!({"parts": [{"type": "text", "text": format!("RUN: echo $$ > {}; exec sleep 300", child_file.display())}]});
    http(
        "POST",
        port,
        &format!("/session/{id}/prompt_async"),
        Some(&pw),
        Some(&prompt.to_string()),
        timeout,
    )
    .expect("prompt");
    wait_until("the agent's child to run", Duration::from_secs(60), || {
        std::fs::read_to_string(&child_file).is_ok_and(|t| t.trim().parse::<i32>().is_ok())
    });
    let child: i32 = std::fs::read_to_string(&child_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    // Let a health probe see the busy session (it records the check time after it looked).
    let last_check = || {
        home.run(&["status", "p"]).json["last_health_check"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let seen_at = last_check();
    wait_until(
        "a probe after the turn began",
        Duration::from_secs(30),
        || last_check() > seen_at,
    );
    // The bash tool's command runs in its own session: killing OpenCode alone would orphan it.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    wait_until("the orphan to be swept", Duration::from_secs(30), || {
        !pid_alive(child)
    });
    wait_until(
        "the instance to be restarted",
        Duration::from_secs(60),
        || {
            let status = home.run(&["status", "p"]);
            status.json["opencode"]["status"] == "running"
                && status.json["opencode"]["running"] == true
                && status.json["opencode_pid"].as_i64() != Some(i64::from(pid))
        },
    );
    let status = home.run(&["status", "p"]);
    assert_eq!(
        status.json["interrupted_sessions"],
        json!([id]),
        "the busy session is reported: {status:?}"
    );
    // Whether the sweep or the kernel ended the child (Bun sometimes takes its children along
    // when it is killed) varies from run to run; what must hold is that nothing survives.
    assert!(home.marked_processes().iter().all(|p| *p != child));
}

/// A starting Instance yields the CPU to the running ones: its session's autogroup runs at the
/// lowest priority until it is ready, then at the normal one.
#[test]
fn a_starting_instance_runs_at_the_lowest_cpu_priority_until_it_is_ready() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake(
        "slow",
        &format!("{FAST}[instance_env]\nFAKE_OPENCODE_DELAY_MS = \"3000\"\n"),
    );
    let start = home.spawn(&["start", "p", "--git-url", &url], Some("development"));
    let nice = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
            .ok()
            .and_then(|t| {
                t.split_whitespace()
                    .last()
                    .and_then(|n| n.parse::<i32>().ok())
            })
    };
    let mut starting = None;
    wait_until(
        "the start at the lowest priority",
        Duration::from_secs(30),
        || {
            starting = home
                .marked_processes()
                .into_iter()
                .find(|pid| nice(*pid) == Some(19));
            starting.is_some()
        },
    );
    let output = start.wait_with_output().expect("start");
    let started: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(started["status"], "success", "{started}");
    let pid = started["opencode_pid"].as_i64().expect("pid") as i32;
    assert_eq!(Some(pid), starting, "the same process");
    assert_eq!(nice(pid), Some(0), "normal priority once ready");
    // The daemon's own session was never touched.
    let daemon = home.daemon_pid().expect("daemon");
    assert_eq!(nice(daemon), Some(0));
}
