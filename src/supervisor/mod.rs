//! The Supervisor: keeps wanted Projects running (restart with backoff, give up visibly), recycles
//! wedged servers, and parks idle ones until the gateway needs them.
//!
//! One actor task owns the per-Project supervision state. Each second it looks at the recorded
//! state and living processes, asks the pure `policy` what to do, and hands slow work (probes,
//! starts, stops) to spawned tasks that report back over a channel, so the actor never blocks.
//! It acts only on Projects the user wants running, under the Project's lock, and never undoes a
//! user's stop. Other code reads its view through [`Shared`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::instance::api::InstanceApi;
use crate::instance::process;
use crate::ops::Manager;
use crate::policy::{self, Action, Observation, Phase, Policy, Supervised};
use crate::project::ProjectName;
use crate::state::{Desired, InstanceRecord, ProjectRecord};

/// What the rest of the program may read about supervision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// starting, running, unhealthy, backoff, idle or failed.
    pub state: &'static str,
    pub restarts: u32,
}

/// Whether the supervisor's state word should replace the record's in a reply. The record already
/// says starting, running, idle or failed, and is current; the supervisor adds what the record
/// cannot say (unhealthy, backoff), shown only while it agrees with the process, since the actor
/// looks once a second.
pub fn view_agrees(state: &str, alive: bool) -> bool {
    match state {
        "unhealthy" => alive,
        "backoff" => !alive,
        _ => false,
    }
}

/// Shared between the actor (writer) and everyone else (readers).
#[derive(Debug, Default)]
pub struct Shared {
    // std mutexes: held only to copy or replace an entry, never across an `.await`.
    views: Mutex<HashMap<String, View>>,
    /// Last gateway call per Project, an activity signal for idle parking.
    touched: Mutex<HashMap<String, Instant>>,
    /// Sessions the last good probe found busy, per Project: what a crash would interrupt.
    busy: Mutex<HashMap<String, Vec<String>>>,
}

impl Shared {
    pub fn view(&self, project: &str) -> Option<View> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project)
            .cloned()
    }

    /// Records activity on a Project (a gateway call for it).
    pub fn touch(&self, project: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project.to_owned(), Instant::now());
    }

    fn take_touch(&self, project: &str) -> bool {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project)
            .is_some()
    }

    fn set_busy(&self, project: &str, sessions: Vec<String>) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project.to_owned(), sessions);
    }

    fn take_busy(&self, project: &str) -> Vec<String> {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project)
            .unwrap_or_default()
    }

    fn publish(&self, project: &str, view: Option<View>) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        match view {
            Some(view) => views.insert(project.to_owned(), view),
            None => views.remove(project),
        };
    }
}

/// The policy for one Project: the daemon-wide one, with the Project's own idle timeout.
fn policy_for(manager: &Manager, project: &ProjectName) -> Policy {
    let mut policy = manager.config().supervision.clone();
    if let Ok(env) = crate::project_env::load(&manager.config().paths.env_file(project))
        && let Some(idle) = env.idle_timeout
    {
        policy.idle_timeout = idle;
    }
    policy
}

struct Tracked {
    supervised: Supervised,
    /// The launch last seen running, to notice starts made elsewhere (the user, on demand).
    launch_id: Option<String>,
    /// A spawned task (probe, start, recycle, park) is under way.
    busy: bool,
}

enum Event {
    Observed(String, Observation),
    Done(String),
}

/// Runs the actor until `shutdown` fires.
pub async fn run(manager: Manager, shutdown: CancellationToken) {
    let (sender, mut events) = mpsc::unbounded_channel::<Event>();
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let state = manager.store().snapshot();
                tracked.retain(|name, _| state.projects.get(name).is_some_and(|r| r.desired == Desired::Running));
                for (name, record) in &state.projects {
                    if record.desired != Desired::Running {
                        manager.supervision().publish(name, None);
                        continue;
                    }
                    let Ok(project) = ProjectName::parse(name) else { continue };
                    observe(&manager, &sender, &mut tracked, &project, record);
                }
            }
            Some(event) = events.recv() => match event {
                Event::Done(name) => {
                    if let Some(t) = tracked.get_mut(&name) {
                        t.busy = false;
                    }
                }
                Event::Observed(name, observation) => {
                    let Ok(project) = ProjectName::parse(&name) else { continue };
                    if let Some(t) = tracked.get_mut(&name) {
                        t.busy = false;
                        apply(&manager, &sender, t, &project, observation);
                    }
                }
            },
            () = shutdown.cancelled() => break,
        }
    }
}

fn initial(record: &ProjectRecord, now: Instant) -> Supervised {
    match &record.instance {
        InstanceRecord::Running { proc, .. } if process::is_alive(*proc) => {
            Supervised::running(now)
        }
        InstanceRecord::Idle { .. } => Supervised {
            phase: Phase::Idle { since: now },
            ..Supervised::starting()
        },
        InstanceRecord::Failed { error, .. } => Supervised {
            phase: Phase::Failed {
                reason: error.clone(),
            },
            ..Supervised::starting()
        },
        _ => Supervised::starting(),
    }
}

fn observe(
    manager: &Manager,
    sender: &mpsc::UnboundedSender<Event>,
    tracked: &mut HashMap<String, Tracked>,
    project: &ProjectName,
    record: &ProjectRecord,
) {
    let now = Instant::now();
    let entry = tracked
        .entry(project.to_string())
        .or_insert_with(|| Tracked {
            supervised: initial(record, now),
            launch_id: record.instance.proc().map(|(_, id)| id.to_owned()),
            busy: false,
        });
    if entry.busy {
        return;
    }
    let alive = record
        .instance
        .proc()
        .filter(|(p, _)| process::is_alive(*p));
    // Running and alive: a start finished (ours, the user's, or one on demand).
    if let (InstanceRecord::Running { launch_id, .. }, Some(_)) = (&record.instance, alive) {
        let new_launch = entry.launch_id.as_deref() != Some(launch_id.as_str());
        entry.launch_id = Some(launch_id.clone());
        match entry.supervised.phase {
            Phase::Running { .. } => {}
            // The user started it again after the supervisor gave up: supervise it afresh.
            Phase::Failed { .. } if new_launch => entry.supervised = Supervised::running(now),
            Phase::Failed { .. } => return,
            _ => {
                apply(manager, sender, entry, project, Observation::Ready);
                return;
            }
        }
    }
    // A start that failed elsewhere (the user's, or one on demand): show it, don't retry it.
    if let InstanceRecord::Failed { error, .. } = &record.instance
        && !matches!(
            entry.supervised.phase,
            Phase::Failed { .. } | Phase::Backoff { .. }
        )
    {
        entry.supervised.phase = Phase::Failed {
            reason: error.clone(),
        };
        manager.supervision().publish(
            project.as_str(),
            Some(View {
                state: entry.supervised.state_word(),
                restarts: entry.supervised.restarts,
            }),
        );
        return;
    }
    let observation = match (&record.instance, alive) {
        (InstanceRecord::Running { .. }, Some(_)) => {
            let port_busy = record.port.is_some_and(established_connections);
            if manager.supervision().take_touch(project.as_str()) || port_busy {
                apply(manager, sender, entry, project, Observation::Activity);
            }
            // The RSS watchdog, where no cgroup holds the Instance to its memory limit.
            let over = manager.watchdog_limit(project.as_str()).and_then(|limit| {
                let rss = alive.map_or(0, |(p, _)| crate::instance::enforce::tree_rss(p.pid));
                (rss > limit).then_some(Observation::OverMemory { rss, limit })
            });
            over.unwrap_or(Observation::Tick)
        }
        // Gone without a stop: the exit watcher (or the liveness check) recorded how.
        (
            InstanceRecord::Running { .. }
            | InstanceRecord::Starting { .. }
            | InstanceRecord::Stopped { .. },
            None,
        ) if matches!(entry.supervised.phase, Phase::Running { .. })
            || (matches!(entry.supervised.phase, Phase::Starting | Phase::Idle { .. })
                && matches!(
                    record.instance,
                    InstanceRecord::Stopped { last_exit: Some(_) }
                )) =>
        {
            let how = match &record.instance {
                InstanceRecord::Stopped {
                    last_exit: Some(how),
                } => how.clone(),
                _ => "the process is gone".to_owned(),
            };
            record_interrupted(
                manager,
                project,
                manager.supervision().take_busy(project.as_str()),
            );
            Observation::Exited { how }
        }
        _ => Observation::Tick,
    };
    apply(manager, sender, entry, project, observation);
}

fn apply(
    manager: &Manager,
    sender: &mpsc::UnboundedSender<Event>,
    entry: &mut Tracked,
    project: &ProjectName,
    observation: Observation,
) {
    let policy = policy_for(manager, project);
    let jitter = f64::from(crate::secrets::random_u16()) / 65536.0;
    let actions = policy::decide(
        &mut entry.supervised,
        observation,
        Instant::now(),
        &policy,
        jitter,
    );
    for action in actions {
        carry_out(manager, sender, entry, project, action);
    }
    manager.supervision().publish(
        project.as_str(),
        Some(View {
            state: entry.supervised.state_word(),
            restarts: entry.supervised.restarts,
        }),
    );
}

fn carry_out(
    manager: &Manager,
    sender: &mpsc::UnboundedSender<Event>,
    entry: &mut Tracked,
    project: &ProjectName,
    action: Action,
) {
    let (manager, sender, project) = (manager.clone(), sender.clone(), project.clone());
    entry.busy = true;
    let name = project.to_string();
    match action {
        Action::Probe => {
            tokio::spawn(async move {
                let observation = probe(&manager, &project).await;
                let _ = sender.send(Event::Observed(name, observation));
            });
        }
        Action::Start => {
            tokio::spawn(async move {
                let observation = relaunch(&manager, &project, None).await;
                let _ = sender.send(Event::Observed(name, observation));
            });
        }
        Action::Recycle { reason } => {
            tokio::spawn(async move {
                let observation = relaunch(&manager, &project, Some(reason)).await;
                let _ = sender.send(Event::Observed(name, observation));
            });
        }
        Action::Park => {
            tokio::spawn(async move {
                park(&manager, &project).await;
                let _ = sender.send(Event::Done(name));
            });
        }
        Action::GiveUp { reason } => {
            tokio::spawn(async move {
                give_up(&manager, &project, &reason).await;
                let _ = sender.send(Event::Done(name));
            });
        }
    }
}

/// Reports the sessions a crash or recycle interrupted: in the state (shown by `status`) and the log.
fn record_interrupted(manager: &Manager, project: &ProjectName, sessions: Vec<String>) {
    if sessions.is_empty() {
        return;
    }
    tracing::warn!(project = %project, sessions = %sessions.join(", "), "these busy sessions were interrupted");
    let _ = manager.store().update(|s| {
        if let Some(r) = s.projects.get_mut(project.as_str()) {
            r.interrupted_sessions = sessions;
        }
    });
}

/// Takes the Project's lock and returns its record, unless the user no longer wants it running
/// (a stop may have come while the task waited): the supervisor never undoes a user's stop.
async fn lock_if_wanted(
    manager: &Manager,
    project: &ProjectName,
) -> Option<(tokio::sync::OwnedMutexGuard<()>, ProjectRecord)> {
    let guard = manager.lock_project(project).await;
    let record = manager
        .store()
        .snapshot()
        .projects
        .get(project.as_str())
        .cloned()?;
    (record.desired == Desired::Running).then_some((guard, record))
}

/// Records the give-up with the log tail, ending a process that is still alive (wedged or over
/// its memory limit), so that `failed` never hides a running server.
async fn give_up(manager: &Manager, project: &ProjectName, reason: &str) {
    let Some((_guard, _)) = lock_if_wanted(manager, project).await else {
        return;
    };
    let tail =
        crate::logs::tail(&manager.config().paths.project_log(project), 10).unwrap_or_default();
    tracing::error!(project = %project, "supervisor gave up: {reason}");
    let outcome = InstanceRecord::Failed {
        error: format!("{reason}; log tail: {}", tail.join(" | ")),
        at: crate::timestamp::now(),
    };
    let _ = crate::ops::stop::end_instance(manager, project, Some(outcome)).await;
    let _ = manager
        .gateway()
        .sync(manager, crate::gateway::Trigger::Follow);
}

/// A health probe, and whether any session is busy (which counts as activity and delays recycling).
async fn probe(manager: &Manager, project: &ProjectName) -> Observation {
    let Some(api) = manager.instance_api(project) else {
        // No port or an unreadable .env (a typo being fixed): that says nothing about the
        // server's health, so it is not counted against it.
        return Observation::Tick;
    };
    let ok = api.health(Duration::from_secs(3)).await.is_ok();
    let busy = if ok {
        busy_sessions(&api).await
    } else {
        Vec::new()
    };
    let busy_sessions = !busy.is_empty();
    if ok {
        manager.supervision().set_busy(project.as_str(), busy);
    }
    if ok {
        let now = crate::timestamp::now();
        let _ = manager.store().update(|s| {
            if let Some(r) = s.projects.get_mut(project.as_str()) {
                r.last_health_check = Some(now);
            }
        });
    }
    Observation::Probe { ok, busy_sessions }
}

/// Starts the Instance again (after ending the wedged one, for a recycle), unless the user
/// stopped the Project meanwhile.
async fn relaunch(
    manager: &Manager,
    project: &ProjectName,
    recycle: Option<String>,
) -> Observation {
    let Some((_guard, record)) = lock_if_wanted(manager, project).await else {
        return Observation::Tick;
    };
    let alive = record
        .instance
        .proc()
        .is_some_and(|(p, _)| process::is_alive(p));
    if alive && recycle.is_none() {
        // Someone else started it while this task waited for the lock.
        return Observation::Ready;
    }
    if let Some(reason) = &recycle {
        // A wedged server may not answer: fall back to what the last good probe saw.
        let mut busy = interrupted_sessions(manager, project).await;
        let last_seen = manager.supervision().take_busy(project.as_str());
        if busy.is_empty() {
            busy = last_seen;
        }
        record_interrupted(manager, project, busy);
        let outcome = InstanceRecord::Stopped {
            last_exit: Some(format!(
                "recycled by the supervisor ({reason}) at {}",
                crate::timestamp::now()
            )),
        };
        if let Err(reply) = crate::ops::stop::end_instance(manager, project, Some(outcome)).await {
            return Observation::StartFailed {
                reason: reply.message.unwrap_or_default(),
            };
        }
    }
    let env = match crate::project_env::load(&manager.config().paths.env_file(project)) {
        Ok(env) => env,
        Err(err) => {
            return Observation::StartFailed {
                reason: err.message,
            };
        }
    };
    // The previous Instance is gone; anything still carrying its marker is an orphan.
    let prefix = crate::sandbox::marker_prefix(&manager.config().paths, project);
    let swept = process::sweep(|value| value.starts_with(&prefix)).await;
    if swept > 0 {
        tracing::warn!(project = %project, swept, "killed processes an earlier instance left behind");
    }
    tracing::info!(project = %project, "supervisor starting opencode");
    match crate::ops::launch::launch(manager, project, &env, &crate::ops::Progress::default()).await
    {
        Ok(_) => {
            let _ = manager
                .gateway()
                .sync(manager, crate::gateway::Trigger::Follow);
            Observation::Ready
        }
        Err(reply) => Observation::StartFailed {
            reason: reply.message.unwrap_or_default(),
        },
    }
}

/// Busy sessions at the moment of a recycle, reported so they are not silently stranded.
async fn interrupted_sessions(manager: &Manager, project: &ProjectName) -> Vec<String> {
    match manager.instance_api(project) {
        Some(api) => busy_sessions(&api).await,
        None => Vec::new(),
    }
}

/// The sessions an Instance reports busy (`GET /session/status` lists only those).
async fn busy_sessions(api: &InstanceApi) -> Vec<String> {
    api.call(
        reqwest::Method::GET,
        "/session/status",
        None,
        Duration::from_secs(3),
    )
    .await
    .ok()
    .and_then(|status| status.as_object().map(|m| m.keys().cloned().collect()))
    .unwrap_or_default()
}

/// Stops an idle Instance and records it as parked; the Project stays wanted.
async fn park(manager: &Manager, project: &ProjectName) {
    let Some((_guard, _)) = lock_if_wanted(manager, project).await else {
        return;
    };
    tracing::info!(project = %project, "parking idle opencode; the gateway starts it again on demand");
    let outcome = InstanceRecord::Idle {
        since: crate::timestamp::now(),
    };
    let _ = crate::ops::stop::end_instance(manager, project, Some(outcome)).await;
    crate::gateway::servers_file::update(manager);
}

/// Established TCP connections to `port` on this machine (someone is using the Instance).
fn established_connections(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is field 1, state is field 3; 01 = ESTABLISHED.
                fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "01"
            })
        })
    })
}
