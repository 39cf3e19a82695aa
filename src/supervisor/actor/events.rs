//! What the Launcher's tasks report (launched, exited, ended, probed, gave up), and the
//! Instances an earlier daemon left running.

use std::sync::Arc;

use super::{Actor, Event, now, started};
use crate::error::OpError;
use crate::lifecycle::{Launched, Launcher, Probed};
use crate::policy::{Observation, Phase, Supervised};
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::state::{Desired, InstanceRecord, State};
use crate::supervisor::Lease;
use crate::supervisor::tracked::{Observed, Process, Then, Waiter};

impl<L: Launcher> Actor<L> {
    /// Takes over the Instances an earlier daemon left running; a wanted Project whose Instance
    /// died meanwhile counts as crashed (and is restarted after the backoff).
    pub(super) fn adopted(&mut self, adopted: Vec<Launched>, state: &State) {
        let now = now();
        for launched in adopted {
            let name = launched.instance.project.to_string();
            let Some(t) = self.projects.get_mut(&name) else {
                continue;
            };
            if t.desired == Desired::Running {
                t.supervised = Supervised::running(now);
            }
            let env = self.host.envs.get(&name);
            self.up(&name, launched, env, true);
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

    pub(super) fn event(&mut self, event: Event) {
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

    pub(super) fn launched(&mut self, name: &str, id: &str, result: Result<Launched, OpError>) {
        let Some(t) = self.projects.get_mut(name) else {
            return;
        };
        let (plan, since) = match std::mem::replace(&mut t.process, Process::None) {
            Process::Launching {
                id: current,
                plan,
                since,
            } if current == id => (plan, since),
            other => {
                t.process = other;
                return;
            }
        };
        match result {
            Ok(launched) => {
                let (proc, port) = (launched.instance.proc, launched.instance.port);
                let pid = proc.pid;
                self.host
                    .metrics
                    .started(name, now().saturating_duration_since(since).as_secs_f64());
                self.up(name, launched, plan.env, plan.by_user);
                let leases = self.leases.clone();
                let Some(t) = self.projects.get_mut(name) else {
                    return;
                };
                for waiter in plan.waiters {
                    match waiter {
                        Waiter::Start(reply) => {
                            let _ = reply.send(Ok(started(t, pid, port)));
                        }
                        Waiter::Call(reply) => {
                            t.calls += 1;
                            let _ = reply.send(Ok(Lease {
                                port,
                                proc,
                                project: name.to_owned(),
                                commands: leases.clone(),
                            }));
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
                        Waiter::Call(reply) => {
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
        // What was queued for memory may fit now that this launch is up (or gone).
        self.unqueue();
    }

    /// Takes a ready Instance, launched with `env`, into the Project's entry and watches for its
    /// exit. Its provider is what it said when `asked`; else the view held from before stays
    /// (launch cleared it if the `.env` changed) and the next probe asks when there is none.
    pub(super) fn up(
        &mut self,
        name: &str,
        launched: Launched,
        env: Option<Arc<ProjectEnv>>,
        asked: bool,
    ) {
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
        if asked {
            t.provider = provider;
        }
        t.launched_env = env;
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

    pub(super) fn exited(&mut self, name: &str, id: &str, how: String) {
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

    pub(super) fn ended(&mut self, name: &str, id: &str) {
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
        self.unqueue();
    }

    pub(super) fn probed(&mut self, name: &str, id: &str, probed: Probed) {
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
        if probed.provider.is_some() {
            t.provider = probed.provider;
        }
        if let Some(used) = probed.cpu {
            t.observed.cpu_sample(now(), used);
        }
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
    pub(super) fn drain(&mut self, name: &str) {
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
}
