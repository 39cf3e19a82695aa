//! The commands the rest of the daemon sends: start, restart, stop, a Gateway call and its end,
//! register, forget. A command for a Project in the middle of a launch or an end waits its turn.

use super::{Actor, now, started};
use crate::error::{ErrorCode, OpError};
use crate::lifecycle::{Ending, Launcher};
use crate::policy::{Observation, Phase, Supervised};
use crate::state::{Desired, InstanceRecord};
use crate::supervisor::tracked::{LaunchPlan, Process, Then, Tracked, Waiter};
use crate::supervisor::{Command, Lease};

impl<L: Launcher> Actor<L> {
    pub(super) fn command(&mut self, command: Command) {
        match command {
            Command::Register { project } => {
                self.tracked(project.as_str());
            }
            Command::CallEnded { project } => {
                let Some(t) = self.projects.get_mut(&project) else {
                    return;
                };
                t.calls = t.calls.saturating_sub(1);
                let settled = t.calls == 0;
                self.observe(&project, Observation::Activity);
                // A launch may have waited for this Instance's calls to end.
                if settled {
                    self.unqueue();
                }
            }
            Command::Forget { project } => {
                self.projects.remove(&project);
            }
            command => {
                let name = match &command {
                    Command::Start { project, .. }
                    | Command::Restart { project, .. }
                    | Command::Stop { project, .. }
                    | Command::Call { project, .. } => project.to_string(),
                    Command::Register { .. }
                    | Command::CallEnded { .. }
                    | Command::Forget { .. } => {
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
    pub(super) fn tracked(&mut self, name: &str) -> Option<&mut Tracked> {
        if !self.projects.contains_key(name) {
            let record = self.host.store.snapshot().projects.get(name).cloned()?;
            self.projects
                .insert(name.to_owned(), Tracked::from_record(&record, now()));
        }
        self.projects.get_mut(name)
    }

    pub(super) fn run_command(&mut self, command: Command) {
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
            Command::Call { project, reply } => {
                let name = project.to_string();
                self.observe(&name, Observation::Activity);
                let leases = self.leases.clone();
                let Some(t) = self.projects.get_mut(&name) else {
                    return;
                };
                match (&t.process, &t.supervised.phase, t.desired) {
                    (Process::Up { instance, .. }, _, _) => {
                        t.calls += 1;
                        // Dropped unsent (the caller went away), the lease ends the call.
                        let _ = reply.send(Ok(Lease {
                            port: instance.port,
                            proc: instance.proc,
                            project: name,
                            commands: leases,
                        }));
                    }
                    (Process::None, Phase::Idle { .. }, Desired::Running) => {
                        tracing::info!(project = %name, "starting parked opencode on demand");
                        t.pending.push(Waiter::Call(reply));
                        self.observe(&name, Observation::Demand);
                    }
                    _ => {
                        let _ = reply.send(Err(format!(
                            "project {name} is not running; start it with opencode_start (or opencode-manager start {name})"
                        )));
                    }
                }
            }
            Command::Register { .. } | Command::CallEnded { .. } | Command::Forget { .. } => {}
        }
    }

    /// Records the user's wish, in memory now and on disk soon.
    pub(super) fn want(&mut self, name: &str, desired: Desired) {
        if let Some(t) = self.projects.get_mut(name) {
            t.desired = desired;
        }
        self.persist(|s| {
            if let Some(r) = s.projects.get_mut(name) {
                r.desired = desired;
            }
        });
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
        Command::Call { reply, .. } => {
            let _ = reply.send(Err(format!("project {name} not found")));
        }
        Command::Register { .. } | Command::CallEnded { .. } | Command::Forget { .. } => {}
    }
}
