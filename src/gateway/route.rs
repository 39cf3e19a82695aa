//! Where a Gateway tool call goes: the `server` it names, resolved within the caller's Scope from
//! the snapshot (a parked Project is started first), and what a failed call to that Instance
//! means for the user. Reads no file: the route comes from the snapshot, the password from the
//! `.env` cache.

use std::time::Duration;

use crate::front_door::Scope;
use crate::instance::api::{ApiError, InstanceApi};
use crate::ops::Manager;
use crate::project::ProjectName;
use crate::snapshot::InstanceState;

/// The Project a call is for, and a client for its Instance. Routed from the snapshot; a
/// parked Project (or one starting) is started, or its start joined, before the call.
pub(super) async fn target(
    manager: &Manager,
    scope: &Scope,
    server: Option<String>,
) -> Result<(String, InstanceApi), String> {
    let snapshot = manager.snapshot();
    let serving = |state: InstanceState| {
        // A parked Project counts: it is started on demand.
        matches!(
            state,
            InstanceState::Running | InstanceState::Unhealthy | InstanceState::Idle
        )
    };
    let running: Vec<String> = snapshot
        .projects
        .iter()
        .filter(|(_, view)| serving(view.state))
        .map(|(name, _)| name.clone())
        .collect();
    let name = match (server, scope) {
        (Some(name), _) => name,
        (None, Scope::Project(own)) => own.clone(),
        (None, Scope::All) => match running.as_slice() {
            [only] => only.clone(),
            [] => {
                return Err(format!(
                    "No OpenCode server is running. Available servers: {}",
                    list(snapshot.projects.keys())
                ));
            }
            many => {
                return Err(format!(
                    "Several OpenCode servers are running; pass server, one of: {}",
                    many.join(", ")
                ));
            }
        },
    };
    // A project's token learns nothing about other projects, not even their names.
    if let Scope::Project(own) = scope
        && own != &name
    {
        return Err(format!("this token reaches only project {own}, not {name}"));
    }
    let Some(view) = ProjectName::parse(&name)
        .ok()
        .and_then(|p| snapshot.projects.get(p.as_str()))
    else {
        return Err(format!(
            "OpenCode server not found: \"{name}\". Available servers: {}",
            list(snapshot.projects.keys())
        ));
    };
    let project = ProjectName::parse(&name).map_err(|err| err.message)?;
    let port = match (view.state, view.port) {
        (InstanceState::Running | InstanceState::Unhealthy, Some(port)) => {
            manager.supervisor().touch(&name);
            port
        }
        // Parked for lack of activity, or being started: wait for that start.
        (InstanceState::Idle | InstanceState::Starting, _) => {
            crate::ops::resume::resume(manager, &project).await?
        }
        _ => {
            return Err(format!(
                "project {name} is not running; start it with opencode_start (or opencode-manager start {name})"
            ));
        }
    };
    let env = manager
        .envs()
        .get(project.as_str())
        .ok_or_else(|| format!("the .env of project {name} is missing or invalid"))?;
    Ok((name, InstanceApi::new(port, env.password.clone())))
}

/// Turns a failed call into a message that says what happened to the Project.
pub(super) async fn explain(project: &str, api: &InstanceApi, err: ApiError) -> String {
    match &err {
        ApiError::Connect(_) | ApiError::Body(_) | ApiError::Timeout(_) => {
            let still_up = api.health(Duration::from_millis(500)).await.is_ok();
            if still_up {
                format!("OpenCode of {project}: {err}")
            } else {
                format!(
                    "the OpenCode server of {project} stopped answering ({err}); it may have been stopped or crashed: check opencode_status"
                )
            }
        }
        ApiError::Status { status: 500, body } if body.contains("UnknownError") => format!(
            "OpenCode of {project} failed with an internal error ({body}); this usually means no usable model provider \
             or an unknown model: opencode_status shows the provider, and the project's log has the details"
        ),
        _ => format!("OpenCode of {project}: {err}"),
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
