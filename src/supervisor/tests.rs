//! The Supervisor's behaviour over time, with tokio's clock paused and a scripted [`Launcher`]:
//! crash and backoff, giving up, recycling a wedged Instance, parking and resuming, commands that
//! arrive during a transition. A scripted Launcher is the seam the actor was built around: it
//! records each step it is asked for (with the paused clock's time) and answers as the test says.
//! Real processes are the integration tests' business (`tests/it/supervisor.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Handle, spawn};
use crate::config::{Config, Paths};
use crate::env_cache::EnvCache;
use crate::error::{ErrorCode, OpError};
use crate::instance::confine::Isolation;
use crate::lifecycle::{Ending, Host, Instance, LaunchRequest, Launched, Launcher, Probed};
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::snapshot::{InstanceState, ProjectView, Snapshot};
use crate::state::store::Store;
use crate::state::{Desired, InstanceRecord, ProcIdentity, ProjectRecord};

/// A step the Supervisor asked for, and when (on the paused clock).
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Launch,
    End(Ending),
    Probe,
    CleanUp,
}

/// How the next launch goes.
enum LaunchScript {
    /// Ready after this long.
    Ready(Duration),
    /// Fails after this long.
    Fail(Duration),
}

#[derive(Default)]
struct Script {
    launches: VecDeque<LaunchScript>,
    /// Health answers, in order; once used up, every probe passes.
    probes: VecDeque<Probed>,
    /// The exit of each launched Instance, by launch id: sending crashes it.
    exits: Vec<(String, oneshot::Sender<String>)>,
}

struct Scripted {
    script: Mutex<Script>,
    steps: mpsc::UnboundedSender<(Step, Instant)>,
}

impl Scripted {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script")
    }
}

impl Launcher for Scripted {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, OpError> {
        let _ = self.steps.send((Step::Launch, Instant::now()));
        let how = self
            .script()
            .launches
            .pop_front()
            .unwrap_or(LaunchScript::Ready(Duration::ZERO));
        match how {
            LaunchScript::Ready(after) => tokio::time::sleep(after).await,
            LaunchScript::Fail(after) => {
                tokio::time::sleep(after).await;
                return Err(OpError::new(
                    ErrorCode::OpencodeUnhealthy,
                    "opencode exited before it was ready (exit code 1)",
                    "read the log",
                ));
            }
        }
        let (crash, exit) = oneshot::channel::<String>();
        self.script().exits.push((request.id.clone(), crash));
        Ok(Launched {
            instance: Instance {
                project: request.project,
                id: request.id,
                proc: ProcIdentity {
                    pid: 4242,
                    start_ticks: 1,
                },
                port: 4101,
                enforced: None,
                memory_limit: None,
            },
            started_at: crate::timestamp::now(),
            isolation: Isolation::None {
                reason: "scripted".into(),
            },
            provider: None,
            memory: None,
            exit: Box::pin(async move { exit.await.unwrap_or_else(|_| "ended".into()) }),
        })
    }

    async fn end(&self, _instance: Instance, why: Ending) {
        let _ = self.steps.send((Step::End(why), Instant::now()));
    }

    async fn probe(&self, _instance: Instance, _ask_provider: bool) -> Probed {
        let _ = self.steps.send((Step::Probe, Instant::now()));
        self.script().probes.pop_front().unwrap_or(Probed {
            ok: Some(true),
            ..Probed::default()
        })
    }

    async fn clean_up(&self, _instance: Instance) {
        let _ = self.steps.send((Step::CleanUp, Instant::now()));
    }

    async fn adopt(&self) -> Vec<Launched> {
        Vec::new()
    }
}

/// A Supervisor over one Project `p`, with the policy's defaults (1 s backoff doubling, a probe
/// every 10 s, recycle after 3 failed probes, idle after 2 hours).
struct Rig {
    handle: Handle,
    launcher: Arc<Scripted>,
    steps: mpsc::UnboundedReceiver<(Step, Instant)>,
    snapshot: watch::Receiver<Snapshot>,
    host: Arc<Host>,
    env: Arc<ProjectEnv>,
    _home: tempfile::TempDir,
    _cancel: tokio_util::sync::DropGuard,
}

const P: &str = "p";

fn project() -> ProjectName {
    ProjectName::parse(P).expect("name")
}

async fn rig(launches: Vec<LaunchScript>, probes: Vec<Probed>) -> Rig {
    let home = tempfile::tempdir().expect("home");
    let paths = Paths::new(home.path().to_owned());
    let config = Config::load(paths.clone()).expect("config");
    let (store, _) = Store::open(&paths).expect("store");
    store
        .update(|s| {
            s.projects.insert(
                P.into(),
                ProjectRecord {
                    project_name: P.into(),
                    sandbox_dir: paths.sandbox(&project()),
                    git_url: "git@example.com:o/r.git".into(),
                    ssh_key_path: None,
                    port: Some(4101),
                    desired: Desired::Stopped,
                    instance: InstanceRecord::Stopped { last_exit: None },
                    created_at: crate::timestamp::now(),
                    isolation: None,
                    agent: Default::default(),
                },
            );
        })
        .await
        .expect("record");
    let env_file = paths.env_file(&project());
    std::fs::create_dir_all(env_file.parent().expect("sandbox")).expect("sandbox");
    std::fs::write(
        &env_file,
        "GIT_URL=git@example.com:o/r.git\nSSH_KEY_PATH=/k\nOPENCODE_SERVER_PASSWORD=pw\nMCP_TOOL_BEARER_TOKEN=tok\n",
    )
    .expect(".env");
    let envs = Arc::new(EnvCache::default());
    envs.rebuild(&paths, &[P.into()]);
    let env = envs.get(P).expect("cached .env");
    let host = Arc::new(Host::new(config, store, envs));
    let (steps_tx, steps) = mpsc::unbounded_channel();
    let launcher = Arc::new(Scripted {
        script: Mutex::new(Script {
            launches: launches.into(),
            probes: probes.into(),
            exits: Vec::new(),
        }),
        steps: steps_tx,
    });
    let (publish, snapshot) = watch::channel(Snapshot::default());
    let cancel = CancellationToken::new();
    let handle = spawn(
        host.clone(),
        launcher.clone(),
        Arc::new(publish),
        cancel.clone(),
    )
    .await;
    Rig {
        handle,
        launcher,
        steps,
        snapshot,
        host,
        env,
        _home: home,
        _cancel: cancel.drop_guard(),
    }
}

impl Rig {
    /// The next step the Supervisor asks for other than a probe, and when.
    async fn next(&mut self) -> (Step, Instant) {
        let next = async {
            loop {
                let step = self.steps.recv().await.expect("a step");
                if step.0 != Step::Probe {
                    return step;
                }
            }
        };
        within_a_day(next, "the next step").await
    }

    async fn start(&self) -> Result<super::Started, OpError> {
        self.handle
            .start(project(), self.env.clone(), Default::default())
            .await
    }

    /// Crashes the Instance of the latest launch.
    fn crash(&self, how: &str) {
        let (_, crash) = self.launcher.script().exits.pop().expect("a live instance");
        let _ = crash.send(how.into());
    }

    /// Waits until the snapshot shows `p` in `state`.
    async fn until(&mut self, state: InstanceState) -> Snapshot {
        self.until_view(&format!("{state:?}"), |p| p.state == state)
            .await
    }

    /// Waits until `p`'s view satisfies `done`.
    async fn until_view(&mut self, what: &str, done: impl Fn(&ProjectView) -> bool) -> Snapshot {
        let wait = self
            .snapshot
            .wait_for(|s| s.projects.get(P).is_some_and(&done));
        within_a_day(wait, what).await.expect("snapshot").clone()
    }
}

/// `future`, or a failure naming `what` if nothing has happened after a day (of the paused
/// clock, which jumps there as soon as every task waits).
async fn within_a_day<T>(future: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(86_400), future)
        .await
        .unwrap_or_else(|_| panic!("waited a day for {what}"))
}

fn ok_probe() -> Probed {
    Probed {
        ok: Some(true),
        ..Probed::default()
    }
}

fn failed_probe() -> Probed {
    Probed {
        ok: Some(false),
        ..Probed::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_is_relaunched_after_a_doubling_backoff_and_the_fifth_gives_up() {
    let mut rig = rig(Vec::new(), Vec::new()).await;
    rig.start().await.expect("started");
    assert_eq!(rig.next().await.0, Step::Launch);
    for backoff in [1u64, 2, 4, 8] {
        rig.until(InstanceState::Running).await;
        let crashed_at = Instant::now();
        rig.crash("exit code 1");
        assert_eq!(rig.next().await.0, Step::CleanUp);
        let (step, at) = rig.next().await;
        assert_eq!(step, Step::Launch);
        let waited = at - crashed_at;
        let base = Duration::from_secs(backoff);
        // The backoff, plus at most a quarter of it in jitter.
        assert!(
            waited >= base && waited <= base + base / 4,
            "after crash with backoff {backoff} s the relaunch came after {waited:?}"
        );
    }
    rig.until(InstanceState::Running).await;
    rig.crash("killed by signal 9");
    assert_eq!(rig.next().await.0, Step::CleanUp);
    let failed = rig.until(InstanceState::Failed).await;
    let view = &failed.projects[P];
    let error = view.last_error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("5 failures within 10 minutes; last: exited (killed by signal 9)"),
        "{error}"
    );
    assert_eq!(view.restarts, 4);
    // Nothing more is launched, however long we wait.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(rig.steps.try_recv().is_err());
    let record = rig.host.store.snapshot().projects[P].instance.clone();
    assert!(
        matches!(&record, InstanceRecord::Failed { error, .. } if error.contains("5 failures")),
        "{record:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn three_failed_probes_recycle_the_instance_at_once() {
    let mut rig = rig(
        Vec::new(),
        vec![ok_probe(), failed_probe(), failed_probe(), failed_probe()],
    )
    .await;
    rig.start().await.expect("started");
    let (_, launched_at) = rig.next().await;
    // Probes at 0, 10, 20 and 30 s; the third failure (at 30 s) recycles.
    let (step, at) = rig.next().await;
    assert_eq!(
        step,
        Step::End(Ending::Recycle(
            "no answer to 3 health probes in a row".into()
        ))
    );
    assert_eq!(at - launched_at, Duration::from_secs(30));
    let (step, relaunched_at) = rig.next().await;
    assert_eq!(step, Step::Launch);
    assert_eq!(relaunched_at, at, "a recycle relaunches without a backoff");
    let running = rig.until(InstanceState::Running).await;
    let view = &running.projects[P];
    assert_eq!(view.restarts, 1);
    assert!(
        view.last_exit
            .as_deref()
            .is_some_and(|e| e.starts_with("recycled by the supervisor (no answer to 3")),
        "{view:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_wedged_instance_is_left_to_drain_until_the_deadline() {
    let busy_then_silent = |n| {
        std::iter::once(Probed {
            ok: Some(true),
            busy: vec!["ses_1".into()],
            ..Probed::default()
        })
        .chain(std::iter::repeat_n(failed_probe(), n))
        .collect()
    };
    let mut rig = rig(Vec::new(), busy_then_silent(100)).await;
    rig.start().await.expect("started");
    let (_, launched_at) = rig.next().await;
    let (step, at) = rig.next().await;
    assert!(matches!(step, Step::End(Ending::Recycle(_))), "{step:?}");
    // Wedged from the probe at 30 s on, but a session was busy: recycled at the drain deadline
    // (5 minutes later), at the first probe after it.
    let waited = at - launched_at;
    assert!(
        waited >= Duration::from_secs(30 + 300) && waited <= Duration::from_secs(30 + 310),
        "{waited:?}"
    );
    let view = rig
        .until_view("interrupted sessions", |p| {
            !p.interrupted_sessions.is_empty()
        })
        .await
        .projects[P]
        .clone();
    assert_eq!(view.interrupted_sessions, ["ses_1"]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_is_parked_and_a_gateway_call_launches_it_again() {
    let mut rig = rig(Vec::new(), Vec::new()).await;
    rig.start().await.expect("started");
    let (_, launched_at) = rig.next().await;
    let (step, parked_at) = rig.next().await;
    assert_eq!(step, Step::End(Ending::Park));
    let idle = parked_at - launched_at;
    assert!(
        idle >= Duration::from_secs(7200) && idle <= Duration::from_secs(7210),
        "{idle:?}"
    );
    rig.until(InstanceState::Idle).await;
    let call = rig.handle.call(project()).await.expect("resumed");
    assert_eq!(call.port, 4101);
    assert_eq!(rig.next().await.0, Step::Launch);
    let view = rig.until(InstanceState::Running).await.projects[P].clone();
    assert_eq!(view.desired, Desired::Running);
}

#[tokio::test(start_paused = true)]
async fn activity_keeps_an_instance_from_being_parked() {
    let mut rig = rig(Vec::new(), Vec::new()).await;
    rig.start().await.expect("started");
    let (_, launched_at) = rig.next().await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(rig.handle.call(project()).await.expect("a call"));
    }
    let (step, parked_at) = rig.next().await;
    assert_eq!(step, Step::End(Ending::Park));
    assert!(parked_at - launched_at >= Duration::from_secs(3 * 3600 + 7200));
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_launch_waits_for_it_then_ends_it() {
    let mut rig = rig(
        vec![LaunchScript::Ready(Duration::from_secs(5))],
        Vec::new(),
    )
    .await;
    let start = {
        let (handle, env) = (rig.handle.clone(), rig.env.clone());
        tokio::spawn(async move { handle.start(project(), env, Default::default()).await })
    };
    assert_eq!(rig.next().await.0, Step::Launch);
    let was_running = rig.handle.stop(project(), "stopped by user").await;
    assert!(was_running, "the stop ran after the launch finished");
    assert!(
        start.await.expect("task").is_ok(),
        "the start got its answer"
    );
    assert_eq!(
        rig.next().await.0,
        Step::End(Ending::Stop("stopped by user".into()))
    );
    let stopped = rig.until(InstanceState::Stopped).await.projects[P].clone();
    assert_eq!(stopped.desired, Desired::Stopped);
    assert_eq!(
        rig.host.store.snapshot().projects[P].desired,
        Desired::Stopped
    );
    // A stopped Project is not started again.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(rig.steps.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_reported_to_the_user_and_not_retried() {
    let mut rig = rig(vec![LaunchScript::Fail(Duration::from_secs(1))], Vec::new()).await;
    let error = rig.start().await.expect_err("the start fails");
    assert_eq!(error.code, ErrorCode::OpencodeUnhealthy);
    assert_eq!(rig.next().await.0, Step::Launch);
    let failed = rig.until(InstanceState::Failed).await.projects[P].clone();
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("exited before it was ready")),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(rig.steps.try_recv().is_err(), "no retry");
    // The user starting it again launches at once.
    rig.start().await.expect("started");
    assert_eq!(rig.next().await.0, Step::Launch);
}

#[tokio::test(start_paused = true)]
async fn concurrent_starts_share_one_launch() {
    let mut rig = rig(
        vec![LaunchScript::Ready(Duration::from_secs(2))],
        Vec::new(),
    )
    .await;
    let starts: Vec<_> = (0..10)
        .map(|_| {
            let (handle, env) = (rig.handle.clone(), rig.env.clone());
            tokio::spawn(async move { handle.start(project(), env, Default::default()).await })
        })
        .collect();
    let mut pids = Vec::new();
    for start in starts {
        pids.push(start.await.expect("task").expect("started").pid);
    }
    assert!(pids.iter().all(|pid| *pid == 4242));
    assert_eq!(rig.next().await.0, Step::Launch);
    let snapshot = rig.until(InstanceState::Running).await;
    assert_eq!(snapshot.projects[P].restarts, 0);
    // Only the one launch happened: the next step is the park, two hours later.
    assert_eq!(rig.next().await.0, Step::End(Ending::Park));
}
