//! `logs`: the tail of a Project's OpenCode log, or of the manager's own log.

use super::Manager;
use crate::error::ErrorCode;
use crate::project::ProjectName;
use crate::reply::{Reply, Status};

/// Default and maximum number of lines returned.
pub const DEFAULT_LINES: usize = 50;
pub const MAX_LINES: usize = 2000;

pub fn logs(manager: &Manager, project_name: Option<&str>, lines: Option<usize>) -> Reply {
    let lines = lines.unwrap_or(DEFAULT_LINES).clamp(1, MAX_LINES);
    let paths = &manager.config().paths;
    let (path, project) = match project_name {
        None => (paths.manager_log(), None),
        Some(name) => {
            let project = match ProjectName::parse(name) {
                Ok(project) => project,
                Err(err) => return err.into(),
            };
            if !manager
                .store()
                .snapshot()
                .projects
                .contains_key(project.as_str())
            {
                return Reply::not_found(project.as_str(), &manager.known_projects());
            }
            (paths.project_log(&project), Some(project))
        }
    };
    let tail = match crate::logs::tail(&path, lines) {
        Ok(tail) => tail,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => {
            return Reply::error(
                ErrorCode::Internal,
                format!("reading {}: {err}", path.display()),
                "check the log file's permissions",
            );
        }
    };
    let mut reply = Reply::new(
        Status::Success,
        format!("last {} line(s) of {}", tail.len(), path.display()),
    );
    reply.project = project.map(|p| p.to_string());
    reply.log_path = Some(path.display().to_string());
    reply.lines = Some(tail);
    reply
}
