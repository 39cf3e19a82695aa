//! `logs`: the tail of a Project's OpenCode log, or of the manager's own log.

use super::{Failure, Manager};
use crate::error::OpError;
use crate::project::ProjectName;

/// Default and maximum number of lines returned.
pub(crate) const DEFAULT_LINES: usize = 50;
pub(crate) const MAX_LINES: usize = 2000;

/// The end of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogTail {
    pub project: Option<String>,
    pub path: String,
    pub lines: Vec<String>,
}

pub(crate) async fn logs(
    manager: &Manager,
    project_name: Option<&str>,
    lines: Option<usize>,
) -> Result<LogTail, Failure> {
    let lines = lines.unwrap_or(DEFAULT_LINES).clamp(1, MAX_LINES);
    let paths = &manager.config().paths;
    let (path, project) = match project_name {
        None => (paths.manager_log(), None),
        Some(name) => {
            let project = ProjectName::parse(name)?;
            if !manager.snapshot().projects.contains_key(project.as_str()) {
                return Err(manager.not_found(&project));
            }
            (paths.project_log(&project), Some(project))
        }
    };
    let shown = path.display().to_string();
    let tail = super::start::blocking(move || crate::logs::tail(&path, lines)).await?;
    let tail = match tail {
        Ok(tail) => tail,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => {
            return Err(OpError::new(
                crate::error::ErrorCode::Internal,
                format!("reading {shown}: {err}"),
                "check the log file's permissions",
            )
            .into());
        }
    };
    Ok(LogTail {
        project: project.map(|p| p.to_string()),
        path: shown,
        lines: tail,
    })
}
