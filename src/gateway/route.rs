//! Where a Gateway tool call goes: the `server` it names, resolved within the caller's Scope from
//! the snapshot, then a lease on its Instance from the Supervisor (a parked Project is started
//! first; a leased Instance is not parked under the call), and what a failed call to that
//! Instance means for the user. Reads no file: the route comes from the snapshot, the password
//! from the `.env` cache.

use std::time::Duration;

use crate::front_door::Scope;
use crate::instance::api::{ApiError, InstanceApi};
use crate::ops::Manager;
use crate::project::ProjectName;
use crate::snapshot::{InstanceState, Snapshot};
use crate::supervisor::Lease;

/// Where a call goes, as the snapshot says.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Its Instance runs.
    Running(ProjectName),
    /// Parked, or being started: start it (or join that start) first.
    Resume(ProjectName),
}

/// Where one Gateway call goes: the Project, a client for its Instance, and the lease that keeps
/// the Instance from being parked until the call is answered (dropping it ends the call).
pub(super) struct Target {
    pub project: String,
    pub api: InstanceApi,
    pub lease: Lease,
}

/// The Project a call is for, resolved from the snapshot (read in place, never copied), and a
/// lease on its Instance from the Supervisor, which starts a parked Project (or waits for the
/// start or end under way) before it answers.
pub(super) async fn target(
    manager: &Manager,
    scope: &Scope,
    server: Option<String>,
) -> Result<Target, String> {
    let (Route::Running(project) | Route::Resume(project)) =
        decide(&manager.subscribe().borrow(), scope, server)?;
    let lease = crate::ops::resume::resume(manager, &project).await?;
    let env = manager
        .envs()
        .get(project.as_str())
        .ok_or_else(|| format!("the .env of project {project} is missing or invalid"))?;
    Ok(Target {
        project: project.to_string(),
        api: InstanceApi::new(lease.port, env.password.clone()),
        lease,
    })
}

/// Resolves `server` within `scope`: the named Project, the token's own, or the only one
/// serving; and refuses what the scope does not reach, naming nothing beyond it.
fn decide(snapshot: &Snapshot, scope: &Scope, server: Option<String>) -> Result<Route, String> {
    // A parked Project counts: it is started on demand.
    let serving = |state: InstanceState| {
        matches!(
            state,
            InstanceState::Running | InstanceState::Unhealthy | InstanceState::Idle
        )
    };
    let name = match (server, scope) {
        (Some(name), _) => name,
        (None, Scope::Project(own)) => own.clone(),
        (None, Scope::All) => {
            let running: Vec<&String> = snapshot
                .projects
                .iter()
                .filter(|(_, view)| serving(view.state))
                .map(|(name, _)| name)
                .collect();
            match running.as_slice() {
                [only] => (*only).clone(),
                [] => {
                    return Err(format!(
                        "No OpenCode server is running. Available servers: {}",
                        list(snapshot.projects.keys())
                    ));
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|n| n.as_str()).collect();
                    return Err(format!(
                        "Several OpenCode servers are running; pass server, one of: {}",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    // A project's token learns nothing about other projects, not even their names.
    if let Scope::Project(own) = scope
        && own != &name
    {
        return Err(format!("this token reaches only project {own}, not {name}"));
    }
    let found = ProjectName::parse(&name).ok().and_then(|project| {
        snapshot
            .projects
            .get(project.as_str())
            .map(|view| (project, view))
    });
    let Some((project, view)) = found else {
        return Err(format!(
            "OpenCode server not found: \"{name}\". Available servers: {}",
            list(snapshot.projects.keys())
        ));
    };
    match (view.state, view.port) {
        (InstanceState::Running | InstanceState::Unhealthy, Some(_)) => Ok(Route::Running(project)),
        (InstanceState::Idle | InstanceState::Starting, _) => Ok(Route::Resume(project)),
        _ => Err(format!(
            "project {name} is not running; start it with opencode_start (or opencode-manager start {name})"
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ProjectView;
    use crate::state::Desired;

    fn snapshot(projects: &[(&str, InstanceState, Option<u16>)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (name, state, port) in projects {
            let mut view = ProjectView::example(Desired::Running, *state, None);
            view.port = *port;
            snapshot.projects.insert((*name).to_owned(), view);
        }
        snapshot
    }

    fn name(n: &str) -> ProjectName {
        ProjectName::parse(n).expect("name")
    }

    #[test]
    fn a_call_goes_to_the_named_project_or_the_only_one_serving() {
        let one = snapshot(&[
            ("a", InstanceState::Running, Some(4101)),
            ("b", InstanceState::Stopped, None),
        ]);
        assert_eq!(
            decide(&one, &Scope::All, None),
            Ok(Route::Running(name("a")))
        );
        assert_eq!(
            decide(&one, &Scope::All, Some("a".into())),
            Ok(Route::Running(name("a")))
        );
        let err = decide(&one, &Scope::All, Some("b".into())).expect_err("stopped");
        assert!(err.starts_with("project b is not running"), "{err}");
        let err = decide(&one, &Scope::All, Some("zz".into())).expect_err("unknown");
        assert_eq!(
            err,
            "OpenCode server not found: \"zz\". Available servers: a, b"
        );
        let two = snapshot(&[
            ("a", InstanceState::Running, Some(1)),
            ("b", InstanceState::Idle, None),
        ]);
        let err = decide(&two, &Scope::All, None).expect_err("ambiguous");
        assert_eq!(
            err,
            "Several OpenCode servers are running; pass server, one of: a, b"
        );
        assert_eq!(
            decide(&two, &Scope::All, Some("b".into())),
            Ok(Route::Resume(name("b")))
        );
        let none = snapshot(&[]);
        let err = decide(&none, &Scope::All, None).expect_err("nothing");
        assert_eq!(
            err,
            "No OpenCode server is running. Available servers: none"
        );
    }

    #[test]
    fn a_project_token_reaches_its_own_project_and_names_no_other() {
        let two = snapshot(&[
            ("a", InstanceState::Running, Some(1)),
            ("b", InstanceState::Running, Some(2)),
        ]);
        let own = Scope::Project("b".into());
        assert_eq!(decide(&two, &own, None), Ok(Route::Running(name("b"))));
        let err = decide(&two, &own, Some("a".into())).expect_err("other project");
        assert_eq!(err, "this token reaches only project b, not a");
        let err = decide(&two, &own, Some("zz".into())).expect_err("unknown");
        assert_eq!(err, "this token reaches only project b, not zz");
    }
}
