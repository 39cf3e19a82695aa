//! Faults the real OpenCode will not produce on demand, played by the fake OpenCode: crash, port
//! conflict, hang, slow start; plus foreign processes that must never be touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::home::TestHome;
use crate::support::{KillOnDrop, fake_opencode_bin, pid_alive, wait_until};

/// A local bare repository with one commit, reachable as `file://` (enabled per home with allow_file).
pub fn file_repo(dir: &Path, name: &str) -> String {
    let bare = dir.join(format!("{name}.git"));
    let work = dir.join(format!("{name}-work"));
    let git = |args: &[&str], cwd: &Path| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(cwd)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&["init", "-q", "--bare", bare.to_str().expect("utf8")], dir);
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README.md"), "hello\n").expect("write");
    git(&["add", "."], &work);
    git(&["commit", "-qm", "init"], &work);
    git(
        &["push", "-q", bare.to_str().expect("utf8"), "HEAD:main"],
        &work,
    );
    format!("file://{}", bare.display())
}

fn fake_home(mode: &str, extra: &str) -> (TestHome, tempfile::TempDir, String) {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let home = TestHome::fake(
        mode,
        &format!("allow_file = true\nready_timeout_secs = 3\n{extra}"),
    );
    (home, repos, url)
}

#[test]
fn opencode_exiting_at_once_is_reported_with_exit_status_and_log_tail() {
    let (home, _repos, url) = fake_home("crash", "");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(
        (answer.error(), answer.code),
        ("opencode_start_failed", 1),
        "{answer:?}"
    );
    let message = answer.json["message"].as_str().expect("message");
    assert!(
        message.contains("exit code 3") && message.contains("crashing on purpose"),
        "{message}"
    );
    let status = home.run(&["status", "p"]);
    assert_eq!(status.json["opencode"]["status"], "failed");
    assert!(
        status.json["last_error"]
            .as_str()
            .expect("last_error")
            .contains("exit code 3")
    );
}

#[test]
fn a_serve_error_is_reported_as_port_unavailable() {
    let (home, _repos, url) = fake_home("port-conflict", "");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.error(), "port_unavailable", "{answer:?}");
}

#[test]
fn a_port_held_by_a_foreign_process_is_skipped_and_never_killed() {
    let (home, _repos, url) = fake_home("ok", "");
    let range = home.port_min..=home.port_max;
    let preferred = opencode_manager::instance::ports::candidates("p", None, &range, &[])[0];
    // A foreign server (not started by the manager) holds the project's preferred port.
    let foreign = KillOnDrop(
        Command::new(fake_opencode_bin())
            .args([
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                &preferred.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("foreign server"),
    );
    wait_until(
        "the foreign server to listen",
        Duration::from_secs(10),
        || !opencode_manager::instance::ports::is_free(preferred),
    );
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    assert_ne!(
        started.json["opencode_port"].as_u64(),
        Some(u64::from(preferred))
    );
    home.run(&["stop", "--all"]);
    assert!(
        pid_alive(foreign.pid()),
        "the foreign holder was not touched"
    );

    // An explicit OPENCODE_PORT that is taken is an error, not a reason to kill.
    let env = home.env_file("p");
    let text = std::fs::read_to_string(&env).expect("read");
    std::fs::write(&env, format!("{text}OPENCODE_PORT={preferred}\n")).expect("write");
    let refused = home.run(&["restart", "p"]);
    assert_eq!(refused.error(), "port_unavailable", "{refused:?}");
    assert!(pid_alive(foreign.pid()));
}

#[test]
fn a_server_that_never_answers_is_reported_unhealthy_and_stopped() {
    let (home, _repos, url) = fake_home("hang", "");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.error(), "opencode_unhealthy", "{answer:?}");
    assert!(
        home.marked_processes().is_empty(),
        "the hung server was stopped"
    );
}

#[test]
fn a_stale_pid_that_now_belongs_to_another_process_is_never_signalled() {
    let home = TestHome::fake("ok", "");
    let foreign = KillOnDrop(Command::new("sleep").arg("300").spawn().expect("sleep"));
    let state = serde_json::json!({
        "version": 2,
        "projects": {"ghost": {
            "project_name": "ghost", "sandbox_dir": home.sandbox("ghost"), "git_url": "git@h:o/r.git",
            "port": home.port_min, "desired": "running",
            "instance": {"status": "running", "proc": {"pid": foreign.pid(), "start_ticks": 1}, "launch_id": "old", "started_at": "2026-01-01T00:00:00Z"},
            "created_at": "2026-01-01T00:00:00Z"
        }}
    });
    std::fs::create_dir_all(home.sandbox("ghost")).expect("mkdir");
    std::fs::write(
        home.sandbox("ghost").join("opencode.pid"),
        foreign.pid().to_string(),
    )
    .expect("pid file");
    std::fs::write(home.path().join("opencode-state.json"), state.to_string()).expect("state");
    let status = home.run(&["status", "ghost"]);
    assert_eq!(status.json["opencode"]["running"], false, "{status:?}");
    let stopped = home.run(&["stop", "ghost"]);
    assert_eq!(stopped.status(), "success");
    assert!(pid_alive(foreign.pid()), "a recycled pid is not ours");
}

#[test]
fn ten_concurrent_starts_make_one_instance_and_get_one_answer() {
    let (home, _repos, url) = fake_home("slow", "");
    let toml = home.path().join("opencode-manager.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(
        &toml,
        text.replace("ready_timeout_secs = 3", "ready_timeout_secs = 20")
            + "FAKE_OPENCODE_DELAY_MS = \"1500\"\n",
    )
    .expect("toml");
    let children: Vec<_> = (0..10)
        .map(|_| home.spawn(&["start", "p", "--git-url", &url], Some("development")))
        .collect();
    let answers: Vec<serde_json::Value> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait");
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    for answer in &answers {
        assert_eq!(answer, &answers[0], "all callers get the same answer");
    }
    assert_eq!(answers[0]["status"], "success", "{:?}", answers[0]);
    let pids: Vec<i32> = home.marked_processes();
    assert_eq!(pids.len(), 1, "exactly one instance: {pids:?}");
}

#[test]
fn a_daemon_killed_in_the_middle_of_a_start_leaves_no_orphan() {
    let (home, _repos, url) = fake_home("slow", "");
    let toml = home.path().join("opencode-manager.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(&toml, text + "FAKE_OPENCODE_DELAY_MS = \"30000\"\n").expect("toml");
    let mut client = home.spawn(&["start", "p", "--git-url", &url], Some("development"));
    // Killed once the spawned instance is recorded as starting (before that, a new daemon
    // sweeps it by its marker; see a_new_daemon_sweeps_processes_of_unrecorded_launches).
    wait_until(
        "the instance to be recorded as starting",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(home.path().join("opencode-state.json"))
                .is_ok_and(|s| s.contains("\"starting\""))
        },
    );
    assert_eq!(home.marked_processes().len(), 1);
    let daemon = home.daemon_pid().expect("daemon");
    Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .expect("kill");
    let out = client.wait().expect("client");
    assert_eq!(out.code(), Some(1), "the client reports the lost daemon");
    // The next daemon finds a process that never became ready: it stops it and says so.
    let status = home.run(&["status", "p"]);
    assert!(home.marked_processes().is_empty(), "no orphan is left");
    assert_eq!(status.json["opencode"]["status"], "failed", "{status:?}");
}

/// A `git` that, while `flag` exists, clones and then waits for the flag to go (a clone still in
/// progress); its pid is written to `<flag>.pid`.
pub(crate) fn slow_clone_git(dir: &Path, flag: &Path) -> PathBuf {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("which git")
            .stdout,
    )
    .expect("utf8");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" clone \"*) if [ -e {flag} ]; then {real} \"$@\" || exit $?; echo $$ > {flag}.pid; while [ -e {flag} ]; do sleep 0.05; done; exit 0; fi;; esac\nexec {real} \"$@\"\n",
        flag = flag.display(),
        real = real.trim()
    );
    std::fs::write(bin.join("git"), script).expect("write");
    Command::new("chmod")
        .args(["+x", bin.join("git").to_str().expect("utf8")])
        .status()
        .expect("chmod");
    bin
}

fn partial_clones(home: &TestHome) -> usize {
    std::fs::read_dir(home.sandbox("p"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(".repo-clone-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_clone_killed_midway_leaves_no_half_repository() {
    let (mut home, repos, url) = fake_home("ok", "");
    let flag = repos.path().join("slow");
    std::fs::write(&flag, "").expect("flag");
    let bin = slow_clone_git(repos.path(), &flag);
    home.env(
        "PATH",
        &format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let pid_file = PathBuf::from(format!("{}.pid", flag.display()));

    // The clone process dies: the start fails cleanly.
    let client = home.spawn(&["start", "p", "--git-url", &url], Some("development"));
    wait_until("the clone to be under way", Duration::from_secs(20), || {
        pid_file.exists()
    });
    let clone_pid = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .to_owned();
    assert_eq!(partial_clones(&home), 1);
    Command::new("kill")
        .args(["-9", &clone_pid])
        .status()
        .expect("kill");
    let out = client.wait_with_output().expect("client");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["error"], "clone_failed", "{answer}");
    assert_eq!(partial_clones(&home), 0);
    assert!(!home.sandbox("p").join("repo").exists());

    // The daemon dies during the clone: the leftover is removed by the next start.
    std::fs::remove_file(&pid_file).expect("rm");
    let mut client = home.spawn(&["start", "p", "--git-url", &url], Some("development"));
    wait_until("the clone to be under way", Duration::from_secs(20), || {
        pid_file.exists()
    });
    let daemon = home.daemon_pid().expect("daemon");
    Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .expect("kill daemon");
    let clone_pid = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .to_owned();
    Command::new("kill")
        .args(["-9", &clone_pid])
        .status()
        .expect("kill clone");
    let _ = client.wait();
    assert_eq!(
        partial_clones(&home),
        1,
        "a killed daemon leaves its temporary clone"
    );
    std::fs::remove_file(&flag).expect("rm flag");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.status(), "success", "{answer:?}");
    assert_eq!(partial_clones(&home), 0);
    assert!(home.sandbox("p").join("repo/README.md").exists());
}

#[test]
fn an_instance_with_no_usable_provider_is_reported_at_start() {
    let (home, _repos, url) = fake_home("ok", "");
    let toml = home.path().join("opencode-manager.toml");
    let text = std::fs::read_to_string(&toml).expect("toml");
    std::fs::write(&toml, text + "FAKE_OPENCODE_NO_PROVIDERS = \"1\"\n").expect("toml");
    let answer = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(answer.status(), "success", "{answer:?}");
    assert_eq!(answer.json["provider"]["providers"], serde_json::json!([]));
    assert!(
        answer.json["warning"]
            .as_str()
            .expect("warning")
            .contains("no model provider"),
        "{answer:?}"
    );
}

#[test]
fn a_new_daemon_sweeps_processes_of_unrecorded_launches() {
    let (home, _repos, url) = fake_home("ok", "");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let pid = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    // A process of this home and project from a launch the state never recorded (a daemon that
    // died between spawn and write), and a look-alike from another home.
    let paths = opencode_manager::config::Paths::new(home.path().to_owned());
    let project = opencode_manager::project::ProjectName::parse("p").expect("name");
    let stray = KillOnDrop(
        Command::new("sleep")
            .arg("300")
            .env(
                "OCM_INSTANCE",
                opencode_manager::sandbox::marker(&paths, &project, "unrecorded"),
            )
            .spawn()
            .expect("stray"),
    );
    let other_paths = opencode_manager::config::Paths::new(home.path().join("elsewhere"));
    let foreign = KillOnDrop(
        Command::new("sleep")
            .arg("300")
            .env(
                "OCM_INSTANCE",
                opencode_manager::sandbox::marker(&other_paths, &project, "x"),
            )
            .spawn()
            .expect("foreign"),
    );
    let daemon = home.daemon_pid().expect("daemon");
    Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .expect("kill");
    wait_until("the daemon to die", Duration::from_secs(5), || {
        !pid_alive(daemon)
    });
    let list = home.run(&["list"]);
    assert_eq!(
        list.json["projects"][0]["opencode_pid"].as_i64(),
        Some(i64::from(pid)),
        "{list:?}"
    );
    wait_until("the stray to be reaped", Duration::from_secs(5), || {
        !pid_alive(stray.pid())
    });
    assert!(
        pid_alive(pid),
        "the recorded instance was adopted, not killed"
    );
    assert!(
        pid_alive(foreign.pid()),
        "another home's process is not ours"
    );
}
