//! The Supervisor's loop over a closed set of messages: commands from the rest of the daemon,
//! events from the steps it started, and its policy's deadlines.
//!
//! Each message is handled at once and in order: the actor changes its own state, asks the pure
//! `policy` what to do, starts the Launcher's steps as tasks that report back, and publishes.
//! It never waits on IO itself; state-file writes go to tasks too (the in-memory change is made
//! in order, here).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::tracked::{LaunchPlan, Observed, Process, Then, Tracked, Waiter};
use super::{Command, Started};
use crate::error::{ErrorCode, OpError};
use crate::lifecycle::launch::ASSUMED_INSTANCE_MEMORY;
use crate::lifecycle::{Ending, Host, LaunchRequest, Launched, Launcher, Probed, Progress};
use crate::policy::{self, Action, Observation, Phase, Policy, Supervised};
use crate::project::ProjectName;
use crate::snapshot::Snapshot;
use crate::state::{Desired, InstanceRecord, State};

/// What the Launcher's tasks report.
enum Event {
    Launched {
        project: String,
        id: String,
        result: Result<Launched, OpError>,
    },
    Exited {
        project: String,
        id: String,
        how: String,
    },
    Ended {
        project: String,
        id: String,
    },
    Probed {
        project: String,
        id: String,
        probed: Probed,
    },
    /// The reason the Supervisor gave up, with the end of the Project's log.
    GaveUp {
        project: String,
        error: String,
    },
}

struct Actor<L> {
    host: Arc<Host>,
    launcher: Arc<L>,
    snapshot: Arc<watch::Sender<Snapshot>>,
    events: mpsc::UnboundedSender<Event>,
    projects: BTreeMap<String, Tracked>,
    user_starts: u64,
}

/// The clock, from tokio (so tests can pause it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(super) async fn run<L: Launcher>(
    host: Arc<Host>,
    launcher: Arc<L>,
    snapshot: Arc<watch::Sender<Snapshot>>,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
    cancel: CancellationToken,
) {
    let (events, mut outbox) = mpsc::unbounded_channel();
    let mut actor = Actor {
        host,
        launcher,
        snapshot,
        events,
        projects: BTreeMap::new(),
        user_starts: 0,
    };
    // Adoption first: it records what died meanwhile, which the entries then start from.
    let adopted = actor.launcher.adopt().await;
    let state = actor.host.store.snapshot();
    for (name, record) in &state.projects {
        actor
            .projects
            .insert(name.clone(), Tracked::from_record(record, now()));
    }
    actor.adopted(adopted, &state);
    actor.publish();
    let _ = ready.send(());
    loop {
        let deadline = actor.next_deadline();
        let sleep = tokio::time::sleep_until(
            deadline.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std),
        );
        tokio::select! {
            Some(command) = inbox.recv() => actor.command(command),
            Some(event) = outbox.recv() => actor.event(event),
            () = sleep, if deadline.is_some() => actor.deadlines(),
            () = cancel.cancelled() => break,
        }
        actor.publish();
    }
}

impl<L: Launcher> Actor<L> {
    /// Takes over the Instances an earlier daemon left running; a wanted Project whose Instance
    /// died meanwhile counts as crashed (and is restarted after the backoff).
    fn adopted(&mut self, adopted: Vec<Launched>, state: &State) {
        let now = now();
        for launched in adopted {
            let name = launched.instance.project.to_string();
            let Some(t) = self.projects.get_mut(&name) else {
                continue;
            };
            if t.desired == Desired::Running {
                t.supervised = Supervised::running(now);
            }
            self.up(&name, launched);
        }
        let crashed: Vec<(String, String)> = self
            .projects
            .iter()
            .filter(|(_, t)| {
                t.desired == Desired::Running
                    && matches!(t.process, Process::None)
                    && t.supervised.phase == Phase::Starting
            })
            .map(|(name, t)| {
                let how = t
                    .last_exit
                    .clone()
                    .or_else(|| {
                        state
                            .projects
                            .get(name)
                            .map(|r| r.instance.status_word().to_owned())
                    })
                    .unwrap_or_else(|| "the process is gone".into());
                (name.clone(), how)
            })
            .collect();
        for (name, how) in crashed {
            self.observe(&name, Observation::Exited { how });
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register { project } => {
                self.tracked(project.as_str());
            }
            Command::Touch { project } => self.observe(&project, Observation::Activity),
            Command::Forget { project } => {
                self.projects.remove(&project);
            }
            command => {
                let name = match &command {
                    Command::Start { project, .. }
                    | Command::Restart { project, .. }
                    | Command::Stop { project, .. }
                    | Command::Resume { project, .. } => project.to_string(),
                    Command::Register { .. } | Command::Touch { .. } | Command::Forget { .. } => {
                        return;
                    }
                };
                match self.tracked(&name) {
                    Some(t) if t.in_transition() => t.queued.push_back(command),
                    Some(_) => self.run_command(command),
                    None => refuse(command, &name),
                }
            }
        }
    }

    /// The Project's entry, loaded from its record the first time.
    fn tracked(&mut self, name: &str) -> Option<&mut Tracked> {
        if !self.projects.contains_key(name) {
            let record = self.host.store.snapshot().projects.get(name).cloned()?;
            self.projects
                .insert(name.to_owned(), Tracked::from_record(&record, now()));
        }
        self.projects.get_mut(name)
    }

    fn run_command(&mut self, command: Command) {
        match command {
            Command::Start {
                project,
                env,
                progress,
                reply,
            } => {
                let name = project.to_string();
                self.want(&name, Desired::Running);
                self.user_starts += 1;
                let Some(t) = self.projects.get_mut(&name) else {
                    return;
                };
                if let Process::Up { instance, .. } = &t.process {
                    let _ = reply.send(Ok(started(t, instance.proc.pid, instance.port)));
                    return;
                }
                t.supervised = Supervised::starting();
                t.failed = None;
                self.launch(
                    &name,
                    LaunchPlan {
                        env: Some(env),
                        progress,
                        waiters: vec![Waiter::Start(reply)],
                        by_user: true,
                    },
                );
            }
            Command::Restart {
                project,
                env,
                progress,
                reply,
            } => {
                let name = project.to_string();
                self.want(&name, Desired::Running);
                self.user_starts += 1;
                let Some(t) = self.projects.get_mut(&name) else {
                    return;
                };
                t.supervised = Supervised::starting();
                t.failed = None;
                let plan = LaunchPlan {
                    env: Some(env),
                    progress,
                    waiters: vec![Waiter::Start(reply)],
                    by_user: true,
                };
                if matches!(t.process, Process::Up { .. }) {
                    self.end(
                        &name,
                        Ending::Stop("restarting".into()),
                        Then::Relaunch(plan),
                        Vec::new(),
                    );
                } else {
                    self.launch(&name, plan);
                }
            }
            Command::Stop {
                project,
                reason,
                reply,
            } => {
                let name = project.to_string();
                self.want(&name, Desired::Stopped);
                let Some(t) = self.projects.get_mut(&name) else {
                    return;
                };
                if matches!(t.process, Process::Up { .. }) {
                    self.end(&name, Ending::Stop(reason), Then::Nothing, vec![reply]);
                    return;
                }
                let _ = reply.send(false);
                t.failed = None;
                let settled = self
                    .host
                    .store
                    .snapshot()
                    .projects
                    .get(&name)
                    .is_none_or(|r| {
                        matches!(
                            r.instance,
                            InstanceRecord::Stopped { .. } | InstanceRecord::Failed { .. }
                        )
                    });
                if !settled {
                    let last_exit = format!("{reason} at {}", crate::timestamp::now());
                    t.last_exit = Some(last_exit.clone());
                    self.record(
                        &project,
                        InstanceRecord::Stopped {
                            last_exit: Some(last_exit),
                        },
                    );
                }
            }
            Command::Resume { project, reply } => {
                let name = project.to_string();
                let Some(t) = self.projects.get_mut(&name) else {
                    return;
                };
                match (&t.process, &t.supervised.phase, t.desired) {
                    (Process::Up { instance, .. }, _, _) => {
                        let _ = reply.send(Ok(instance.port));
                    }
                    (Process::None, Phase::Idle { .. }, Desired::Running) => {
                        tracing::info!(project = %name, "starting parked opencode on demand");
                        t.pending.push(Waiter::Resume(reply));
                        self.observe(&name, Observation::Demand);
                    }
                    _ => {
                        let _ = reply.send(Err(format!(
                            "project {name} is not running; start it with opencode_start (or opencode-manager start {name})"
                        )));
                    }
                }
            }
            Command::Register { .. } | Command::Touch { .. } | Command::Forget { .. } => {}
        }
    }

    /// Records the user's wish, in memory now and on disk soon.
    fn want(&mut self, name: &str, desired: Desired) {
        if let Some(t) = self.projects.get_mut(name) {
            t.desired = desired;
        }
        self.persist(|s| {
            if let Some(r) = s.projects.get_mut(name) {
                r.desired = desired;
            }
        });
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Launched {
                project,
                id,
                result,
            } => self.launched(&project, &id, result),
            Event::Exited { project, id, how } => self.exited(&project, &id, how),
            Event::Ended { project, id } => self.ended(&project, &id),
            Event::Probed {
                project,
                id,
                probed,
            } => self.probed(&project, &id, probed),
            Event::GaveUp { project, error } => {
                let Some(t) = self.projects.get_mut(&project) else {
                    return;
                };
                if matches!(t.supervised.phase, Phase::Failed { .. }) {
                    t.supervised.phase = Phase::Failed {
                        reason: error.clone(),
                    };
                }
                t.failed = Some(error.clone());
                if let Ok(project) = ProjectName::parse(&project) {
                    self.record(
                        &project,
                        InstanceRecord::Failed {
                            error,
                            at: crate::timestamp::now(),
                        },
                    );
                }
            }
        }
    }

    fn launched(&mut self, name: &str, id: &str, result: Result<Launched, OpError>) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let plan = match std::mem::replace(&mut t.process, Process::None) {
            Process::Launching { id: current, plan } if current == id => plan,
            other => {
                t.process = other;
                return;
            }
        };
        match result {
            Ok(launched) => {
                let (pid, port) = (launched.instance.proc.pid, launched.instance.port);
                self.up(name, launched);
                let Some(t) = self.projects.get_mut(name) else {
                    return;
                };
                for waiter in plan.waiters {
                    match waiter {
                        Waiter::Start(reply) => {
                            let _ = reply.send(Ok(started(t, pid, port)));
                        }
                        Waiter::Resume(reply) => {
                            let _ = reply.send(Ok(port));
                        }
                    }
                }
                self.observe(name, Observation::Ready);
            }
            Err(error) => {
                t.failed = Some(error.message.clone());
                for waiter in plan.waiters {
                    match waiter {
                        Waiter::Start(reply) => {
                            let _ = reply.send(Err(error.clone()));
                        }
                        Waiter::Resume(reply) => {
                            let _ = reply.send(Err(format!(
                                "starting the parked project failed: {}",
                                error.message
                            )));
                        }
                    }
                }
                if plan.by_user {
                    // A failed start the user asked for is reported to them, not retried.
                    t.supervised.phase = Phase::Failed {
                        reason: error.message.clone(),
                    };
                } else {
                    self.observe(
                        name,
                        Observation::StartFailed {
                            reason: error.message,
                        },
                    );
                }
            }
        }
        self.drain(name);
    }

    /// Takes a ready Instance into the Project's entry and watches for its exit.
    fn up(&mut self, name: &str, launched: Launched) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let Launched {
            instance,
            started_at,
            isolation,
            provider,
            memory,
            exit,
        } = launched;
        let (events, project, id) = (self.events.clone(), name.to_owned(), instance.id.clone());
        tokio::spawn(async move {
            let how = exit.await;
            let _ = events.send(Event::Exited { project, id, how });
        });
        t.port = Some(instance.port);
        t.started_at = Some(started_at.clone());
        t.isolation = Some(isolation);
        t.provider = provider;
        t.failed = None;
        // Readiness was a health check that passed.
        t.observed = Observed {
            interrupted: std::mem::take(&mut t.observed.interrupted),
            memory,
            last_health_check: Some(started_at.clone()),
            ..Observed::default()
        };
        t.process = Process::Up {
            instance,
            probing: false,
        };
    }

    fn exited(&mut self, name: &str, id: &str, how: String) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let instance = match std::mem::replace(&mut t.process, Process::None) {
            Process::Up { instance, .. } if instance.id == id => instance,
            // An end under way reports itself; anything else is about an older launch.
            other => {
                t.process = other;
                return;
            }
        };
        let last_exit = format!("exited unexpectedly ({how}) at {}", crate::timestamp::now());
        tracing::warn!(project = %name, "opencode exited unexpectedly ({how})");
        t.last_exit = Some(last_exit.clone());
        let busy = std::mem::take(&mut t.observed.busy);
        if !busy.is_empty() {
            tracing::warn!(project = %name, sessions = %busy.join(", "), "these busy sessions were interrupted");
            t.observed.interrupted = busy;
        }
        let wanted = t.desired == Desired::Running;
        self.record(
            &instance.project,
            InstanceRecord::Stopped {
                last_exit: Some(last_exit),
            },
        );
        // What the dead Instance's tools started (in their own sessions) must not outlive it.
        let launcher = self.launcher.clone();
        tokio::spawn(async move { launcher.clean_up(instance).await });
        if wanted {
            self.observe(name, Observation::Exited { how });
        }
    }

    fn ended(&mut self, name: &str, id: &str) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let (then, stops) = match std::mem::replace(&mut t.process, Process::None) {
            Process::Ending {
                instance,
                then,
                stops,
            } if instance.id == id => (then, stops),
            other => {
                t.process = other;
                return;
            }
        };
        for stop in stops {
            let _ = stop.send(true);
        }
        match then {
            Then::Nothing | Then::Park => {}
            Then::GiveUp(reason) => self.gave_up(name, reason),
            Then::Relaunch(plan) => self.launch(name, plan),
        }
        self.drain(name);
    }

    fn probed(&mut self, name: &str, id: &str, probed: Probed) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let Process::Up { instance, probing } = &mut t.process else {
            return;
        };
        if instance.id != id {
            return;
        }
        *probing = false;
        let over = match (&instance.enforced, instance.memory_limit, probed.memory) {
            // The RSS watchdog, where no cgroup holds the Instance to its memory limit.
            (None, Some(limit), Some(rss)) if rss > limit => {
                Some(Observation::OverMemory { rss, limit })
            }
            _ => None,
        };
        t.observed.memory = probed.memory;
        if probed.ok == Some(true) {
            t.observed.busy = probed.busy.clone();
            t.observed.permissions = probed.permissions;
            t.observed.last_health_check = Some(crate::timestamp::now());
        }
        if probed.connected {
            self.observe(name, Observation::Activity);
        }
        let observation = match probed.ok {
            Some(ok) => Observation::Probe {
                ok,
                busy_sessions: !probed.busy.is_empty(),
            },
            None => Observation::Unprobed,
        };
        self.observe(name, observation);
        if let Some(over) = over {
            self.observe(name, over);
        }
    }

    /// Runs the commands that waited for a transition, until one starts another.
    fn drain(&mut self, name: &str) {
        loop {
            let Some(t) = self.projects.get_mut(name) else {
                return;
            };
            if t.in_transition() {
                return;
            }
            let Some(command) = t.queued.pop_front() else {
                return;
            };
            self.run_command(command);
        }
    }

    /// Tells the policy what happened to a Project the user wants running, and carries out what
    /// it decides.
    fn observe(&mut self, name: &str, observation: Observation) {
        let policy = self.policy_for(name);
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        if t.desired != Desired::Running {
            return;
        }
        let jitter = f64::from(crate::secrets::random_u16()) / 65536.0;
        let actions = policy::decide(&mut t.supervised, observation, now(), &policy, jitter);
        for action in actions {
            self.act(name, action);
        }
    }

    fn act(&mut self, name: &str, action: Action) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        match action {
            Action::Probe => {
                let Process::Up { instance, probing } = &mut t.process else {
                    return;
                };
                if *probing {
                    return;
                }
                *probing = true;
                let (launcher, events) = (self.launcher.clone(), self.events.clone());
                let (instance, project) = (instance.clone(), name.to_owned());
                tokio::spawn(async move {
                    let id = instance.id.clone();
                    let probed = launcher.probe(instance).await;
                    let _ = events.send(Event::Probed {
                        project,
                        id,
                        probed,
                    });
                });
            }
            Action::Start => {
                tracing::info!(project = %name, "supervisor starting opencode");
                let waiters = std::mem::take(&mut t.pending);
                self.launch(
                    name,
                    LaunchPlan {
                        env: None,
                        progress: Progress::default(),
                        waiters,
                        by_user: false,
                    },
                );
            }
            Action::Recycle { reason } => {
                if !matches!(t.process, Process::Up { .. }) {
                    return;
                }
                let busy = std::mem::take(&mut t.observed.busy);
                if !busy.is_empty() {
                    tracing::warn!(project = %name, sessions = %busy.join(", "), "these busy sessions were interrupted");
                    t.observed.interrupted = busy;
                }
                tracing::warn!(project = %name, "recycling opencode: {reason}");
                let plan = LaunchPlan {
                    env: None,
                    progress: Progress::default(),
                    waiters: std::mem::take(&mut t.pending),
                    by_user: false,
                };
                self.end(
                    name,
                    Ending::Recycle(reason),
                    Then::Relaunch(plan),
                    Vec::new(),
                );
            }
            Action::Park => {
                if matches!(t.process, Process::Up { .. }) {
                    tracing::info!(project = %name, "parking idle opencode; the gateway starts it again on demand");
                    self.end(name, Ending::Park, Then::Park, Vec::new());
                }
            }
            Action::GiveUp { reason } => {
                tracing::error!(project = %name, "supervisor gave up: {reason}");
                if matches!(t.process, Process::Up { .. }) {
                    self.end(
                        name,
                        Ending::GiveUp(reason.clone()),
                        Then::GiveUp(reason),
                        Vec::new(),
                    );
                    return;
                }
                self.gave_up(name, reason);
            }
        }
    }

    /// Records that the Supervisor gave up, once the end of the log is read (by a task).
    fn gave_up(&mut self, name: &str, reason: String) {
        if let Some(t) = self.projects.get_mut(name) {
            t.failed = Some(reason.clone());
        }
        let Ok(project) = ProjectName::parse(name) else {
            return;
        };
        let (host, events) = (self.host.clone(), self.events.clone());
        tokio::spawn(async move {
            let error = crate::lifecycle::end::with_log_tail(&host, &project, &reason).await;
            let _ = events.send(Event::GaveUp {
                project: project.to_string(),
                error,
            });
        });
    }

    /// Starts a launch task for the Project.
    fn launch(&mut self, name: &str, plan: LaunchPlan) {
        let others = self.others(name);
        let env = plan.env.clone().or_else(|| self.host.envs.get(name));
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let id = crate::secrets::random_id();
        let progress = plan.progress.clone();
        t.process = Process::Launching {
            id: id.clone(),
            plan,
        };
        let (launcher, events, project) =
            (self.launcher.clone(), self.events.clone(), name.to_owned());
        tokio::spawn(async move {
            let result = match (ProjectName::parse(&project), env) {
                (Ok(name), Some(env)) => {
                    launcher
                        .launch(LaunchRequest {
                            project: name,
                            id: id.clone(),
                            env,
                            progress,
                            others,
                        })
                        .await
                }
                (_, None) => Err(OpError::new(
                    ErrorCode::InvalidConfig,
                    format!("the .env of {project} is missing or invalid"),
                    "fix it (opencode-manager start shows what is wrong), then start the project",
                )),
                (Err(err), _) => Err(err),
            };
            let _ = events.send(Event::Launched {
                project,
                id,
                result,
            });
        });
    }

    /// Starts an end task for the Project's running Instance.
    fn end(&mut self, name: &str, why: Ending, then: Then, stops: Vec<oneshot::Sender<bool>>) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let instance = match std::mem::replace(&mut t.process, Process::None) {
            Process::Up { instance, .. } => instance,
            other => {
                t.process = other;
                return;
            }
        };
        if let Some(exit) = why.last_exit() {
            t.last_exit = Some(format!("{exit} at {}", crate::timestamp::now()));
        }
        t.process = Process::Ending {
            instance: instance.clone(),
            then,
            stops,
        };
        let (launcher, events, project) =
            (self.launcher.clone(), self.events.clone(), name.to_owned());
        tokio::spawn(async move {
            let id = instance.id.clone();
            launcher.end(instance, why).await;
            let _ = events.send(Event::Ended { project, id });
        });
    }

    /// The memory each other living (or launching) Instance is counted for.
    fn others(&self, except: &str) -> Vec<(String, u64)> {
        self.projects
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .filter_map(|(name, t)| match &t.process {
                Process::Up { instance, .. } | Process::Ending { instance, .. } => Some((
                    name.clone(),
                    instance.memory_limit.unwrap_or(ASSUMED_INSTANCE_MEMORY),
                )),
                Process::Launching { .. } => Some((name.clone(), ASSUMED_INSTANCE_MEMORY)),
                Process::None => None,
            })
            .collect()
    }

    /// The daemon-wide policy, with the Project's own idle timeout.
    fn policy_for(&self, name: &str) -> Policy {
        let mut policy = self.host.config.supervision.clone();
        if let Some(idle) = self.host.envs.get(name).and_then(|env| env.idle_timeout) {
            policy.idle_timeout = idle;
        }
        policy
    }

    /// The earliest policy deadline of any Project.
    fn next_deadline(&self) -> Option<Instant> {
        self.projects
            .iter()
            .filter(|(_, t)| t.desired == Desired::Running)
            .filter_map(|(name, t)| {
                // Only a running process can be probed; otherwise the probe is not due.
                let probing = !matches!(t.process, Process::Up { probing: false, .. });
                policy::next_deadline(&t.supervised, &self.policy_for(name), probing)
            })
            .min()
    }

    /// Feeds the passing of time to every Project whose deadline has come.
    fn deadlines(&mut self) {
        let now = now();
        let due: Vec<String> = self
            .projects
            .iter()
            .filter(|(_, t)| t.desired == Desired::Running)
            .filter(|(name, t)| {
                let probing = !matches!(t.process, Process::Up { probing: false, .. });
                policy::next_deadline(&t.supervised, &self.policy_for(name), probing)
                    .is_some_and(|at| at <= now)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.observe(&name, Observation::Tick);
        }
    }

    /// Changes the state in memory now; a task writes it.
    fn persist(&self, change: impl FnOnce(&mut State)) {
        match self.host.store.change(change) {
            Ok((_, Some(pending))) => {
                let host = self.host.clone();
                tokio::spawn(async move {
                    if let Err(err) = host.store.write(pending).await {
                        tracing::error!("{err}");
                    }
                });
            }
            Ok((_, None)) => {}
            Err(err) => tracing::error!("{err}"),
        }
    }

    /// Records how the Project's Instance ended (in memory now; a task writes it).
    fn record(&self, project: &ProjectName, outcome: InstanceRecord) {
        let name = project.as_str();
        self.persist(|s| {
            if let Some(r) = s.projects.get_mut(name) {
                r.instance = outcome;
            }
        });
    }

    fn publish(&self) {
        let projects: BTreeMap<_, _> = self
            .projects
            .iter()
            .map(|(name, t)| (name.clone(), t.view()))
            .collect();
        let user_starts = self.user_starts;
        self.snapshot.send_if_modified(|s| {
            if s.projects == projects && s.user_starts == user_starts {
                return false;
            }
            s.projects = projects;
            s.user_starts = user_starts;
            s.revision += 1;
            true
        });
    }
}

/// The reply to a start, from the Project's entry and its running Instance.
fn started(t: &Tracked, pid: i32, port: u16) -> Started {
    Started {
        pid,
        port,
        started_at: t.started_at.clone().unwrap_or_default(),
        provider: t.provider.clone(),
        isolation: t
            .isolation
            .clone()
            .unwrap_or(crate::instance::confine::Isolation::None {
                reason: "unknown".into(),
            }),
    }
}

/// Answers a command about a Project that does not exist.
fn refuse(command: Command, name: &str) {
    let missing = || {
        OpError::new(
            ErrorCode::Internal,
            format!("project {name} has no record"),
            "call opencode_start to create it",
        )
    };
    match command {
        Command::Start { reply, .. } | Command::Restart { reply, .. } => {
            let _ = reply.send(Err(missing()));
        }
        Command::Stop { reply, .. } => {
            let _ = reply.send(false);
        }
        Command::Resume { reply, .. } => {
            let _ = reply.send(Err(format!("project {name} not found")));
        }
        Command::Register { .. } | Command::Touch { .. } | Command::Forget { .. } => {}
    }
}
