//! `list`: every Project with its Instance's state, from the published snapshot. It reads
//! neither the state file nor `/proc`, so it stays fast with many Projects.

use super::Manager;
use crate::snapshot::ProjectView;

/// Every Project, by name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectList {
    pub projects: Vec<(String, ProjectView)>,
    /// Notices told once (a migrated state file).
    pub warnings: Vec<String>,
}

pub(crate) fn list(manager: &Manager) -> ProjectList {
    ProjectList {
        projects: manager.snapshot().projects.into_iter().collect(),
        warnings: manager.take_notices(),
    }
}
