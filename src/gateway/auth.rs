//! Who a gateway request speaks for: the global token reaches every Project, a Project's own
//! `MCP_TOOL_BEARER_TOKEN` (from its `.env`) reaches only that Project.
//!
//! Project tokens live in a [`TokenIndex`] in memory, so checking a presented token is one hash
//! lookup, whatever the number of Projects or the size of their `.env` files: a request with a
//! wrong token costs the daemon O(1). [`follow`] keeps the index in step with the `.env` files:
//! it watches the Sandboxes with inotify and rebuilds the index, off the async threads, when a
//! `.env` is written, moved or removed. Tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::config::Paths;
use crate::front_door::{self, Scope};
use crate::ops::Manager;
use crate::project::ProjectName;
use crate::secrets::Secret;

/// The global token: `GLOBAL_MCP_BEARER_TOKEN`, else one generated once into
/// `<home>/global-mcp-token` (0600).
pub fn global_token(paths: &Paths) -> std::io::Result<(Secret, front_door::TokenSource)> {
    front_door::load_token("GLOBAL_MCP_BEARER_TOKEN", &paths.global_token_file())
}

/// Project tokens, by token.
#[derive(Debug, Default)]
pub struct TokenIndex {
    // A std RwLock: read for one lookup, written only to swap in a rebuilt map; never held
    // across an `.await`. The key is hashed with the map's random keys, so lookup timing tells
    // nothing about other tokens.
    tokens: RwLock<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Project(String),
    /// The same token in several `.env` files: it reaches none of them.
    Ambiguous,
}

impl TokenIndex {
    /// The scope of a presented token, if it is one of ours. `global` is checked first.
    pub fn scope_of(&self, presented: &str, global: &Secret) -> Option<Scope> {
        if front_door::matches(presented, global.expose()) {
            return Some(Scope::All);
        }
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        match tokens.get(presented) {
            Some(Entry::Project(name)) => Some(Scope::Project(name.clone())),
            Some(Entry::Ambiguous) | None => None,
        }
    }

    fn replace(&self, tokens: HashMap<String, Entry>) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
    }

    /// Reads every known Project's `.env` (each at most 64 KiB, as `project_env` enforces) and
    /// swaps the result in. Blocking: run it off the async threads.
    pub fn rebuild(&self, paths: &Paths, projects: &[String]) {
        let mut tokens: HashMap<String, Entry> = HashMap::new();
        for name in projects {
            let Ok(project) = ProjectName::parse(name) else {
                continue;
            };
            let Ok(env) = crate::project_env::load(&paths.env_file(&project)) else {
                continue;
            };
            let token = env.bearer_token.expose().to_owned();
            if token.is_empty() {
                continue;
            }
            tokens
                .entry(token)
                .and_modify(|e| *e = Entry::Ambiguous)
                .or_insert_with(|| Entry::Project(name.clone()));
        }
        self.replace(tokens);
    }
}

/// Rebuilds the index now (off the async threads) from the recorded Projects.
pub async fn refresh(manager: &Manager) {
    let manager = manager.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let projects = manager.known_projects();
        manager
            .gateway()
            .tokens()
            .rebuild(&manager.config().paths, &projects);
    })
    .await;
}

/// Builds the index, then keeps it in step with the `.env` files until `cancel` fires: one
/// rebuild after each burst of changes in the Sandboxes. Returns once the first build is done;
/// the following runs in its own task. Where inotify is unavailable, rebuilds every few seconds
/// instead (and says so in the log).
pub async fn follow(manager: Manager, cancel: CancellationToken) {
    let sandboxes = manager.config().paths.sandboxes_dir();
    let _ = crate::atomic_file::private_dir(&sandboxes);
    // Watch first, then read: a change made in between is then seen twice, never missed.
    let watcher = Watcher::new(&sandboxes);
    refresh(&manager).await;
    let watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(
                "cannot watch {} ({err}); project tokens are re-read every 5 s",
                sandboxes.display()
            );
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = every.tick() => refresh(&manager).await,
                        () = cancel.cancelled() => return,
                    }
                }
            });
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = watcher.changed() => {
                    if let Err(err) = changed {
                        tracing::warn!("watching the sandboxes failed ({err}); project tokens are no longer followed");
                        return;
                    }
                    watcher.watch_sandboxes(&sandboxes);
                    refresh(&manager).await;
                }
                () = cancel.cancelled() => return,
            }
        }
    });
}

/// An inotify watch on the Sandboxes directory (Projects appear and go) and on each Sandbox
/// (its `.env` is written, renamed into place or removed).
struct Watcher {
    fd: AsyncFd<std::os::fd::OwnedFd>,
}

impl Watcher {
    fn new(sandboxes: &std::path::Path) -> std::io::Result<Watcher> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &fd,
            sandboxes,
            inotify::WatchFlags::CREATE
                | inotify::WatchFlags::DELETE
                | inotify::WatchFlags::MOVED_FROM
                | inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::ONLYDIR,
        )?;
        #[allow(unsafe_code)]
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole life.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                .map_err(std::io::Error::from)?
        };
        let watcher = Watcher { fd };
        watcher.watch_sandboxes(sandboxes);
        Ok(watcher)
    }

    /// Watches every Sandbox directory (again: a watch on a watched path is kept as it is).
    fn watch_sandboxes(&self, sandboxes: &std::path::Path) {
        for entry in std::fs::read_dir(sandboxes)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let _ = inotify::add_watch(
                self.fd.get_ref(),
                entry.path(),
                inotify::WatchFlags::CLOSE_WRITE
                    | inotify::WatchFlags::MOVED_TO
                    | inotify::WatchFlags::MOVED_FROM
                    | inotify::WatchFlags::DELETE
                    | inotify::WatchFlags::ONLYDIR,
            );
        }
    }

    /// Waits for a change, then drains every event queued with it (a burst is one change).
    async fn changed(&self) -> std::io::Result<()> {
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut ready = self.fd.readable().await?;
            let mut seen = false;
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut buffer);
            loop {
                match reader.next() {
                    Ok(_) => seen = true,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(err) => return Err(err.into()),
                }
            }
            ready.clear_ready();
            if seen {
                return Ok(());
            }
        }
    }
}

/// The door's check for the gateway: the global token, then the index.
pub fn authorizer(
    tokens: Arc<TokenIndex>,
    global: Secret,
) -> impl Fn(&str) -> Option<Scope> + Send + Sync + 'static {
    move |presented| tokens.scope_of(presented, &global)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_env(paths: &Paths, name: &str, token: &str) {
        let project = ProjectName::parse(name).expect("name");
        std::fs::create_dir_all(paths.sandbox(&project)).expect("mkdir");
        std::fs::write(
            paths.env_file(&project),
            format!("GIT_URL=git@h:o/r.git\nSSH_KEY_PATH=/k\nOPENCODE_SERVER_PASSWORD=p\nMCP_TOOL_BEARER_TOKEN={token}\n"),
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
        let index = TokenIndex::default();
        let names = ["a", "b", "c", "missing"].map(String::from);
        index.rebuild(&paths, &names);
        let global = Secret::new("global".into());
        assert_eq!(index.scope_of("global", &global), Some(Scope::All));
        assert_eq!(
            index.scope_of("token-of-a", &global),
            Some(Scope::Project("a".into()))
        );
        assert_eq!(index.scope_of("shared", &global), None);
        assert_eq!(index.scope_of("nope", &global), None);
        write_env(&paths, "a", "new-token");
        index.rebuild(&paths, &names);
        assert_eq!(index.scope_of("token-of-a", &global), None);
    }

    #[tokio::test]
    async fn the_watcher_wakes_when_a_sandbox_env_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        std::fs::create_dir_all(paths.sandboxes_dir()).expect("mkdir");
        write_env(&paths, "a", "t1");
        let watcher = Watcher::new(&paths.sandboxes_dir()).expect("inotify");
        write_env(&paths, "a", "t2");
        tokio::time::timeout(Duration::from_secs(10), watcher.changed())
            .await
            .expect("an event for the .env write")
            .expect("read events");
        // A new Sandbox is seen, then its .env.
        write_env(&paths, "b", "t3");
        tokio::time::timeout(Duration::from_secs(10), watcher.changed())
            .await
            .expect("an event for the new sandbox")
            .expect("read events");
    }
}
