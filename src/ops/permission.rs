//! Answering a permission request of a Project's running Instance: allow once, always, or
//! reject (`POST /permission/<id>/reply`), as the dashboard's buttons do. The Gateway's
//! `opencode-permission-reply` tool makes the same call for its MCP clients.

use std::time::Duration;

use crate::error::{ErrorCode, OpError};
use crate::instance::api::InstanceApi;
use crate::ops::Manager;
use crate::project::ProjectName;

/// The answers OpenCode accepts.
const ANSWERS: [&str; 3] = ["once", "always", "reject"];

/// Sends `answer` to the permission request `id` of `project_name`'s Instance.
pub(crate) async fn reply(
    manager: &Manager,
    project_name: &str,
    id: &str,
    answer: &str,
) -> Result<(), OpError> {
    let project = ProjectName::parse(project_name)?;
    if !ANSWERS.contains(&answer) {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            format!("{answer:?} is not an answer to a permission request"),
            "answer once, always or reject",
        ));
    }
    let well_formed = id.len() > 4
        && id.len() <= 128
        && id.starts_with("per_")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !well_formed {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            format!("{id:?} is not a permission request id"),
            "ids look like per_…; the project's page lists the pending ones",
        ));
    }
    let port = {
        let snapshot = manager.subscribe();
        let snapshot = snapshot.borrow();
        snapshot
            .projects
            .get(project.as_str())
            .and_then(|v| v.pid.and(v.port))
    };
    let (Some(port), Some(env)) = (port, manager.envs().get(project.as_str())) else {
        return Err(OpError::new(
            ErrorCode::ProjectNotRunning,
            format!("project {project} is not running, so nothing waits for an answer"),
            format!("start it with opencode-manager restart {project}"),
        ));
    };
    let api = InstanceApi::new(port, env.password.clone());
    api.call(
        reqwest::Method::POST,
        &format!("/permission/{id}/reply"),
        Some(&serde_json::json!({ "reply": answer })),
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
    .map_err(|err| {
        OpError::new(
            ErrorCode::OpencodeUnhealthy,
            format!("OpenCode of {project} did not take the answer: {err}"),
            "the request may have been answered already; reload the project's page",
        )
    })
}
