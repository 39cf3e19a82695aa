//! The daemon against hostile files, users and input (issue "Isolation and hardening"): a corrupt
//! state file, a second daemon, a deleted lock file, an unsafe home, a closed pipe, a huge `.env`,
//! an OpenCode 2, a planted git config, and the HTTP front door off loopback.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::faults::file_repo;
use crate::home::TestHome;
use crate::support::{KillOnDrop, free_port, manager_bin, pid_alive, wait_until};

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A fake-OpenCode home with a `file://` repository.
fn home_with_repo() -> (TestHome, tempfile::TempDir, String) {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake("ok", "allow_file = true\n");
    (home, repos, url)
}

fn started_pid(home: &TestHome, project: &str, url: &str) -> i32 {
    let started = home.run_dev(&["start", project, "--git-url", url]);
    assert_eq!(started.status(), "success", "{started:?}");
    started.json["opencode_pid"].as_i64().expect("pid") as i32
}

fn kill_daemon(home: &TestHome) {
    let pid = home.daemon_pid().expect("a daemon runs");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    wait_until("the daemon to die", Duration::from_secs(10), || {
        !pid_alive(pid)
    });
}

#[test]
fn a_corrupt_state_file_kills_nothing_and_stops_the_daemon_from_starting() {
    let (home, _repos, url) = home_with_repo();
    let a = started_pid(&home, "a", &url);
    let b = started_pid(&home, "b", &url);
    kill_daemon(&home);
    let state_path = home.path().join("opencode-state.json");
    let original = std::fs::read(&state_path).expect("state");
    let truncated = original[..original.len() / 2].to_vec();
    std::fs::write(&state_path, &truncated).expect("truncate");

    let list = home.run(&["list"]);
    assert_eq!((list.error(), list.code), ("state_corrupt", 1), "{list:?}");
    let message = list.json["message"].as_str().expect("message");
    assert!(
        message.contains(state_path.to_str().expect("utf8")),
        "{message}"
    );
    assert!(
        list.json["hint"]
            .as_str()
            .expect("hint")
            .contains(".backup"),
        "{list:?}"
    );
    assert_eq!(
        std::fs::read(&state_path).expect("state"),
        truncated,
        "untouched"
    );
    assert!(
        std::fs::read_dir(home.path())
            .expect("ls")
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().contains("corrupt")),
        "nothing moved aside"
    );
    assert!(
        pid_alive(a) && pid_alive(b),
        "live instances survive a bad state file"
    );
    assert_eq!(home.daemon_pid(), None, "no daemon runs on a corrupt state");

    // Once the file is repaired, the next daemon adopts both, unchanged.
    std::fs::write(&state_path, &original).expect("restore");
    let list = home.run(&["list"]);
    assert_eq!(list.status(), "success", "{list:?}");
    let pids: Vec<i64> = list.json["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .filter_map(|p| p["opencode_pid"].as_i64())
        .collect();
    assert_eq!(pids, [i64::from(a), i64::from(b)]);
}

#[test]
fn a_second_daemon_exits_naming_the_first_even_when_the_lock_file_is_gone() {
    let home = TestHome::fake("ok", "");
    assert_eq!(home.run(&["list"]).status(), "success");
    let first = home.daemon_pid().expect("a daemon");
    let second_daemon = || {
        Command::new(manager_bin())
            .arg("daemon")
            .env("OPENCODE_MANAGER_HOME", home.path())
            .output()
            .expect("run a second daemon")
    };
    let refused = second_daemon();
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("pid {first}")),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let lock = home.path().join("opencode-manager.lock");
    std::fs::remove_file(&lock).expect("delete the lock file");
    let refused = second_daemon();
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("pid {first}")),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(pid_alive(first));
    assert!(
        home.path().join("opencode-manager.sock").exists(),
        "the running daemon's socket is left alone"
    );
    assert_eq!(home.run(&["list"]).status(), "success", "still answering");
    // The running daemon puts its lock back.
    wait_until(
        "the lock file to name the daemon again",
        Duration::from_secs(10),
        || home.daemon_pid() == Some(first),
    );
}

#[test]
fn an_unsafe_home_or_config_is_refused_with_how_to_fix_it() {
    let home = TestHome::fake("ok", "");
    chmod(home.path(), 0o777);
    for args in [&["list"][..], &["doctor"][..]] {
        let refused = home.run(args);
        assert_eq!(
            (refused.error(), refused.code),
            ("home_unsafe", 1),
            "{refused:?}"
        );
        assert!(
            refused.json["hint"]
                .as_str()
                .expect("hint")
                .contains("chmod go-w"),
            "{refused:?}"
        );
    }
    assert_eq!(
        home.daemon_pid(),
        None,
        "no daemon starts in an unsafe home"
    );
    chmod(home.path(), 0o700);

    // A config file another user could have written: root's manager must not read it.
    let config = home.path().join("opencode-manager.toml");
    std::os::unix::fs::chown(&config, Some(65534), None).expect("chown nobody");
    let refused = home.run(&["list"]);
    assert_eq!(refused.error(), "home_unsafe", "{refused:?}");
    assert!(
        refused.json["message"]
            .as_str()
            .expect("message")
            .contains("opencode-manager.toml"),
        "{refused:?}"
    );
    std::os::unix::fs::chown(&config, Some(0), None).expect("chown back");

    // A home that is a symlink: the hint names the real directory to use instead.
    let links = tempfile::tempdir().expect("tempdir");
    let link = links.path().join("home-link");
    std::os::unix::fs::symlink(home.path(), &link).expect("symlink");
    let output = Command::new(manager_bin())
        .args(["list", "--json"])
        .env("OPENCODE_MANAGER_HOME", &link)
        .output()
        .expect("run");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(reply["error"], "home_unsafe", "{reply}");
    assert!(
        reply["hint"]
            .as_str()
            .expect("hint")
            .contains("OPENCODE_MANAGER_HOME="),
        "{reply}"
    );
    assert_eq!(home.run(&["list"]).status(), "success", "fixed, it works");
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let home = TestHome::fake("ok", "");
    assert_eq!(home.run(&["list"]).status(), "success");
    // A pipe whose reader is already gone: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(manager_bin())
        .args(["list", "--json"])
        .env("OPENCODE_MANAGER_HOME", home.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_env_over_64_kib_is_refused_at_start() {
    let (home, _repos, url) = home_with_repo();
    started_pid(&home, "p", &url);
    assert_eq!(home.run(&["stop", "p"]).status(), "success");
    let env = home.env_file("p");
    let mut text = std::fs::read_to_string(&env).expect("read");
    text.push_str(&format!("# {}\n", "x".repeat(64 * 1024)));
    std::fs::write(&env, text).expect("write");
    let refused = home.run(&["start", "p", "--git-url", &url]);
    assert_eq!(refused.error(), "env_too_large", "{refused:?}");
}

#[test]
fn an_opencode_of_another_major_version_is_refused() {
    let stub_dir = tempfile::tempdir().expect("tempdir");
    chmod(stub_dir.path(), 0o755);
    let stub = stub_dir.path().join("opencode");
    std::fs::write(&stub, "#!/bin/sh\necho 2.0.15\n").expect("write");
    chmod(&stub, 0o755);
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::with_opencode(stub.clone(), "allow_file = true\n");
    let refused = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(
        (refused.error(), refused.code),
        ("opencode_unsupported", 1),
        "{refused:?}"
    );
    let message = refused.json["message"].as_str().expect("message");
    assert!(message.contains("2.0.15"), "{message}");
    assert!(
        refused.json["hint"]
            .as_str()
            .expect("hint")
            .contains("opencode-ai@1.18.33"),
        "{refused:?}"
    );
}

#[test]
fn a_program_another_user_could_replace_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o777);
    let program = dir.path().join("opencode");
    std::fs::copy(crate::support::fake_opencode_bin(), &program).expect("copy");
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::with_opencode(program, "allow_file = true\n");
    let refused = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(refused.error(), "opencode_untrusted", "{refused:?}");
}

#[test]
fn a_planted_fsmonitor_or_hook_in_the_clone_runs_nothing() {
    let (home, _repos, url) = home_with_repo();
    started_pid(&home, "p", &url);
    let repo = home.sandbox("p").join("repo");
    let witness = tempfile::tempdir().expect("tempdir");
    let ran = |name: &str| witness.path().join(name);
    let script = |name: &str| format!("#!/bin/sh\ntouch {}\n", ran(name).display());
    std::fs::write(repo.join(".git/fsmon.sh"), script("fsmonitor")).expect("write");
    chmod(&repo.join(".git/fsmon.sh"), 0o755);
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    for hook in ["post-index-change", "pre-auto-gc", "reference-transaction"] {
        std::fs::write(hooks.join(hook), script(hook)).expect("write");
        chmod(&hooks.join(hook), 0o755);
    }
    let config = repo.join(".git/config");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "[core]\n\tfsmonitor = {}\n",
        repo.join(".git/fsmon.sh").display()
    ));
    std::fs::write(&config, text).expect("plant");
    std::fs::write(repo.join("README.md"), "changed by the agent\n").expect("edit");

    let refused = home.run(&["destroy", "p"]);
    assert_eq!(refused.error(), "unsaved_work", "{refused:?}");
    assert!(
        refused.json["message"]
            .as_str()
            .expect("message")
            .contains("README.md"),
        "{refused:?}"
    );
    let ran: Vec<String> = std::fs::read_dir(witness.path())
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(ran.is_empty(), "planted commands ran: {ran:?}");
}

/// `serve --mode http` on a non-loopback address: the bound address and `--allowed-host` names
/// pass the Host check, others do not; the bearer scheme is case-insensitive; a short token is
/// refused there.
#[test]
fn http_on_another_address_answers_its_allowed_hosts_only() {
    let home = TestHome::fake("ok", "");
    let token = "t".repeat(40);
    let port = free_port();
    let spawn = |token: &str| {
        Command::new(manager_bin())
            .args(["serve", "--mode", "http", "--host", "0.0.0.0", "--port"])
            .arg(port.to_string())
            .args(["--allowed-host", "ocm.test"])
            .env("OPENCODE_MANAGER_HOME", home.path())
            .env("OPENCODE_MANAGER_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve")
    };
    let mut short = KillOnDrop(spawn("short-token"));
    let status = short.wait_timeout(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));

    let _server = KillOnDrop(spawn(&token));
    let raw_request = |host: &str, authorization: Option<&str>, path: &str, keep_alive: bool| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let (method, extra) = if path == "/mcp" {
            (
                "POST",
                format!(
                    "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            )
        } else {
            ("GET", String::new())
        };
        let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let connection = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}{connection}\r\n{}",
            if method == "POST" { body } else { "" }
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        Ok::<String, std::io::Error>(raw)
    };
    let status_of = |raw: &str| -> u16 {
        raw.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let request = |host: &str, authorization: Option<&str>, path: &str| {
        raw_request(host, authorization, path, false).map(|raw| status_of(&raw))
    };
    wait_until("the server to listen", Duration::from_secs(10), || {
        request(&format!("127.0.0.1:{port}"), None, "/health").is_ok_and(|s| s == 200)
    });
    assert_eq!(
        request(&format!("ocm.test:{port}"), None, "/health").expect("request"),
        200
    );
    assert_eq!(
        request(&format!("evil.test:{port}"), None, "/health").expect("request"),
        403
    );
    let lower = format!("bearer {token}");
    let upper = format!("BEARER {token}");
    for authorization in [lower.as_str(), upper.as_str()] {
        let status =
            request(&format!("ocm.test:{port}"), Some(authorization), "/mcp").expect("request");
        assert!(
            status != 401 && status != 403 && status < 500,
            "{authorization}: {status}"
        );
    }
    assert_eq!(
        request(&format!("ocm.test:{port}"), Some("Bearer wrong"), "/mcp").expect("request"),
        401
    );
    // A refusal leaves the request body unread, so it ends the connection and says so: a
    // keep-alive client must not send its next request on it. (Read to the end: the server closes.)
    let raw = raw_request(
        &format!("ocm.test:{port}"),
        Some("Bearer wrong"),
        "/mcp",
        true,
    )
    .expect("the server closes the connection after a refusal")
    .to_ascii_lowercase();
    assert!(raw.contains("connection: close"), "{raw}");
}
