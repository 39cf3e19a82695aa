//! `resume`: the Instance a Gateway call needs, leased for the call (so it is not parked under
//! it), starting it first if it is parked. Not a tool of its own: every Gateway call uses it. A
//! start or end already under way is waited for.

use super::Manager;
use crate::project::ProjectName;
use crate::supervisor::Lease;

pub(crate) async fn resume(manager: &Manager, project: &ProjectName) -> Result<Lease, String> {
    manager.supervisor().call(project.clone()).await
}
