//! The only reader and writer of `opencode-state.json`.
//!
//! The daemon holds the [`State`] in memory and writes through on every change, off the async
//! threads: under a sidecar lock (`opencode-state.lock`, since the rename swaps the JSON file's
//! inode), to a 0600 temp file, fsync, rename, fsync of the directory. Changes are numbered, and a
//! write never replaces a newer one already on disk. The state holds intent and launch identity;
//! observations (health, memory, sessions) stay in memory. An unreadable or corrupt file is refused and left exactly
//! as it is (the daemon then does not start, so nothing acts on a guess); a file from the Python
//! original is backed up to `opencode-state.json.backup` and migrated.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::State;
use super::migrate::{self, Loaded, MigrateError};
use crate::atomic_file;
use crate::config::Paths;
use crate::error::ErrorCode;

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("state file {path} is unusable: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unusable { .. } => ErrorCode::StateCorrupt,
            StoreError::Io { .. } => ErrorCode::Internal,
        }
    }
}

/// The in-memory state and its file.
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    lock_path: PathBuf,
    // A std mutex: held to change and serialise the state, never across an `.await` nor a write.
    // The number counts changes.
    state: Mutex<(State, u64)>,
    /// The number of the change last written; held while a write is under way, so writes happen
    /// one at a time and in order.
    written: tokio::sync::Mutex<u64>,
}

/// A change made in memory, to be written.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    text: Vec<u8>,
    number: u64,
}

/// What happened while opening, for the log and for replies.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    pub notices: Vec<String>,
}

impl Store {
    /// Loads the state file, migrating or moving aside what needs it.
    pub(crate) fn open(paths: &Paths) -> Result<(Store, OpenReport), StoreError> {
        let path = paths.state_file();
        let lock_path = paths.state_lock();
        let mut report = OpenReport::default();
        let _lock = lock(&lock_path)?;
        let state = match std::fs::read_to_string(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(StoreError::Unusable {
                    path,
                    reason: format!("it cannot be read ({source})"),
                });
            }
            Ok(text) => match migrate::from_json(&text) {
                Ok(Loaded::Current(state)) => state,
                Ok(Loaded::Migrated { state, from, notes }) => {
                    let backup = PathBuf::from(format!("{}.backup", path.display()));
                    atomic_file::replace(&backup, text.as_bytes(), atomic_file::PRIVATE).map_err(
                        |source| StoreError::Io {
                            action: "writing backup",
                            path: backup.clone(),
                            source,
                        },
                    )?;
                    write(&path, &state)?;
                    report.notices.push(format!(
                        "migrated {} from the Python original's {} format; the old file is kept at {}",
                        path.display(),
                        from.label(),
                        backup.display()
                    ));
                    report.notices.extend(notes);
                    state
                }
                Err(MigrateError::TooNew(version)) => {
                    return Err(StoreError::Unusable {
                        path,
                        reason: format!(
                            "it has version {version}, newer than this program understands; upgrade opencode-manager"
                        ),
                    });
                }
                Err(err) => {
                    return Err(StoreError::Unusable {
                        path,
                        reason: format!("it is not a state file this program can read ({err})"),
                    });
                }
            },
        };
        Ok((
            Store {
                path,
                lock_path,
                state: Mutex::new((state, 0)),
                written: tokio::sync::Mutex::new(0),
            },
            report,
        ))
    }

    /// A copy of the current state.
    pub(crate) fn snapshot(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .clone()
    }

    /// Applies `change` in memory at once, then persists it (on a blocking thread) before
    /// returning. A failed write leaves the change in memory; the next write carries it.
    pub(crate) async fn update<R>(
        &self,
        change: impl FnOnce(&mut State) -> R,
    ) -> Result<R, StoreError> {
        let (out, pending) = self.change(change)?;
        if let Some(pending) = pending {
            self.write(pending).await?;
        }
        Ok(out)
    }

    /// Applies `change` in memory now; the returned write (if anything changed) persists it.
    /// For a caller that must not wait (the Supervisor), which hands the write to a task.
    pub(crate) fn change<R>(
        &self,
        change: impl FnOnce(&mut State) -> R,
    ) -> Result<(R, Option<PendingWrite>), StoreError> {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = guard.0.clone();
        let out = change(&mut next);
        if next == guard.0 {
            return Ok((out, None));
        }
        let text = serialise(&self.path, &next)?;
        guard.0 = next;
        guard.1 += 1;
        Ok((
            out,
            Some(PendingWrite {
                text,
                number: guard.1,
            }),
        ))
    }

    /// Persists a change made with [`Store::change`], unless a later one is on disk already.
    pub(crate) async fn write(&self, pending: PendingWrite) -> Result<(), StoreError> {
        let PendingWrite { text, number } = pending;
        let mut written = self.written.lock().await;
        if *written >= number {
            // A later change, which includes this one, is on disk already.
            return Ok(());
        }
        let (path, lock_path) = (self.path.clone(), self.lock_path.clone());
        tokio::task::spawn_blocking(move || {
            let _lock = lock(&lock_path)?;
            write_text(&path, &text)
        })
        .await
        .map_err(|err| StoreError::Io {
            action: "writing",
            path: self.path.clone(),
            source: std::io::Error::other(err),
        })??;
        *written = number;
        Ok(())
    }
}

fn lock(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| StoreError::Io {
            action: "opening lock",
            path: path.to_owned(),
            source,
        })?;
    file.lock().map_err(|source| StoreError::Io {
        action: "locking",
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

fn serialise(path: &Path, state: &State) -> Result<Vec<u8>, StoreError> {
    let mut text = serde_json::to_vec_pretty(state).map_err(|err| StoreError::Io {
        action: "serialising state for",
        path: path.to_owned(),
        source: std::io::Error::other(err),
    })?;
    text.push(b'\n');
    Ok(text)
}

fn write(path: &Path, state: &State) -> Result<(), StoreError> {
    write_text(path, &serialise(path, state)?)
}

fn write_text(path: &Path, text: &[u8]) -> Result<(), StoreError> {
    atomic_file::replace(path, text, atomic_file::PRIVATE).map_err(|source| StoreError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Desired, InstanceRecord, ProjectRecord};

    fn paths() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        (dir, paths)
    }

    fn record(name: &str) -> ProjectRecord {
        ProjectRecord {
            project_name: name.into(),
            sandbox_dir: PathBuf::from("/s").join(name),
            git_url: "git@h:o/r.git".into(),
            ssh_key_path: None,
            port: Some(4100),
            desired: Desired::Stopped,
            instance: InstanceRecord::Stopped { last_exit: None },
            created_at: "2026-11-25T00:00:00Z".into(),
            isolation: None,
            agent: Default::default(),
        }
    }

    #[tokio::test]
    async fn updates_persist_and_reload() {
        let (_dir, paths) = paths();
        let (store, _) = Store::open(&paths).expect("open");
        store
            .update(|s| s.projects.insert("a".into(), record("a")))
            .await
            .expect("update");
        let (again, report) = Store::open(&paths).expect("reopen");
        assert!(report.notices.is_empty());
        assert_eq!(again.snapshot().projects.len(), 1);
    }

    #[test]
    fn a_corrupt_or_truncated_file_is_refused_and_left_untouched() {
        let (dir, paths) = paths();
        for text in [
            "{ not json",
            "",
            "{\"version\": 2, \"projects\": {\"a\": {\"project_",
        ] {
            std::fs::write(paths.state_file(), text).expect("write");
            let err = Store::open(&paths).expect_err("refused");
            assert_eq!(err.code(), ErrorCode::StateCorrupt, "{err}");
            assert!(err.to_string().contains("opencode-state.json"), "{err}");
            assert_eq!(
                std::fs::read_to_string(paths.state_file()).expect("read"),
                text,
                "the file is kept as it was"
            );
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("corrupt") || n.starts_with(".tmp"))
                .collect();
            assert!(names.is_empty(), "{names:?}");
        }
    }

    #[test]
    fn python_v1_1_state_is_backed_up_then_migrated() {
        let (_dir, paths) = paths();
        let original = include_str!("../../tests/fixtures/python-v1.1-opencode-state.json");
        std::fs::write(paths.state_file(), original).expect("write");
        let (store, report) = Store::open(&paths).expect("open");
        assert!(!store.snapshot().projects.is_empty());
        assert!(report.notices[0].contains("v1.1"), "{:?}", report.notices);
        let backup = std::fs::read_to_string(format!("{}.backup", paths.state_file().display()))
            .expect("backup");
        assert_eq!(backup, original);
        let (_, again) = Store::open(&paths).expect("reopen");
        assert!(again.notices.is_empty(), "migrates once");
    }
}
