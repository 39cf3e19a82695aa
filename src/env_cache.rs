//! Every Project's `.env`, read once and kept in step with the files, so the daemon's hot paths
//! (a Gateway request's token and routing, a relaunch, the idle timeout) never read a file.
//!
//! [`follow`] watches the Sandboxes with inotify and rebuilds the cache, off the async threads,
//! after each burst of changes (every 5 s instead where inotify is unavailable). Project tokens
//! are indexed too: finding which Project a presented token belongs to is one hash lookup, so a
//! request with a wrong token costs O(1) however many `.env` files there are. An operation a
//! user asked for (start, restart) still reads the file itself, to act on the latest edit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Paths;
use crate::project::ProjectName;
use crate::project_env::ProjectEnv;

/// The cached `.env` files.
#[derive(Debug, Default)]
pub(crate) struct EnvCache {
    // A std RwLock: read for one lookup, written only to swap in a rebuilt map; never held across
    // an `.await` nor while a file is read. The token map's keys are hashed with random keys, so
    // lookup timing tells nothing about the tokens it holds.
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    envs: HashMap<String, Arc<ProjectEnv>>,
    tokens: HashMap<String, Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Project(String),
    /// The same token in several `.env` files: it reaches none of them.
    Several,
}

impl EnvCache {
    /// The Project's `.env` as last read, if it was valid.
    pub(crate) fn get(&self, project: &str) -> Option<Arc<ProjectEnv>> {
        self.read().envs.get(project).cloned()
    }

    /// The Project whose `MCP_TOOL_BEARER_TOKEN` is `presented`, if exactly one has it.
    pub(crate) fn token_owner(&self, presented: &str) -> Option<String> {
        match self.read().tokens.get(presented) {
            Some(Owner::Project(name)) => Some(name.clone()),
            Some(Owner::Several) | None => None,
        }
    }

    /// Reads the `.env` of every Project in `projects` (each at most 64 KiB, as `project_env`
    /// enforces; invalid ones are left out) and swaps the result in. Blocking.
    pub(crate) fn rebuild(&self, paths: &Paths, projects: &[String]) {
        let mut next = Inner::default();
        for name in projects {
            let Ok(project) = ProjectName::parse(name) else {
                continue;
            };
            let Ok(env) = crate::project_env::load(&paths.env_file(&project)) else {
                continue;
            };
            let token = env.bearer_token.expose().to_owned();
            if !token.is_empty() {
                next.tokens
                    .entry(token)
                    .and_modify(|owner| *owner = Owner::Several)
                    .or_insert_with(|| Owner::Project(name.clone()));
            }
            next.envs.insert(name.clone(), Arc::new(env));
        }
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Rebuilds the cache now, off the async threads.
pub(crate) async fn refresh(cache: &Arc<EnvCache>, paths: &Paths, projects: Vec<String>) {
    let (cache, paths) = (cache.clone(), paths.clone());
    let _ = tokio::task::spawn_blocking(move || cache.rebuild(&paths, &projects)).await;
}

/// Builds the cache, then keeps it in step with the `.env` files until `cancel` fires. Returns
/// once the first build is done; the following goes on in its own task. `projects` names the
/// Projects to read, each time.
pub(crate) async fn follow(
    cache: Arc<EnvCache>,
    paths: Paths,
    projects: impl Fn() -> Vec<String> + Send + 'static,
    cancel: CancellationToken,
) {
    let sandboxes = paths.sandboxes_dir();
    let _ = crate::atomic_file::private_dir(&sandboxes);
    // Watch first, then read: a change made in between is then seen twice, never missed.
    let watch = crate::fs_watch::DirWatch::new().and_then(|w| {
        w.add(&sandboxes)?;
        Ok(w)
    });
    if let Ok(watch) = &watch {
        add_sandboxes(watch, &sandboxes);
    }
    refresh(&cache, &paths, projects()).await;
    match watch {
        Ok(watch) => {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = watch.changed() => {
                            if let Err(err) = changed {
                                tracing::warn!("watching {} failed ({err}); .env changes are no longer followed", sandboxes.display());
                                return;
                            }
                            add_sandboxes(&watch, &sandboxes);
                            refresh(&cache, &paths, projects()).await;
                        }
                        () = cancel.cancelled() => return,
                    }
                }
            });
        }
        Err(err) => {
            tracing::warn!(
                "cannot watch {} ({err}); .env files are re-read every 5 s",
                sandboxes.display()
            );
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = every.tick() => refresh(&cache, &paths, projects()).await,
                        () = cancel.cancelled() => return,
                    }
                }
            });
        }
    }
}

/// Watches every Sandbox directory (a new Project's appears with its first `start`).
fn add_sandboxes(watch: &crate::fs_watch::DirWatch, sandboxes: &std::path::Path) {
    for entry in std::fs::read_dir(sandboxes)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let _ = watch.add(&entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_env(paths: &Paths, name: &str, token: &str) {
        let project = ProjectName::parse(name).expect("name");
        std::fs::create_dir_all(paths.sandbox(&project)).expect("mkdir");
        std::fs::write(
            paths.env_file(&project),
            format!("GIT_URL=git@h:o/r.git\nSSH_KEY_PATH=/k\nOPENCODE_SERVER_PASSWORD=p-{name}\nMCP_TOOL_BEARER_TOKEN={token}\n"),
        )
        .expect("write");
    }

    #[test]
    fn tokens_map_to_their_project_and_shared_ones_to_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        write_env(&paths, "a", "token-of-a");
        write_env(&paths, "b", "shared");
        write_env(&paths, "c", "shared");
        let cache = EnvCache::default();
        let names = ["a", "b", "c", "missing"].map(String::from);
        cache.rebuild(&paths, &names);
        assert_eq!(cache.token_owner("token-of-a"), Some("a".into()));
        assert_eq!(cache.token_owner("shared"), None);
        assert_eq!(cache.token_owner("nope"), None);
        assert_eq!(
            cache.get("b").expect("b").password.expose(),
            "p-b",
            "the env is cached"
        );
        assert!(cache.get("missing").is_none());
        write_env(&paths, "a", "new-token");
        cache.rebuild(&paths, &names);
        assert_eq!(cache.token_owner("token-of-a"), None);
    }

    #[tokio::test]
    async fn an_edited_env_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        write_env(&paths, "a", "t1");
        let cache = Arc::new(EnvCache::default());
        let cancel = CancellationToken::new();
        follow(
            cache.clone(),
            paths.clone(),
            || vec!["a".to_owned(), "b".to_owned()],
            cancel.clone(),
        )
        .await;
        assert_eq!(cache.token_owner("t1"), Some("a".into()));
        write_env(&paths, "a", "t2");
        write_env(&paths, "b", "t3");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while cache.token_owner("t3").is_none() || cache.token_owner("t2").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not followed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.token_owner("t1"), None);
        cancel.cancel();
    }
}
