//! The home's daemon lock (`opencode-manager.lock`): one daemon per home, provably.
//!
//! The lock is an advisory `flock` on a file holding the daemon's pid. A lock taken on a file that
//! was replaced between `open` and `flock`, or deleted afterwards, proves nothing: the daemon checks
//! that the locked file is still the one at the path (device and inode) when it takes the lock and
//! on every check after, and puts a locked file back if someone removed it. It never reads or
//! writes anything but the lock file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The daemon's hold on its home.
#[derive(Debug)]
pub(crate) struct HomeLock {
    file: File,
    path: PathBuf,
}

/// What trying the lock found.
#[derive(Debug)]
pub(crate) enum Acquired {
    Held(HomeLock),
    /// Another process holds it; its pid as written in the file, when readable.
    Busy {
        pid: Option<i32>,
    },
}

impl HomeLock {
    /// Takes the lock at `path` and writes this process's pid into it.
    pub(crate) fn acquire(path: &Path) -> io::Result<Acquired> {
        // A file swapped between our open and our lock is retried; more than a few swaps in a
        // row means someone is playing with the file.
        for _ in 0..5 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .open(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Ok(Acquired::Busy {
                        pid: read_pid(path),
                    });
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(err),
            }
            if same_file(&file, path) {
                let mut lock = HomeLock {
                    file,
                    path: path.to_owned(),
                };
                lock.write_pid()?;
                return Ok(Acquired::Held(lock));
            }
        }
        Err(io::Error::other(format!(
            "{} kept changing while the daemon tried to lock it",
            path.display()
        )))
    }

    /// Whether the locked file is still the one at the path. If it was removed or replaced, locks
    /// the file now there (or a new one); returns what happened, for the log.
    pub(crate) fn verify(&mut self) -> Verified {
        if same_file(&self.file, &self.path) {
            return Verified::Intact;
        }
        // Lock whatever file is at the path now (a second daemon that found this one running may
        // have left one behind), or a new one.
        let replacement = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|file| {
                file.try_lock().map_err(|err| match err {
                    std::fs::TryLockError::WouldBlock => {
                        io::Error::other("another process holds the file now at that path")
                    }
                    std::fs::TryLockError::Error(err) => err,
                })?;
                Ok(file)
            });
        match replacement {
            Ok(file) => {
                self.file = file;
                match self.write_pid() {
                    Ok(()) => Verified::Restored,
                    Err(err) => Verified::Lost(err.to_string()),
                }
            }
            Err(err) => Verified::Lost(err.to_string()),
        }
    }

    fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        let mut file = &self.file;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()
    }
}

/// The outcome of [`HomeLock::verify`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verified {
    Intact,
    /// The file had been removed or replaced; a new locked one is in place.
    Restored,
    /// The file is gone and could not be put back.
    Lost(String),
}

/// The pid a lock file names, if it names a living process.
pub(crate) fn read_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    crate::instance::process::identity(pid).map(|_| pid)
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(at_path)) => held.dev() == at_path.dev() && held.ino() == at_path.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opencode-manager.lock");
        let Acquired::Held(_lock) = HomeLock::acquire(&path).expect("acquire") else {
            panic!("first acquire must hold the lock");
        };
        match HomeLock::acquire(&path).expect("second acquire") {
            Acquired::Busy { pid } => assert_eq!(pid, Some(std::process::id() as i32)),
            Acquired::Held(_) => panic!("two holders"),
        }
    }

    #[test]
    fn a_removed_lock_file_is_put_back_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opencode-manager.lock");
        let Acquired::Held(mut lock) = HomeLock::acquire(&path).expect("acquire") else {
            panic!("must hold the lock");
        };
        assert_eq!(lock.verify(), Verified::Intact);
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(lock.verify(), Verified::Restored);
        assert_eq!(read_pid(&path), Some(std::process::id() as i32));
        assert!(matches!(
            HomeLock::acquire(&path).expect("acquire"),
            Acquired::Busy { .. }
        ));
        assert_eq!(lock.verify(), Verified::Intact);
    }
}
