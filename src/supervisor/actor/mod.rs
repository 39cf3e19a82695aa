//! The Supervisor's loop over a closed set of messages: commands from the rest of the daemon
//! (`commands`), events from the steps it started (`events`), and its policy's deadlines
//! (`steps`, which also carries out the policy's actions).
//!
//! Each message is handled at once and in order: the actor changes its own state, asks the pure
//! `policy` what to do, starts the Launcher's steps as tasks that report back, and publishes.
//! It never waits on IO itself; state-file writes go to tasks too (the in-memory change is made
//! in order, here).

mod commands;
mod events;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::tracked::{Process, Tracked};
use super::{Command, Started};
use crate::error::OpError;
use crate::lifecycle::{Host, Launched, Launcher, Probed};
use crate::project::ProjectName;
use crate::snapshot::Snapshot;
use crate::state::{InstanceRecord, State};

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
    /// Where a [`Lease`](crate::supervisor::Lease) reports its end.
    leases: mpsc::UnboundedSender<Command>,
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
    leases: mpsc::UnboundedSender<Command>,
    ready: oneshot::Sender<()>,
    cancel: CancellationToken,
) {
    let (events, mut outbox) = mpsc::unbounded_channel();
    let mut actor = Actor {
        host,
        launcher,
        snapshot,
        events,
        leases,
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
            Some(command) = inbox.recv() => {
                // A call to a running Instance and a call's end are activity, which changes
                // nothing anyone sees: no publish.
                let seen = match &command {
                    Command::CallEnded { .. } => false,
                    Command::Call { project, .. } => !actor.is_up(project.as_str()),
                    _ => true,
                };
                actor.command(command);
                if !seen {
                    continue;
                }
            }
            Some(event) = outbox.recv() => actor.event(event),
            () = sleep, if deadline.is_some() => actor.deadlines(),
            () = cancel.cancelled() => break,
        }
        actor.publish();
    }
}

impl<L: Launcher> Actor<L> {
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

    /// Whether the Project's Instance is up and not in a transition.
    fn is_up(&self, name: &str) -> bool {
        self.projects
            .get(name)
            .is_some_and(|t| matches!(t.process, Process::Up { .. }) && t.queued.is_empty())
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
