//! The daemon's lifetime, with tokio's clock paused: it lingers for `linger` after its last
//! client while nothing runs, a client restarts that wait, and `stay` never ends it. Real
//! sockets, files and inotify; only the clock is virtual (it jumps while every task waits).

use std::time::Duration;

use tokio::time::Instant;

use super::{DaemonOptions, Exit, run};
use crate::config::{Config, Paths};
use crate::protocol::{Envelope, Frame, Request};

fn home(linger_secs: u64) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("home");
    std::fs::write(
        dir.path().join("opencode-manager.toml"),
        format!("linger_secs = {linger_secs}\ndashboard_port = 0\n"),
    )
    .expect("config");
    let config = Config::load(Paths::new(dir.path().to_owned())).expect("config");
    (dir, config)
}

#[tokio::test(start_paused = true)]
async fn an_idle_daemon_exits_after_lingering_and_each_client_restarts_the_wait() {
    let (dir, config) = home(600);
    let paths = config.paths.clone();
    let daemon = tokio::spawn(run(
        config,
        DaemonOptions::default(),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!daemon.is_finished(), "still lingering at 300 s of 600");
    let ping = Envelope {
        request: Request::Ping,
        caller: Default::default(),
    };
    let hello = super::client::request(&paths, &ping, |_| {})
        .await
        .expect("the daemon answers");
    assert!(matches!(hello, Frame::Hello { .. }), "{hello:?}");
    let answered = Instant::now();
    let exit = daemon.await.expect("task").expect("daemon");
    assert_eq!(exit, Exit::Lingered);
    let lingered = answered.elapsed();
    assert!(
        lingered >= Duration::from_secs(600) && lingered < Duration::from_secs(601),
        "the daemon exited {lingered:?} after its last client"
    );
    assert!(!paths.socket().exists(), "the socket is removed");
    drop(dir);
}

#[tokio::test(start_paused = true)]
async fn a_daemon_told_to_stay_never_lingers() {
    let (_dir, config) = home(1);
    let daemon = run(config, DaemonOptions { stay: true }, std::future::pending());
    let ten_days = Duration::from_secs(10 * 86_400);
    assert!(
        tokio::time::timeout(ten_days, daemon).await.is_err(),
        "a daemon with --stay ended"
    );
}
