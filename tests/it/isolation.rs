//! An agent reaches only its own Project (issue "Isolation and hardening"): the real OpenCode,
//! whose model is the fake provider, runs the shell commands an attacker's text would make it
//! run. Another Project's `.env`, the gateway token, the state file, the rest of the home, other
//! processes' environments and the daemon's socket stay out of reach; its own repo, `$TMPDIR`,
//! `git commit` and `git push` work; a background child it leaves behind is confined too.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::gateway::start_project;
use crate::home::TestHome;
use crate::support::fake_llm::FakeLlm;
use crate::support::sshd::TestSshd;
use crate::support::{free_port, http, wait_until};

fn env_value(home: &TestHome, project: &str, key: &str) -> String {
    let text = std::fs::read_to_string(home.env_file(project)).expect("read .env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .expect("key in .env")
        .to_owned()
}

/// Runs `command` as the agent of `project` (one prompt, one bash tool call) and waits for the
/// turn to end.
fn run_as_agent(home: &TestHome, project: &str, port: u16, command: &str) {
    let password = env_value(home, project, "OPENCODE_SERVER_PASSWORD");
    let timeout = Duration::from_secs(120);
    let session = http(
        "POST",
        port,
        "/session",
        Some(&password),
        Some("{}"),
        timeout,
    )
    .expect("create a session")
    .json();
    let id = session["id"].as_str().expect("session id");
    let prompt = json!({"parts": [{"type": "text", "text": format!("RUN: {command}")}]});
    let answer = http(
        "POST",
        port,
        &format!("/session/{id}/message"),
        Some(&password),
        Some(&prompt.to_string()),
        timeout,
    )
    .expect("prompt");
    assert!(answer.status < 300, "{answer:?}");
}

/// `DENIED name :: …` / `ALLOWED name :: …` lines of the probe, by name.
fn outcomes(text: &str) -> BTreeMap<String, (bool, String)> {
    text.lines()
        .filter_map(|line| {
            let (verdict, rest) = line.split_once(' ')?;
            let (name, detail) = rest.split_once(" :: ").unwrap_or((rest, ""));
            Some((name.to_owned(), (verdict == "ALLOWED", detail.to_owned())))
        })
        .collect()
}

/// The probe the agent runs: each check prints whether the command succeeded.
fn probe_script(home: &TestHome, b_pid: i32, daemon_pid: i32, spare_port: u16) -> String {
    let h = home.path().display().to_string();
    let socket = home
        .path()
        .join("opencode-manager.sock")
        .display()
        .to_string();
    format!(
        r#"#!/bin/bash
check() {{ name=$1; shift; if out=$("$@" 2>&1); then v=ALLOWED; else v=DENIED; fi; echo "$v $name :: $(echo $out | head -c 300)"; }}
check read_other_env cat {h}/opencode-sandboxes/b/.env
check read_own_env cat {h}/opencode-sandboxes/a/.env
check list_other_repo ls {h}/opencode-sandboxes/b/repo
check read_global_token cat {h}/global-mcp-token
check read_state cat {h}/opencode-state.json
check read_daemon_token cat {h}/opencode-manager.token
check read_manager_log cat {h}/opencode-logs/manager.log
check read_other_key cat {h}/opencode-keys/b-deploy
check list_home ls {h}
check write_home touch {h}/planted
check read_other_environ cat /proc/{b_pid}/environ
check read_daemon_environ cat /proc/{daemon_pid}/environ
check signal_other kill -0 {b_pid}
check signal_daemon kill -0 {daemon_pid}
check bind_another_port /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", {spare_port}))'
check use_daemon_socket /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect("{socket}")
s.sendall(b"\n" + b"{{\"request\":{{\"op\":\"ping\"}}}}\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode()[:200])
sys.exit(0 if b"hello" in data else 1)'
check write_own_repo sh -c 'echo ok > own.txt && cat own.txt'
check write_tmpdir sh -c 'echo ok > "$TMPDIR/t" && cat "$TMPDIR/t"'
check capabilities_dropped grep -q "CapEff:[[:space:]]*0000000000000000" /proc/self/status
"#
    )
}

#[test]
fn an_agent_reaches_only_its_own_project() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::real();
    let a = start_project(&home, &sshd, &llm, "a", "allow");
    let b = start_project(&home, &sshd, &llm, "b", "allow");
    let a_port = a["opencode_port"].as_u64().expect("port") as u16;
    let b_pid = b["opencode_pid"].as_i64().expect("pid") as i32;
    let daemon_pid = home.daemon_pid().expect("daemon");
    let status = home.run(&["status", "a"]);
    assert!(
        status.json["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("landlock ABI ")),
        "{status:?}"
    );
    let doctor = home.run(&["doctor"]);
    assert!(
        doctor.json["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i
                .as_str()
                .is_some_and(|i| i.starts_with("isolation: landlock ABI "))),
        "{doctor:?}"
    );

    let repo = home.sandbox("a").join("repo");
    std::fs::write(
        repo.join("probe.sh"),
        probe_script(&home, b_pid, daemon_pid, free_port()),
    )
    .expect("write the probe");
    run_as_agent(&home, "a", a_port, "bash probe.sh > probe.out 2>&1");
    let report = std::fs::read_to_string(repo.join("probe.out")).expect("the probe's report");
    let found = outcomes(&report);
    let expected_allowed = ["write_own_repo", "write_tmpdir", "capabilities_dropped"];
    for name in [
        "read_other_env",
        "read_own_env",
        "list_other_repo",
        "read_global_token",
        "read_state",
        "read_daemon_token",
        "read_manager_log",
        "read_other_key",
        "list_home",
        "write_home",
        "read_other_environ",
        "read_daemon_environ",
        "signal_other",
        "signal_daemon",
        "bind_another_port",
        "use_daemon_socket",
    ]
    .into_iter()
    .chain(expected_allowed)
    {
        let (allowed, detail) = found
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the report:\n{report}"));
        assert_eq!(
            *allowed,
            expected_allowed.contains(&name),
            "{name}: {detail}\n{report}"
        );
    }
    assert!(
        found["use_daemon_socket"].1.contains("unauthorized"),
        "the socket refuses a connection without the token: {report}"
    );
    let secret_of_b = env_value(&home, "b", "OPENCODE_SERVER_PASSWORD");
    assert!(!report.contains(&secret_of_b), "{report}");
    assert!(!home.path().join("planted").exists());

    // git commit and push over the deploy key work from inside.
    run_as_agent(
        &home,
        "a",
        a_port,
        "git add own.txt && git -c user.name=agent -c user.email=agent@test commit -qm from-the-agent && git push -q origin HEAD:main > push.out 2>&1; echo rc=$? >> push.out",
    );
    let pushed = std::fs::read_to_string(repo.join("push.out")).expect("push.out");
    assert!(pushed.contains("rc=0"), "{pushed}");
    let log = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(sshd.repo_path("a"))
        .args(["log", "main", "--format=%s"])
        .output()
        .expect("git log");
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("from-the-agent"),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );

    // A child the agent leaves running in its own session is confined too.
    let b_env = home.env_file("b");
    run_as_agent(
        &home,
        "a",
        a_port,
        &format!(
            "setsid nohup bash -c 'while [ ! -e go ]; do sleep 0.1; done; cat {} > bg.out 2>&1; echo finished >> bg.out' > /dev/null 2>&1 &",
            b_env.display()
        ),
    );
    std::fs::write(repo.join("go"), "").expect("release the child");
    wait_until(
        "the background child to finish",
        Duration::from_secs(30),
        || std::fs::read_to_string(repo.join("bg.out")).is_ok_and(|t| t.contains("finished")),
    );
    let bg = std::fs::read_to_string(repo.join("bg.out")).expect("bg.out");
    assert!(bg.contains("Permission denied"), "{bg}");
    assert!(!bg.contains(&secret_of_b), "{bg}");
}

/// The control case: with `isolation = "off"` the same agent reads what it should not, and the
/// start says so. (This is what every agent could do before confinement.)
#[test]
fn without_isolation_the_agent_reads_the_home_and_the_start_warns() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::with_opencode(crate::support::opencode_bin(), "isolation = \"off\"\n");
    let started = start_project(&home, &sshd, &llm, "c", "allow");
    assert!(
        started["warning"]
            .as_str()
            .is_some_and(|w| w.contains("without isolation")),
        "{started}"
    );
    let status = home.run(&["status", "c"]);
    assert!(
        status.json["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("none (isolation = \"off\"")),
        "{status:?}"
    );
    let port = started["opencode_port"].as_u64().expect("port") as u16;
    let repo = home.sandbox("c").join("repo");
    // In a script, as an attacker would: OpenCode's own permission check sees only `bash leak.sh`.
    std::fs::write(
        repo.join("leak.sh"),
        format!(
            "cat {} > leak.txt 2>&1\n",
            home.path().join("global-mcp-token").display()
        ),
    )
    .expect("write");
    run_as_agent(&home, "c", port, "bash leak.sh");
    let leaked = std::fs::read_to_string(repo.join("leak.txt")).expect("leak.txt");
    let token = std::fs::read_to_string(home.path().join("global-mcp-token")).expect("token");
    assert_eq!(leaked.trim(), token.trim());
}

/// The manager-wide `opencode-config.json` is every confined instance's OpenCode config: OpenCode
/// reads it (here it names the model provider) although nothing else under the home is readable.
#[test]
fn the_manager_wide_opencode_config_reaches_a_confined_instance() {
    let sshd = TestSshd::start();
    let llm = FakeLlm::start();
    let home = TestHome::real();
    let config = home.path().join("opencode-config.json");
    std::fs::write(&config, llm.config_content("allow")).expect("write");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let url = sshd.create_repo("d");
    let waiting = home.run_dev(&["start", "d", "--git-url", &url]);
    assert_eq!(waiting.status(), "waiting_for_key", "{waiting:?}");
    sshd.authorize(waiting.json["public_key"].as_str().expect("key"));
    let started = home.run_dev(&["start", "d", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    assert_eq!(
        started.json["provider"]["model"], "fake/m1",
        "OpenCode read the manager-wide config: {started:?}"
    );
    let status = home.run(&["status", "d"]);
    assert!(
        status.json["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("landlock ABI ")),
        "{status:?}"
    );
}
