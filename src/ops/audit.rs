//! `audit`: the audit log's entries, optionally for one Project and from a time on. Reads the
//! log (and its rotated generations) off the async threads; changes nothing.

use crate::audit::{Entry, Filter};
use crate::error::OpError;
use crate::ops::Manager;

/// The entries that pass `filter`, oldest first.
pub(crate) async fn audit(manager: &Manager, filter: Filter) -> Result<Vec<Entry>, OpError> {
    if let Some(project) = &filter.project {
        crate::project::ProjectName::parse(project)?;
    }
    let path = manager.config().paths.audit_log();
    tokio::task::spawn_blocking(move || crate::audit::read(&path, &filter))
        .await
        .map_err(|err| OpError::internal(format!("reading the audit log: {err}")))?
        .map_err(|err| OpError::internal(format!("reading the audit log: {err}")))
}
