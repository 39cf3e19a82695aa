//! The whole workflow against the real OpenCode and a real git server over SSH.

use std::time::Duration;

use serde_json::Value;

use crate::home::TestHome;
use crate::support::sshd::TestSshd;
use crate::support::{pid_alive, wait_until};

/// Replaces the production placeholders with real secrets; returns them.
fn set_passwords(home: &TestHome, project: &str) -> (String, String) {
    let path = home.env_file(project);
    let password = format!("pw-{}", std::process::id());
    let token = format!("tok-{}-secret", std::process::id());
    let text = std::fs::read_to_string(&path).expect("read .env");
    let text = text
        .replacen(
            "OPENCODE_SERVER_PASSWORD=CHANGE_ME_REQUIRED",
            &format!("OPENCODE_SERVER_PASSWORD={password}"),
            1,
        )
        .replacen(
            "MCP_TOOL_BEARER_TOKEN=CHANGE_ME_REQUIRED",
            &format!("MCP_TOOL_BEARER_TOKEN={token}"),
            1,
        );
    std::fs::write(&path, text).expect("write .env");
    (password, token)
}

fn env_value(home: &TestHome, project: &str, key: &str) -> String {
    let text = std::fs::read_to_string(home.env_file(project)).expect("read .env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .expect("key in .env")
        .to_owned()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").mode() & 0o777
}

/// Every secret must be absent from every reply, log line and process argv.
fn assert_no_secret_leaks(home: &TestHome, replies: &[Value], secrets: &[&str]) {
    let mut haystacks: Vec<(String, String)> = replies
        .iter()
        .map(|r| ("reply".to_owned(), r.to_string()))
        .collect();
    for entry in walk(&home.path().join("opencode-logs")) {
        haystacks.push((
            entry.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&entry).unwrap_or_default()).into_owned(),
        ));
    }
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            haystacks.push((
                format!("argv of {}", entry.path().display()),
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
            ));
        }
    }
    for secret in secrets {
        for (place, text) in &haystacks {
            assert!(!text.contains(secret), "a secret leaked into {place}");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn production_flow_asks_for_passwords_then_the_key_then_runs_isolated() {
    let sshd = TestSshd::start();
    let url = sshd.create_repo("blog");
    let home = TestHome::real();
    let mut replies = Vec::new();

    let first = home.run(&["start", "blog", "--git-url", &url]);
    assert_eq!(
        (first.status(), first.code),
        ("waiting_for_passwords", 3),
        "{first:?}"
    );
    assert_eq!(
        first.json["env_path"].as_str(),
        Some(home.env_file("blog").to_str().expect("utf8"))
    );
    assert_eq!(mode(&home.env_file("blog")), 0o600);
    assert_eq!(mode(&home.sandbox("blog")), 0o700);
    replies.push(first.json);

    let placeholders = home.run(&["start", "blog", "--git-url", &url]);
    assert_eq!(
        (
            placeholders.status(),
            placeholders.error(),
            placeholders.code
        ),
        ("error", "invalid_config", 2),
        "{placeholders:?}"
    );

    let (password, token) = set_passwords(&home, "blog");
    let waiting = home.run(&["start", "blog", "--git-url", &url]);
    assert_eq!(
        (waiting.status(), waiting.code),
        ("waiting_for_key", 3),
        "{waiting:?}"
    );
    let public_key = waiting.json["public_key"]
        .as_str()
        .expect("public_key")
        .to_owned();
    assert!(public_key.starts_with("ssh-ed25519 ") && public_key.ends_with("opencode-mcp-blog"));
    assert_eq!(mode(&home.key("blog")), 0o600);
    assert!(
        !home.sandbox("blog").join("repo").exists(),
        "nothing is cloned without access"
    );
    replies.push(waiting.json);

    sshd.authorize(&public_key);
    let started = home.run(&["start", "blog", "--git-url", &url]);
    assert_eq!(
        (started.status(), started.code),
        ("success", 0),
        "{started:?}"
    );
    assert!(
        started.stderr.contains("cloning the repository"),
        "progress goes to stderr: {}",
        started.stderr
    );
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let port = started.json["opencode_port"].as_u64().expect("port") as u16;
    assert!((home.port_min..=home.port_max).contains(&port));
    assert_eq!(
        started.json["opencode_url"],
        format!("http://127.0.0.1:{port}")
    );
    assert_eq!(
        started.json["sandbox_dir"].as_str(),
        Some(home.sandbox("blog").to_str().expect("utf8"))
    );
    assert!(home.sandbox("blog").join("repo/README.md").exists());
    replies.push(started.json.clone());

    // Isolation: own HOME/XDG/TMPDIR under the sandbox, password only in the environment, no
    // manager secrets, and the deploy key pinned in the clone for the agent's own git.
    let environ =
        String::from_utf8(std::fs::read(format!("/proc/{pid}/environ")).expect("environ"))
            .expect("utf8")
            .replace('\0', "\n");
    let sandbox = home.sandbox("blog");
    for key in [
        "HOME",
        "XDG_DATA_HOME",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
        "TMPDIR",
    ] {
        let value = environ
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .expect(key);
        assert!(
            value.starts_with(sandbox.to_str().expect("utf8")),
            "{key}={value}"
        );
    }
    assert!(environ.contains(&format!("OPENCODE_SERVER_PASSWORD={password}")));
    assert!(
        !environ.contains(&token),
        "the gateway token is not the agent's business"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .replace('\0', " ");
    assert!(
        cmdline.contains(&format!("serve --hostname 127.0.0.1 --port {port}")),
        "{cmdline}"
    );
    let git_config = std::fs::read_to_string(sandbox.join("repo/.git/config")).expect("git config");
    assert!(
        git_config.contains("sshcommand = ssh") && git_config.contains("blog-deploy"),
        "{git_config}"
    );

    let again = home.run(&["start", "blog", "--git-url", &url]);
    assert_eq!(
        (again.status(), again.json["opencode_pid"].as_i64()),
        ("already_running", Some(pid as i64)),
        "{again:?}"
    );

    let status = home.run(&["status", "blog"]);
    assert_eq!(status.status(), "ok", "{status:?}");
    assert_eq!(
        status.json["opencode"],
        serde_json::json!({"pid": pid, "port": port, "status": "running", "running": true})
    );
    assert!(status.json["started_at"].is_string() && status.json["last_health_check"].is_string());
    assert_eq!(
        status.json["provider"]["model"], "opencode/big-pickle",
        "the built-in provider is reported: {status:?}"
    );
    replies.push(status.json);

    let list = home.run(&["list"]);
    assert_eq!(list.json["projects"][0]["name"], "blog");
    assert_eq!(list.json["projects"][0]["opencode_running"], true);
    replies.push(list.json);

    let logs = home.run(&["logs", "blog", "--lines", "5"]);
    assert!(
        logs.json["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("listening on"))),
        "{logs:?}"
    );
    replies.push(logs.json);

    assert_no_secret_leaks(&home, &replies, &[&password, &token]);

    let stopped = home.run(&["stop", "blog"]);
    assert_eq!((stopped.status(), stopped.code), ("success", 0));
    assert!(!pid_alive(pid));
    assert!(
        home.marked_processes().is_empty(),
        "nothing of the instance is left"
    );
    let state_after_stop = home.state();
    let twice = home.run(&["stop", "blog"]);
    assert_eq!(
        (twice.status(), twice.code),
        ("success", 0),
        "stop is idempotent"
    );
    assert_eq!(
        home.state(),
        state_after_stop,
        "a second stop changes nothing"
    );

    // destroy refuses to lose work: an uncommitted file, then a commit no remote has.
    let repo = home.sandbox("blog").join("repo");
    std::fs::write(repo.join("notes.txt"), "agent work\n").expect("write");
    let refused = home.run(&["destroy", "blog"]);
    assert_eq!(
        (refused.error(), refused.code),
        ("unsaved_work", 1),
        "{refused:?}"
    );
    assert!(
        refused.json["items"][0]
            .as_str()
            .expect("item")
            .contains("notes.txt"),
        "{refused:?}"
    );
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env_remove("GIT_SSH_COMMAND")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["add", "notes.txt"]);
    git(&["commit", "-qm", "agent work"]);
    let refused = home.run(&["destroy", "blog"]);
    assert!(
        refused.json["items"][0]
            .as_str()
            .expect("item")
            .contains("on no remote branch"),
        "{refused:?}"
    );
    assert!(
        home.sandbox("blog").join("repo/notes.txt").exists(),
        "nothing was deleted"
    );
    // The pinned deploy key lets the agent's own push through, with no GIT_SSH_COMMAND.
    git(&["push", "-q", "origin", "HEAD:main"]);
    let destroyed = home.run(&["destroy", "blog"]);
    assert_eq!(destroyed.status(), "success", "{destroyed:?}");
    assert!(!home.sandbox("blog").exists() && !home.key("blog").exists());
    let gone = home.run(&["status", "blog"]);
    assert_eq!((gone.status(), gone.code), ("not_found", 1));
}

#[test]
fn development_mode_starts_with_generated_secrets_and_survives_a_daemon_kill() {
    let sshd = TestSshd::start();
    let url = sshd.create_repo("dev");
    let home = TestHome::real();

    let waiting = home.run_dev(&["start", "dev", "--git-url", &url]);
    assert_eq!(waiting.status(), "waiting_for_key", "{waiting:?}");
    let password = env_value(&home, "dev", "OPENCODE_SERVER_PASSWORD");
    let token = env_value(&home, "dev", "MCP_TOOL_BEARER_TOKEN");
    assert_eq!((password.len(), token.len()), (32, 64));
    sshd.authorize(waiting.json["public_key"].as_str().expect("public key"));

    let started = home.run_dev(&["start", "dev", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let started_at = started.json["started_at"].clone();

    // SIGKILL the daemon: the instance keeps running and the next daemon adopts it, no restart.
    let daemon = home.daemon_pid().expect("daemon pid");
    std::process::Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .expect("kill");
    wait_until("the daemon to die", Duration::from_secs(5), || {
        !pid_alive(daemon)
    });
    assert!(pid_alive(pid));
    let status = home.run(&["status", "dev"]);
    assert_ne!(home.daemon_pid(), Some(daemon));
    assert_eq!(
        status.json["opencode"]["pid"].as_i64(),
        Some(pid as i64),
        "{status:?}"
    );
    assert_eq!(status.json["opencode"]["running"], true);
    assert_eq!(
        status.json["started_at"], started_at,
        "adopted, not restarted"
    );
    assert!(home.manager_log().contains("adopted running opencode"));

    assert_no_secret_leaks(
        &home,
        &[waiting.json, started.json, status.json],
        &[&password, &token],
    );
}

#[test]
fn providers_come_from_the_project_env_and_stop_ends_what_the_agent_started() {
    let sshd = TestSshd::start();
    let url = sshd.create_repo("agent");
    let llm = crate::support::fake_llm::FakeLlm::start();
    let home = TestHome::real();
    let waiting = home.run_dev(&["start", "agent", "--git-url", &url]);
    assert_eq!(waiting.status(), "waiting_for_key", "{waiting:?}");
    sshd.authorize(waiting.json["public_key"].as_str().expect("public key"));
    // The provider config reaches this project's instance only, through its .env.
    let env_path = home.env_file("agent");
    let text = std::fs::read_to_string(&env_path).expect("read .env");
    std::fs::write(
        &env_path,
        format!(
            "{text}OPENCODE_CONFIG_CONTENT='{}'\n",
            llm.config_content("allow")
        ),
    )
    .expect("write .env");

    let started = home.run_dev(&["start", "agent", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    assert_eq!(
        started.json["provider"],
        serde_json::json!({"providers": ["fake"], "model": "fake/m1"}),
        "{started:?}"
    );
    assert!(
        started
            .json
            .get("warning")
            .is_none_or(|w| !w.as_str().unwrap_or("").contains("provider")),
        "{started:?}"
    );
    let port = started.json["opencode_port"].as_u64().expect("port") as u16;
    let password = env_value(&home, "agent", "OPENCODE_SERVER_PASSWORD");

    // The agent's bash tool starts a long-lived child in its own session.
    // Inside the repo: the agent is confined to its own directories.
    let child_pid_file = home.sandbox("agent").join("repo").join("child.pid");
    let timeout = Duration::from_secs(10);
    let session = crate::support::http(
        "POST",
        port,
        "/session",
        Some(&password),
        Some("{}"),
        timeout,
    )
    .expect("create session")
    .json();
    let session_id = session["id"].as_str().expect("session id");
    let prompt = serde_json::json!({"parts": [{"type": "text", "text": format!("RUN: echo $$ > {}; exec sleep 300", child_pid_file.display())}]});
    let sent = crate::support::http(
        "POST",
        port,
        &format!("/session/{session_id}/prompt_async"),
        Some(&password),
        Some(&prompt.to_string()),
        timeout,
    )
    .expect("prompt");
    assert!(sent.status < 300, "{sent:?}");
    wait_until(
        "the agent's child to start",
        Duration::from_secs(60),
        || std::fs::read_to_string(&child_pid_file).is_ok_and(|t| t.trim().parse::<i32>().is_ok()),
    );
    let child: i32 = std::fs::read_to_string(&child_pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(pid_alive(child));
    assert!(llm.requests() > 0);

    let stopped = home.run(&["stop", "agent"]);
    assert_eq!(stopped.status(), "success");
    assert!(
        !pid_alive(child),
        "the agent's child did not survive the stop"
    );
    assert!(home.marked_processes().is_empty());
}
