//! Asking the policy and carrying out its actions: the Launcher steps (launch, probe, end) as
//! tasks that report back, and the deadlines that feed it the passing of time.

use std::time::Instant;

use tokio::sync::oneshot;

use super::{Actor, Event, now};
use crate::error::{ErrorCode, OpError};
use crate::lifecycle::launch::ASSUMED_INSTANCE_MEMORY;
use crate::lifecycle::{Ending, LaunchRequest, Launcher, Progress};
use crate::policy::{self, Action, Observation, Phase, Policy};
use crate::project::ProjectName;
use crate::state::Desired;
use crate::supervisor::tracked::{LaunchPlan, Process, Then};

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

    /// Starts a launch task for the Project.
    pub(super) fn launch(&mut self, name: &str, plan: LaunchPlan) {
        let others = self.others(name);
        let env = plan.env.clone().or_else(|| self.host.envs.get(name));
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let id = crate::secrets::random_id();
        let progress = plan.progress.clone();
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

    /// The memory each other living (or launching) Instance is counted for.
    pub(super) fn others(&self, except: &str) -> Vec<(String, u64)> {
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
