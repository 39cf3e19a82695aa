//! Asking the policy and carrying out its actions: the Launcher steps (launch, probe, end) as
//! tasks that report back, and the deadlines that feed it the passing of time.

use std::time::Instant;

use tokio::sync::oneshot;

use super::{Actor, Event, now};
use crate::error::{ErrorCode, OpError};
use crate::lifecycle::{Ending, LaunchRequest, Launcher, Progress};
use crate::policy::{self, Action, Observation, Phase, Policy};
use crate::project::ProjectName;
use crate::state::Desired;
use crate::supervisor::budget::{self, Fit};
use crate::supervisor::tracked::{LaunchPlan, Process, Then, Tracked};

impl<L: Launcher> Actor<L> {
    /// Tells the policy what happened to a Project the user wants running, and carries out what
    /// it decides.
    pub(super) fn observe(&mut self, name: &str, observation: Observation) {
        let policy = self.policy_for(name);
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        if t.desired != Desired::Running {
            return;
        }
        let jitter = f64::from(crate::secrets::random_u16()) / 65536.0;
        let was_waiting = matches!(t.supervised.phase, Phase::Backoff { .. });
        let now = now();
        let actions = policy::decide(&mut t.supervised, observation, now, &policy, jitter);
        if let Phase::Backoff { until } = t.supervised.phase
            && !was_waiting
        {
            let backoff_ms = until.saturating_duration_since(now).as_millis();
            tracing::info!(project = %name, backoff_ms, "starting opencode again after the backoff");
        }
        for action in actions {
            self.act(name, action);
        }
    }

    pub(super) fn act(&mut self, name: &str, action: Action) {
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
                // A launch the Supervisor made did not ask (its caller waited only for health).
                let ask_provider = t.provider.is_none();
                let (launcher, events) = (self.launcher.clone(), self.events.clone());
                let (instance, project) = (instance.clone(), name.to_owned());
                tokio::spawn(async move {
                    let id = instance.id.clone();
                    let probed = launcher.probe(instance, ask_provider).await;
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
    pub(super) fn gave_up(&mut self, name: &str, reason: String) {
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

    /// Starts a launch task for the Project, within the memory budget: parking the least
    /// recently active Projects first when it must (the launch then waits for them to end), or
    /// refusing it when nothing that can be parked makes room.
    pub(super) fn launch(&mut self, name: &str, plan: LaunchPlan) {
        let env = plan.env.clone().or_else(|| self.host.envs.get(name));
        if let Some(budget) = self.host.config.memory_budget {
            let need = self.need(name, env.as_deref());
            match budget::fit(name, need, budget, &self.live(name)) {
                Fit::Fits => {}
                Fit::Park(victims) => {
                    plan.progress.step(format!(
                        "parking {} to stay within the memory budget",
                        victims.join(", ")
                    ));
                    for victim in &victims {
                        tracing::info!(project = %victim, "parking for the memory budget, to start {name}");
                        self.park(victim);
                    }
                    return self.queue(name, plan, victims);
                }
                // What is starting, stopping or serving a call will be parkable or gone soon:
                // wait for it.
                Fit::Refuse(_) if !self.unsettled(name).is_empty() => {
                    let waiting_for = self.unsettled(name);
                    plan.progress.step(format!(
                        "waiting for memory: {} starting, stopping or serving a call",
                        waiting_for.join(", ")
                    ));
                    return self.queue(name, plan, waiting_for);
                }
                Fit::Refuse(why) => {
                    return self.refuse_launch(name, plan, OpError::new(
                        ErrorCode::OverBudget,
                        why,
                        "stop a project, lower MEMORY_MAX, or raise memory_budget in opencode-manager.toml",
                    ));
                }
            }
        }
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        // A user's start asks which provider the Instance uses (its reply warns when there is
        // none); the Supervisor's own launches (on demand, after a crash) answer their callers
        // once the Instance is healthy, and keep what the last Instance said if the `.env` is
        // the same (else the next probe asks).
        let ask_provider = plan.by_user;
        let same_env = match (&t.launched_env, &env) {
            (Some(before), Some(now)) => std::sync::Arc::ptr_eq(before, now),
            _ => false,
        };
        if !ask_provider && !same_env {
            t.provider = None;
        }
        let id = crate::secrets::random_id();
        let progress = plan.progress.clone();
        let mut plan = plan;
        plan.env.clone_from(&env);
        t.process = Process::Launching {
            id: id.clone(),
            since: now(),
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
                            ask_provider,
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
    pub(super) fn end(
        &mut self,
        name: &str,
        why: Ending,
        then: Then,
        stops: Vec<oneshot::Sender<bool>>,
    ) {
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

    /// Holds a launch until the Projects it waits for have finished their transitions.
    fn queue(&mut self, name: &str, plan: LaunchPlan, waiting_for: Vec<String>) {
        if let Some(t) = self.projects.get_mut(name) {
            t.process = Process::Queued { plan, waiting_for };
        }
    }

    /// The other Projects launching or ending now, or serving Gateway calls.
    fn unsettled(&self, except: &str) -> Vec<String> {
        self.projects
            .iter()
            .filter(|(name, t)| name.as_str() != except && t.unsettled())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Launches what waited for memory once everything it waited for is settled: up with no
    /// call under way, or gone (each is weighed again: it may park others, or wait again).
    pub(super) fn unqueue(&mut self) {
        let ready: Vec<String> = self
            .projects
            .iter()
            .filter(|(_, t)| match &t.process {
                Process::Queued { waiting_for, .. } => waiting_for
                    .iter()
                    .all(|other| !self.projects.get(other).is_some_and(Tracked::unsettled)),
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            let Some(t) = self.projects.get_mut(&name) else {
                continue;
            };
            if let Process::Queued { plan, .. } = std::mem::replace(&mut t.process, Process::None) {
                self.launch(&name, plan);
            }
        }
    }

    /// Parks a running Project for the budget, as the policy parks an idle one.
    fn park(&mut self, name: &str) {
        if let Some(t) = self.projects.get_mut(name) {
            t.supervised.phase = Phase::Idle { since: now() };
        }
        self.end(name, Ending::Park, Then::Park, Vec::new());
    }

    /// Ends a launch before it began: its waiters hear `error` as from a failed launch.
    fn refuse_launch(&mut self, name: &str, plan: LaunchPlan, error: OpError) {
        let id = crate::secrets::random_id();
        if let Some(t) = self.projects.get_mut(name) {
            t.process = Process::Launching {
                id: id.clone(),
                since: now(),
                plan,
            };
        }
        let _ = self.events.send(Event::Launched {
            project: name.to_owned(),
            id,
            result: Err(error),
        });
    }

    /// What a launch of the Project needs: its memory limit, else its kind's estimate.
    fn need(&self, name: &str, env: Option<&crate::project_env::ProjectEnv>) -> u64 {
        let kind = self.projects.get(name).map(|t| t.agent).unwrap_or_default();
        env.and_then(|env| crate::lifecycle::launch::effective_limits(&self.host, env).ok())
            .and_then(|limits| limits.memory_bytes)
            .unwrap_or_else(|| kind.estimated_memory())
    }

    /// Every other living or launching Instance, with its memory (measured, else estimated)
    /// and whether it can be parked.
    fn live(&self, except: &str) -> Vec<budget::Live> {
        self.projects
            .iter()
            .filter(|(name, _)| name.as_str() != except)
            .filter_map(|(name, t)| {
                let estimate = t.agent.estimated_memory();
                let (memory, parkable) = match (&t.process, &t.supervised.phase) {
                    (Process::None | Process::Queued { .. }, _) => return None,
                    (Process::Launching { .. }, _) => (estimate, Err("starting".to_owned())),
                    (Process::Ending { .. }, _) => (
                        t.observed.memory.unwrap_or(estimate),
                        Err("stopping".to_owned()),
                    ),
                    (Process::Up { .. }, phase) => {
                        let memory = t.observed.memory.unwrap_or(estimate);
                        let parkable = if t.calls > 0 {
                            Err("a gateway call is under way".to_owned())
                        } else if !t.observed.busy.is_empty() {
                            Err("a session is busy".to_owned())
                        } else if t.observed.permissions > 0 {
                            Err("a permission request waits for an answer".to_owned())
                        } else if let Phase::Running { last_activity, .. } = phase {
                            Ok(*last_activity)
                        } else {
                            Err("not running normally".to_owned())
                        };
                        (memory, parkable)
                    }
                };
                Some(budget::Live {
                    name: name.clone(),
                    memory,
                    parkable,
                })
            })
            .collect()
    }

    /// The daemon-wide policy, with the Project's own idle timeout.
    pub(super) fn policy_for(&self, name: &str) -> Policy {
        let mut policy = self.host.config.supervision.clone();
        if let Some(idle) = self.host.envs.get(name).and_then(|env| env.idle_timeout) {
            policy.idle_timeout = idle;
        }
        policy
    }

    /// The earliest policy deadline of any Project.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
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
    pub(super) fn deadlines(&mut self) {
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
}
