//! Crash-safe file replacement and private directories, with permissions set at creation.
//!
//! Every file this program writes goes through here: a temporary file in the same directory, created
//! with its final mode (never chmod after writing), fsynced, renamed into place, and the directory
//! fsynced. It knows nothing about what the bytes mean.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode for secret files: owner read/write only.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode for files anyone may read (public keys).
pub(crate) const PUBLIC: u32 = 0o644;

/// Replaces `path` with `contents` atomically; readers see the old or the new file, never a mix.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, contents, mode)?;
    file.persist(path).map_err(|err| err.error)?;
    sync_parent(path)
}

/// Creates `path` with `contents` only if it does not exist yet; `AlreadyExists` otherwise.
/// The file appears complete or not at all.
pub(crate) fn create_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, contents, mode)?;
    file.persist_noclobber(path).map_err(|err| err.error)?;
    sync_parent(path)
}

/// Creates `dir` and its missing parents with mode 0700. An existing directory is left as it is.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    Ok(file)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replace_sets_the_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        replace(&path, b"one", PRIVATE).expect("first write");
        replace(&path, b"two", PRIVATE).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn create_new_refuses_to_clobber() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        create_new(&path, b"one", PRIVATE).expect("create");
        let err = create_new(&path, b"two", PRIVATE).expect_err("second create");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).expect("read"), b"one");
    }
}
