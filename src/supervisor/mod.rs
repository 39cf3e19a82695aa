//! The Supervisor: one actor that owns the runtime state of every Project's Instance.
//!
//! Everything that changes an Instance is a message to it: the commands of [`Handle`] (start,
//! restart, stop, a Gateway call and its end, register, forget) and the events of the steps it
//! hands to its [`Launcher`] (launched, exited, probed, ended), each reported the moment it
//! happens (an exit is a pidfd or `wait` becoming ready, not a poll). Its decisions come from the
//! pure `policy`; its only timers are the policy's deadlines (backoff, next probe, idle). After
//! every message it publishes the Projects' part of the [`Snapshot`]. It imports nothing from
//! `ops` or `gateway`; slow work runs in the Launcher's tasks, never in the actor.

mod actor;
mod budget;
#[cfg(test)]
mod tests;
mod tracked;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorCode, OpError};
use crate::instance::confine::Isolation;
use crate::lifecycle::{Host, Launcher, Progress};
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;
use crate::snapshot::{ProviderView, Snapshot};

/// A ready Instance, as a start or restart reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Started {
    pub pid: i32,
    pub port: u16,
    pub started_at: String,
    pub provider: Option<ProviderView>,
    pub isolation: Isolation,
}

/// A Gateway call under way on a Project's Instance. While any lives, the Supervisor does not
/// park that Instance to make room for another; dropping it ends the call (and is activity).
pub(crate) struct Lease {
    pub port: u16,
    /// The leased Instance's process: another launch, even on the same port, has another.
    pub proc: crate::state::ProcIdentity,
    project: String,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::CallEnded {
            project: std::mem::take(&mut self.project),
        });
    }
}

/// The messages the actor takes.
pub(crate) enum Command {
    /// A Project was created: show it (its record is in the store).
    Register { project: ProjectName },
    /// The user wants it running: launch it now with this `.env`, or join the launch under way.
    Start {
        project: ProjectName,
        env: Arc<ProjectEnv>,
        progress: Progress,
        reply: oneshot::Sender<Result<Started, OpError>>,
    },
    /// End the Instance (if any) and launch it again with this `.env`.
    Restart {
        project: ProjectName,
        env: Arc<ProjectEnv>,
        progress: Progress,
        reply: oneshot::Sender<Result<Started, OpError>>,
    },
    /// The user wants it stopped; the reply says whether an Instance was running.
    Stop {
        project: ProjectName,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    /// A Gateway call for the Project (activity): start it first if it is parked; the reply is
    /// a [`Lease`] on its Instance.
    Call {
        project: ProjectName,
        reply: oneshot::Sender<Result<Lease, String>>,
    },
    /// A Gateway call's [`Lease`] ended.
    CallEnded { project: String },
    /// The Project was destroyed.
    Forget { project: String },
}

/// The actor's address. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handle {
    commands: mpsc::UnboundedSender<Command>,
}

fn gone() -> OpError {
    OpError::new(
        ErrorCode::Internal,
        "the supervisor is not running (the daemon is shutting down)",
        "run the command again",
    )
}

impl Handle {
    /// Launches the Project's Instance (the user wants it running) and waits until it is ready.
    pub(crate) async fn start(
        &self,
        project: ProjectName,
        env: Arc<ProjectEnv>,
        progress: Progress,
    ) -> Result<Started, OpError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Start {
            project,
            env,
            progress,
            reply,
        });
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Ends the Project's Instance and launches it again; waits until it is ready.
    pub(crate) async fn restart(
        &self,
        project: ProjectName,
        env: Arc<ProjectEnv>,
        progress: Progress,
    ) -> Result<Started, OpError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Restart {
            project,
            env,
            progress,
            reply,
        });
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Stops the Project (for good: the Supervisor will not start it again); returns whether an
    /// Instance was running.
    pub(crate) async fn stop(&self, project: ProjectName, reason: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Stop {
            project,
            reason: reason.to_owned(),
            reply,
        });
        answer.await.unwrap_or(false)
    }

    /// A Gateway call for the Project: a lease on its running Instance, starting it first if it
    /// is parked (or joining the start or end under way). Counts as activity.
    pub(crate) async fn call(&self, project: ProjectName) -> Result<Lease, String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Call { project, reply });
        answer
            .await
            .unwrap_or_else(|_| Err("the daemon is shutting down".into()))
    }

    /// Makes a new Project known (shown in the snapshot).
    pub(crate) fn register(&self, project: ProjectName) {
        self.send(Command::Register { project });
    }

    /// Forgets a destroyed Project.
    pub(crate) fn forget(&self, project: &str) {
        self.send(Command::Forget {
            project: project.to_owned(),
        });
    }

    fn send(&self, command: Command) {
        // A closed channel means the actor ended with the daemon; each caller's reply says so.
        let _ = self.commands.send(command);
    }
}

/// Starts the actor and returns once it has adopted what an earlier daemon left running; it then
/// serves until `cancel` fires, publishing into `snapshot`.
pub(crate) async fn spawn<L: Launcher>(
    host: Arc<Host>,
    launcher: Arc<L>,
    snapshot: Arc<watch::Sender<Snapshot>>,
    cancel: CancellationToken,
) -> Handle {
    let (commands, inbox) = mpsc::unbounded_channel();
    let (ready, adopted) = oneshot::channel();
    let leases = commands.clone();
    tokio::spawn(actor::run(
        host, launcher, snapshot, inbox, leases, ready, cancel,
    ));
    let _ = adopted.await;
    Handle { commands }
}
