//! Tests of the test harness itself: throwaway sshd, fake LLM, fake-opencode.

use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_llm::FakeLlm;
use crate::support::sshd::TestSshd;
use crate::support::{
    KillOnDrop, fake_opencode_bin, free_port, http, opencode_bin, pid_alive, read_line_within,
    seed_opencode_config_dir, wait_until,
};

const T: Duration = Duration::from_secs(5);

fn keygen(path: &Path) -> String {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ocm-test", "-f"])
        .arg(path)
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
    std::fs::read_to_string(path.with_extension("pub")).expect("reading the public key")
}

fn git_with_key(key: &Path, known_hosts: &Path, args: &[&str]) -> Output {
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={} -o LogLevel=ERROR \
         -o ConnectTimeout=10",
        key.display(),
        known_hosts.display()
    );
    Command::new("git")
        .args(args)
        .env("GIT_SSH_COMMAND", ssh)
        .env("LC_ALL", "C")
        .output()
        .expect("running git")
}

#[test]
fn harness_sshd_serves_repos_to_authorized_keys_only() {
    let sshd = TestSshd::start();
    let url = sshd.create_repo("demo");
    assert!(
        url.starts_with(&format!(
            "ssh://{}@127.0.0.1:{}/",
            crate::support::current_user(),
            sshd.port
        )),
        "{url}"
    );
    assert!(url.ends_with("/git/demo.git"), "{url}");
    assert!(sshd.repo_path("demo").join("HEAD").exists());

    let tmp = tempfile::tempdir().expect("temp dir");
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    sshd.authorize(&keygen(&good));
    keygen(&bad);
    let kh = tmp.path().join("kh");

    let out = git_with_key(&good, &kh, &["ls-remote", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ls-remote failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert!(stdout.contains("\trefs/heads/main\n"), "{stdout}");
    assert!(stdout.contains("\tHEAD\n"), "{stdout}");
    assert!(
        sshd.log().contains("Accepted publickey for"),
        "{}",
        sshd.log()
    );

    let clone = tmp.path().join("clone");
    let clone_arg = clone.to_str().expect("utf-8 temp path");
    let out = git_with_key(&good, &kh, &["clone", "-q", &url, clone_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md in the clone");
    assert_eq!(readme, "hello from demo\n");

    let out = git_with_key(&bad, &kh, &["ls-remote", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128), "{stderr}");
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");

    // authorized_keys is re-read per connection: the refused key works once added.
    sshd.authorize(&std::fs::read_to_string(bad.with_extension("pub")).expect("bad.pub"));
    let out = git_with_key(&bad, &kh, &["ls-remote", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `choices[0]` of each `data:` event of an SSE body (skipping `[DONE]`).
fn sse_choices(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| {
            serde_json::from_str::<Value>(data).expect("SSE data is JSON")["choices"][0].clone()
        })
        .collect()
}

fn chat(llm: &FakeLlm, body: &Value) -> Vec<Value> {
    let resp = http(
        "POST",
        llm.port,
        "/v1/chat/completions",
        None,
        Some(&body.to_string()),
        T,
    )
    .expect("fake LLM request");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert!(resp.body.ends_with("data: [DONE]\n\n"), "{}", resp.body);
    let last = resp
        .body
        .split("\n\n")
        .filter(|e| e.starts_with("data: {"))
        .last()
        .expect("a chunk");
    let last: Value = serde_json::from_str(&last["data: ".len()..]).expect("chunk JSON");
    assert_eq!(last["usage"]["prompt_tokens"], 12);
    sse_choices(&resp.body)
}

#[test]
fn harness_fake_llm_answers_title_tool_call_and_tool_result() {
    let llm = FakeLlm::start();
    let tools = json!([{"type": "function", "function": {"name": "bash"}}]);

    let title = chat(
        &llm,
        &json!({"model": "m1", "stream": true, "messages": [
            {"role": "system", "content": "You are a title generator."},
            {"role": "user", "content": "Generate a title for this conversation:\n"},
            {"role": "user", "content": "RUN: echo hi"}]}),
    );
    assert_eq!(title[0]["delta"]["content"], "Fake title");
    assert_eq!(title.last().expect("finish chunk")["finish_reason"], "stop");

    let run = chat(
        &llm,
        &json!({"model": "m1", "stream": true, "tools": tools, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "RUN: echo hi"}]}]}),
    );
    let call = &run[0]["delta"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "bash");
    assert!(call["id"].as_str().expect("call id").starts_with("call_"));
    let args: Value = serde_json::from_str(
        call["function"]["arguments"]
            .as_str()
            .expect("arguments string"),
    )
    .expect("arguments are JSON");
    assert_eq!(args["command"], "echo hi");
    assert_eq!(
        run.last().expect("finish chunk")["finish_reason"],
        "tool_calls"
    );

    let after = chat(
        &llm,
        &json!({"model": "m1", "stream": true, "tools": tools, "messages": [
            {"role": "user", "content": "RUN: echo hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "hi\n"}]}),
    );
    assert_eq!(after[0]["delta"]["content"], "tool said: hi");

    let plain = chat(
        &llm,
        &json!({"model": "m1", "tools": tools, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(plain[0]["delta"]["content"], "Hello from the fake model.");
    assert_eq!(llm.requests(), 4);

    let other = http("GET", llm.port, "/v1/models", None, None, T).expect("fake LLM request");
    assert_eq!(other.status, 404);
    assert_eq!(llm.requests(), 4);

    let config: Value = serde_json::from_str(&llm.config_content("ask")).expect("config JSON");
    assert_eq!(
        config["provider"]["fake"]["options"]["baseURL"],
        format!("http://127.0.0.1:{}/v1", llm.port)
    );
    assert_eq!(config["permission"]["bash"], "ask");
    assert_eq!(config["enabled_providers"], json!(["fake"]));
}

fn spawn_fake(mode: &str, port: u16, password: &str, extra_env: &[(&str, &str)]) -> KillOnDrop {
    let mut cmd = Command::new(fake_opencode_bin());
    cmd.args([
        "serve",
        "--hostname",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .env("FAKE_OPENCODE_MODE", mode)
    .env("OPENCODE_SERVER_PASSWORD", password)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    KillOnDrop(cmd.spawn().expect("spawning fake-opencode"))
}

fn first_stdout_line(child: &mut KillOnDrop) -> String {
    let stdout = child.0.stdout.take().expect("piped stdout");
    read_line_within(BufReader::new(stdout), T, "fake-opencode's listening line").0
}

#[test]
fn harness_fake_opencode_ok_mode_serves_with_basic_auth() {
    let port = free_port();
    let mut fake = spawn_fake("ok", port, "s3cret", &[]);
    assert_eq!(
        first_stdout_line(&mut fake),
        format!("opencode server listening on http://127.0.0.1:{port}\n")
    );

    let anon = http("GET", port, "/global/health", None, None, T).expect("health");
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Basic realm=\"Secure Area\"")
    );
    let wrong = http("GET", port, "/global/health", Some("nope"), None, T).expect("health");
    assert_eq!(wrong.status, 401);

    let health = http("GET", port, "/global/health", Some("s3cret"), None, T).expect("health");
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json(),
        json!({"healthy": true, "version": "1.18.33-fake"})
    );
    let providers =
        http("GET", port, "/config/providers", Some("s3cret"), None, T).expect("providers");
    assert_eq!(providers.json()["default"], json!({"fake": "m1"}));
    let dispose = http("POST", port, "/global/dispose", Some("s3cret"), None, T).expect("dispose");
    assert_eq!(dispose.json(), json!(true));
    let missing = http("GET", port, "/nope", Some("s3cret"), None, T).expect("404");
    assert_eq!(missing.status, 404);

    // Binding a taken port fails like the real server.
    let clash = Command::new(fake_opencode_bin())
        .args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .output()
        .expect("running fake-opencode");
    assert_eq!(clash.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&clash.stderr).contains("ServeError"));
    assert!(clash.stdout.is_empty());

    fake.signal("TERM");
    let status = fake.wait_timeout(T);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
}

#[test]
fn harness_fake_opencode_crash_mode_exits_3() {
    let out = Command::new(fake_opencode_bin())
        .args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
        ])
        .env("FAKE_OPENCODE_MODE", "crash")
        .output()
        .expect("running fake-opencode");
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "fake-opencode: crashing on purpose\n"
    );
    let version = Command::new(fake_opencode_bin())
        .arg("--version")
        .output()
        .expect("running fake-opencode --version");
    assert_eq!(String::from_utf8_lossy(&version.stdout), "1.18.33-fake\n");
}

#[test]
fn harness_fake_opencode_child_mode_child_survives_group_signal_until_dispose() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pid_file = tmp.path().join("child.pid");
    let pid_file_str = pid_file.to_str().expect("utf-8 temp path");
    let port = free_port();
    let mut fake = spawn_fake(
        "child",
        port,
        "",
        &[("FAKE_OPENCODE_CHILD_PID_FILE", pid_file_str)],
    );
    // No password: the real server's warning comes first.
    let stdout = BufReader::new(fake.0.stdout.take().expect("piped stdout"));
    let (warning, stdout) = read_line_within(stdout, T, "the warning line");
    assert!(
        warning.starts_with("Warning: OPENCODE_SERVER_PASSWORD is not set"),
        "{warning}"
    );
    let (line, _stdout) = read_line_within(stdout, T, "the listening line");
    assert_eq!(
        line,
        format!("opencode server listening on http://127.0.0.1:{port}\n")
    );

    let mut child_pid = 0;
    wait_until("the child's pid file", T, || {
        child_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        child_pid > 0
    });
    assert!(pid_alive(child_pid));
    let pgid = |pid: i32| -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm end") + 2..];
        after.split_whitespace().nth(2).expect("pgrp").to_string()
    };
    assert_ne!(
        pgid(child_pid),
        pgid(fake.pid()),
        "the child must be in its own process group"
    );

    let dispose = http("POST", port, "/global/dispose", None, None, T).expect("dispose");
    assert_eq!(dispose.body, "true");
    wait_until("the child to die after dispose", T, || {
        !pid_alive(child_pid)
    });
}

/// The fake LLM drives the real OpenCode through a prompt with a bash tool call.
#[test]
fn harness_real_opencode_talks_to_fake_llm() {
    let opencode = opencode_bin();
    let llm = FakeLlm::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::create_dir_all(&p).expect("creating an instance dir");
        p
    };
    let (home, config, data, state, cache, tmpdir, work) = (
        dir("home"),
        dir("config"),
        dir("data"),
        dir("state"),
        dir("cache"),
        dir("tmp"),
        dir("work"),
    );
    seed_opencode_config_dir(&config);
    let port = free_port();
    let password = "pw-selftest";
    let mut server = KillOnDrop(
        Command::new(opencode)
            .args([
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .current_dir(&work)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", config)
            .env("XDG_DATA_HOME", data)
            .env("XDG_STATE_HOME", state)
            .env("XDG_CACHE_HOME", cache)
            .env("TMPDIR", tmpdir)
            .env("OPENCODE_SERVER_PASSWORD", password)
            .env("OPENCODE_CONFIG_CONTENT", llm.config_content("allow"))
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning opencode"),
    );
    let stdout = server.0.stdout.take().expect("piped stdout");
    let (line, _stdout) = read_line_within(
        BufReader::new(stdout),
        Duration::from_secs(30),
        "opencode's listening line",
    );
    assert_eq!(
        line,
        format!("opencode server listening on http://127.0.0.1:{port}\n")
    );

    let long = Duration::from_secs(30);
    let session =
        http("POST", port, "/session", Some(password), Some("{}"), long).expect("create session");
    assert_eq!(session.status, 200, "{}", session.body);
    let id = session.json()["id"]
        .as_str()
        .expect("session id")
        .to_string();
    let prompt = json!({"parts": [{"type": "text", "text": "RUN: echo hi"}]}).to_string();
    let reply = http(
        "POST",
        port,
        &format!("/session/{id}/message"),
        Some(password),
        Some(&prompt),
        long,
    )
    .expect("sync prompt");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = reply.json();
    assert_eq!(reply["info"]["finish"], "stop", "{reply}");
    let texts: Vec<&str> = reply["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert_eq!(texts, ["tool said: hi"], "{reply}");
    assert_eq!(reply["info"]["tokens"]["input"], 12, "{reply}");
    assert_eq!(reply["info"]["tokens"]["output"], 6, "{reply}");
    // The title request and two agent steps.
    assert!(llm.requests() >= 2, "only {} requests", llm.requests());

    server.signal("TERM");
    server.wait_timeout(T);
}
