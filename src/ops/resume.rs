//! `resume`: the port of a Project a Gateway call needs, starting it first if it is parked. Not a
//! tool of its own: the Gateway's calls use it. A start already under way is joined.

use super::Manager;
use crate::project::ProjectName;

pub(crate) async fn resume(manager: &Manager, project: &ProjectName) -> Result<u16, String> {
    manager.supervisor().touch(project.as_str());
    manager.supervisor().resume(project.clone()).await
}
