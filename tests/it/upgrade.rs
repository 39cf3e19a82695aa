//! The version handshake: every client greets the daemon with its version first. A daemon of an
//! older version is replaced, and the new one adopts its Instances (same process, same
//! `started_at`); a newer daemon is left alone and the client says so (`version_mismatch`). A
//! `test-support` build plays another version through `OCM_TEST_VERSION`.

use crate::faults::file_repo;
use crate::home::TestHome;
use crate::support::pid_alive;

const ALLOW_FILE: &str = "allow_file = true\n";

#[test]
fn an_older_daemon_is_replaced_and_its_instances_are_adopted() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let mut home = TestHome::fake("ok", ALLOW_FILE);
    home.env("OCM_TEST_VERSION", "0.0.1");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let instance = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let old_daemon = home.daemon_pid().expect("the old daemon runs");
    let before = home.run(&["status", "p"]);
    assert_eq!(before.json["opencode"]["status"], "running", "{before:?}");

    // The same home, used by this build's own version.
    home.unset_env("OCM_TEST_VERSION");
    let after = home.run(&["status", "p"]);
    assert_eq!(after.json["opencode"]["status"], "running", "{after:?}");
    let new_daemon = home.daemon_pid().expect("a daemon runs");
    assert_ne!(new_daemon, old_daemon, "the older daemon was replaced");
    assert!(!pid_alive(old_daemon), "the older daemon exited");
    assert_eq!(after.json["opencode_pid"], instance, "{after:?}");
    assert!(pid_alive(instance), "the instance kept running");
    assert_eq!(
        after.json["started_at"], before.json["started_at"],
        "adopted, not restarted"
    );
    let log = home.manager_log();
    assert!(
        log.contains("version=\"0.0.1\"")
            && log.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "both daemons logged their versions:\n{log}"
    );
}

#[test]
fn a_newer_daemon_is_left_alone_and_the_client_says_so() {
    let repos = tempfile::tempdir().expect("tempdir");
    let url = file_repo(repos.path(), "r");
    let mut home = TestHome::fake("ok", ALLOW_FILE);
    home.env("OCM_TEST_VERSION", "9.9.9");
    let started = home.run_dev(&["start", "p", "--git-url", &url]);
    assert_eq!(started.status(), "success", "{started:?}");
    let instance = started.json["opencode_pid"].as_i64().expect("pid") as i32;
    let daemon = home.daemon_pid().expect("the daemon runs");

    home.unset_env("OCM_TEST_VERSION");
    let refused = home.run(&["status", "p"]);
    assert_eq!(refused.status(), "error", "{refused:?}");
    assert_eq!(refused.error(), "version_mismatch", "{refused:?}");
    assert_eq!(refused.code, 1, "{refused:?}");
    let message = refused.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("9.9.9") && message.contains(env!("CARGO_PKG_VERSION")),
        "{message}"
    );
    assert!(refused.json["hint"].as_str().is_some_and(|h| !h.is_empty()));
    assert_eq!(
        home.daemon_pid(),
        Some(daemon),
        "the newer daemon keeps running"
    );
    assert!(pid_alive(daemon) && pid_alive(instance));

    // The newer client still reaches it.
    home.env("OCM_TEST_VERSION", "9.9.9");
    assert_eq!(
        home.run(&["status", "p"]).json["opencode"]["status"],
        "running"
    );
}
