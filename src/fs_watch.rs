//! Watching directories for changes with inotify, as an async signal: "these names changed".
//!
//! Used where the daemon must follow files it does not write (the `.env` files, its own lock
//! file) without polling them. It reads no file itself and decides nothing.

use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::io::unix::AsyncFd;

/// An inotify instance registered with the runtime.
#[derive(Debug)]
pub(crate) struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    pub(crate) fn new() -> io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        #[allow(unsafe_code)]
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole life.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                .map_err(io::Error::from)?
        };
        Ok(DirWatch { fd })
    }

    /// Watches the entries of `dir` (files written, created, moved or removed in it). Watching a
    /// directory twice is harmless.
    pub(crate) fn add(&self, dir: &Path) -> io::Result<()> {
        self.watch(dir, WatchFlags::empty())
    }

    /// Like [`DirWatch::add`], and also every write to a file in `dir` while it is open (a log
    /// growing line by line).
    pub(crate) fn add_with_appends(&self, dir: &Path) -> io::Result<()> {
        self.watch(dir, WatchFlags::MODIFY)
    }

    fn watch(&self, dir: &Path, extra: WatchFlags) -> io::Result<()> {
        inotify::add_watch(
            self.fd.get_ref(),
            dir,
            extra
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::ATTRIB
                | WatchFlags::ONLYDIR,
        )?;
        Ok(())
    }

    /// Waits for changes, then returns the names of every entry changed in that burst (a burst
    /// is one wake-up; an event about a watched directory itself has an empty name).
    pub(crate) async fn changed(&self) -> io::Result<Vec<OsString>> {
        let mut buffer = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut ready = self.fd.readable().await?;
            let mut names = Vec::new();
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut buffer);
            loop {
                match reader.next() {
                    Ok(event) => names.push(
                        event
                            .file_name()
                            .map(|n| OsString::from(std::ffi::OsStr::from_bytes(n.to_bytes())))
                            .unwrap_or_default(),
                    ),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(err) => return Err(err.into()),
                }
            }
            ready.clear_ready();
            if !names.is_empty() {
                return Ok(names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writes_creations_and_removals_are_reported_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = DirWatch::new().expect("inotify");
        watch.add(dir.path()).expect("watch");
        std::fs::write(dir.path().join("a"), "1").expect("write");
        let names = tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("an event")
            .expect("read");
        assert!(names.iter().any(|n| n == "a"), "{names:?}");
        std::fs::remove_file(dir.path().join("a")).expect("rm");
        let names = tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("an event")
            .expect("read");
        assert!(names.iter().any(|n| n == "a"), "{names:?}");
    }
}
