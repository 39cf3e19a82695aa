//! Bad input is refused with a code and a hint before anything is created; odd but valid `.env`
//! files work; the original's state files load.

use crate::faults::file_repo;
use crate::home::TestHome;
use serde_json::json;

fn nothing_created(home: &TestHome) {
    let sandboxes: Vec<_> = std::fs::read_dir(home.path().join("opencode-sandboxes"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(sandboxes.is_empty(), "created {sandboxes:?}");
    let keys: Vec<_> = std::fs::read_dir(home.path().join("opencode-keys"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(keys.is_empty(), "created {keys:?}");
}

#[test]
fn bad_project_names_and_git_urls_are_refused_before_anything_is_created() {
    let home = TestHome::fake("ok", "");
    let long = "x".repeat(65);
    for name in [
        "../evil",
        "a/b",
        "has space",
        "-rf",
        long.as_str(),
        "caf\u{e9}",
        "..",
        "",
    ] {
        let answer = home.run_dev(&["start", "--git-url", "git@example.com:o/r.git", "--", name]);
        assert_eq!(
            (answer.error(), answer.code),
            ("invalid_project_name", 2),
            "{name:?}: {answer:?}"
        );
        assert!(answer.json["hint"].is_string());
    }
    for url in [
        "-oProxyCommand=touch /tmp/pwned",
        "--upload-pack=touch /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned",
        "git@example.com:o/r.git;touch /tmp/pwned",
        "git@example.com:$(touch /tmp/pwned)",
        "git@example.com:o/`id`.git",
        "file:///etc",
        "https://example.com/o/r.git",
    ] {
        let answer = home.run_dev(&["start", "ok-name", &format!("--git-url={url}")]);
        assert_eq!(
            (answer.error(), answer.code),
            ("invalid_git_url", 2),
            "{url:?}: {answer:?}"
        );
    }
    nothing_created(&home);
    assert!(
        home.run(&["list"]).json["projects"]
            .as_array()
            .expect("projects")
            .is_empty()
    );
    let insecure = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::set_permissions(
        insecure.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let answer = home.run_dev(&[
        "start",
        "p",
        "--git-url",
        "git@example.com:o/r.git",
        "--ssh-key",
        insecure.path().to_str().expect("utf8"),
    ]);
    assert_eq!(
        (answer.error(), answer.code),
        ("invalid_ssh_key", 2),
        "{answer:?}"
    );
    assert!(
        answer.json["hint"]
            .as_str()
            .expect("hint")
            .contains("chmod 600")
    );
    nothing_created(&home);
}

#[test]
fn env_files_with_quotes_dollars_and_crlf_work_and_broken_ones_are_named() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake("ok", "allow_file = true");
    let sandbox = home.sandbox("p");
    std::fs::create_dir_all(&sandbox).expect("mkdir");
    let key = home.path().join("opencode-keys/p-deploy");
    // Missing keys: named, exit 2, nothing overwritten.
    std::fs::write(home.env_file("p"), format!("GIT_URL={url}\r\n")).expect("write");
    let answer = home.run(&["start", "p", "--git-url", &url]);
    assert_eq!(
        (answer.error(), answer.code),
        ("invalid_config", 2),
        "{answer:?}"
    );
    assert!(
        answer.json["message"]
            .as_str()
            .expect("message")
            .contains("SSH_KEY_PATH")
    );
    // Quotes, `$`, `#` and CRLF line ends are read literally.
    let password = "pa$$ 'w#rd";
    let text = format!(
        "# comment\r\nexport GIT_URL={url}\r\nSSH_KEY_PATH=\"{}\"\r\nOPENCODE_SERVER_PASSWORD=\"pa\\$\\$ 'w#rd\"\r\nMCP_TOOL_BEARER_TOKEN='tok$HOME' # inline comment\r\n",
        key.display()
    );
    std::fs::write(home.env_file("p"), text).expect("write");
    let answer = home.run(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.status(), "success", "{answer:?}");
    let pid = answer.json["opencode_pid"].as_i64().expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let expected = format!("OPENCODE_SERVER_PASSWORD={password}");
    assert!(
        environ.split(|b| *b == 0).any(|e| e == expected.as_bytes()),
        "the password reached the instance unchanged"
    );
}

#[test]
fn the_python_originals_state_file_is_backed_up_and_migrated() {
    let home = TestHome::fake("ok", "");
    let original = include_str!("../fixtures/python-v1.1-opencode-state.json");
    std::fs::write(home.path().join("opencode-state.json"), original).expect("write");
    let list = home.run(&["list"]);
    assert_eq!(list.status(), "success", "{list:?}");
    assert!(
        !list.json["projects"]
            .as_array()
            .expect("projects")
            .is_empty()
    );
    assert!(
        list.json["warning"]
            .as_str()
            .expect("warning")
            .contains("v1.1"),
        "{list:?}"
    );
    let backup =
        std::fs::read_to_string(home.path().join("opencode-state.json.backup")).expect("backup");
    assert_eq!(backup, original);
    assert_eq!(home.state()["version"], 2);
}

#[test]
fn the_human_form_prints_data_on_stdout_and_errors_on_stderr_with_exit_codes() {
    let home = TestHome::fake("ok", "");
    let missing = home.run_human(&["status", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("Status: not_found"));
    let invalid = home.run_human(&["start", "a/b", "--git-url", "git@h:o/r.git"]);
    assert_eq!(invalid.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains("error [invalid_project_name]") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(invalid.stdout.is_empty());
    let list = home.run_human(&["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).starts_with("PROJECT"));
}

#[test]
fn without_opencode_or_npm_the_error_names_the_command_to_run() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let mut home = TestHome::fake("ok", "allow_file = true");
    // A PATH with git only: no opencode, no npm.
    let bin = repos.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("which")
            .stdout,
    )
    .expect("utf8");
    std::os::unix::fs::symlink(git.trim(), bin.join("git")).expect("symlink");
    home.env("PATH", bin.to_str().expect("utf8"));
    home.env("OPENCODE_BIN", "");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(
        (answer.error(), answer.code),
        ("opencode_not_found", 1),
        "{answer:?}"
    );
    let hint = answer.json["hint"].as_str().expect("hint");
    let runtime = home.path().join("opencode-runtime");
    assert!(
        hint.contains(&format!(
            "npm install --prefix {} opencode-ai@1.18.33",
            runtime.display()
        )),
        "{hint}"
    );
}

#[test]
fn a_missing_opencode_is_installed_with_npm_into_the_home_on_first_need() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let mut home = TestHome::fake("ok", "allow_file = true");
    let path = "/usr/local/bin:/usr/bin:/bin";
    let which = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("PATH={path} command -v {tool}")])
            .output()
            .expect("which")
            .status
            .success()
    };
    assert!(
        which("npm") && which("node"),
        "npm and node must be installed (scripts/test installs them)"
    );
    assert!(
        !which("opencode"),
        "this test needs a PATH without opencode"
    );
    home.env("PATH", path);
    home.env("OPENCODE_BIN", "");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.status(), "success", "{answer:?}");
    assert!(
        answer.stderr.contains("installing opencode-ai@1.18.33"),
        "it says so: {}",
        answer.stderr
    );
    let managed = home
        .path()
        .join("opencode-runtime/node_modules/.bin/opencode");
    assert!(managed.exists());
    let pid = answer.json["opencode_pid"].as_i64().expect("pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(
        exe.starts_with(home.path().join("opencode-runtime")),
        "{}",
        exe.display()
    );
}

#[test]
fn the_originals_per_project_tools_are_stopped_only_when_provably_theirs() {
    let home = TestHome::fake("ok", "");
    let spawn = |args: &[&str]| {
        crate::support::KillOnDrop(
            std::process::Command::new("python3")
                .args(["-c", "import time; time.sleep(300)"])
                .args(args)
                .spawn()
                .expect("python3"),
        )
    };
    let tool = spawn(&[
        "node",
        "dist/index-http.js",
        "opencode-mcp-tool",
        "--port",
        "5100",
    ]);
    let unrelated = spawn(&["something-else", "--port", "5101"]);
    let lookalike = spawn(&["opencode-mcp-tool", "--port", "51000"]);
    let process = |pid: i32, port: u16| json!({"pid": pid, "port": port, "status": "running", "started_at": null, "last_error": null});
    let project = |name: &str, pid: i32, port: u16| {
        json!({"project_name": name, "sandbox_dir": format!("/nonexistent/{name}"), "git_url": "git@h:o/r.git", "ssh_key_path": null,
               "opencode": {"pid": null, "port": 4100, "status": "stopped", "started_at": null, "last_error": null},
               "mcp_tool": process(pid, port), "created_at": "2026-01-28T10:30:00.123456", "last_health_check": null})
    };
    let v1_0 = json!({"projects": {
        "a": project("a", tool.pid(), 5100),
        "b": project("b", unrelated.pid(), 5101),
        "c": project("c", lookalike.pid(), 5100),
    }});
    std::fs::write(home.path().join("opencode-state.json"), v1_0.to_string()).expect("write");
    let list = home.run(&["list"]);
    assert_eq!(list.status(), "success", "{list:?}");
    crate::support::wait_until(
        "the v1.0 tool to stop",
        std::time::Duration::from_secs(10),
        || !crate::support::pid_alive(tool.pid()),
    );
    assert!(crate::support::pid_alive(unrelated.pid()), "not that tool");
    assert!(
        crate::support::pid_alive(lookalike.pid()),
        "that tool, but on another port"
    );
    assert!(
        home.state().get("legacy_mcp_tools").is_none(),
        "handled once"
    );
}

#[test]
fn doctor_names_the_limit_mechanism_on_a_line_scripts_can_read() {
    let home = TestHome::real();
    let answer = home.run(&["doctor"]);
    assert_eq!(answer.status(), "success", "{answer:?}");
    let items: Vec<&str> = answer.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i.as_str())
        .collect();
    let limits = items
        .iter()
        .find(|l| l.starts_with("limits: "))
        .expect("a limits line");
    assert!(
        ["limits: systemd (", "limits: cgroup (", "limits: rlimit ("]
            .iter()
            .any(|p| limits.starts_with(p)),
        "{limits}"
    );
    assert!(
        items
            .iter()
            .any(|l| l.starts_with("opencode: ") && l.contains("1.18.33")),
        "{items:?}"
    );
    assert!(
        items.iter().any(|l| l.starts_with("git: git version")),
        "{items:?}"
    );
}
