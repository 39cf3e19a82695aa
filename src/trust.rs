//! Which paths the manager may trust: its home, the directories and files it reads there, and the
//! programs it runs. A path that another local user could have written is refused, so nobody can
//! plant a config file, a key or a program that the manager (often root) would then use.
//!
//! It only looks (`lstat`, `stat`); it never changes a mode or an owner. The home is created 0700
//! when missing, and only then checked.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::config::Paths;

/// A path the manager refuses to use, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} {problem}")]
pub(crate) struct Untrusted {
    pub path: PathBuf,
    pub problem: String,
    pub fix: String,
}

/// Creates the home (0700) if it is missing, then checks it with [`check_home`].
pub(crate) fn ensure_home(paths: &Paths) -> Result<(), Untrusted> {
    let home = paths.home();
    if std::fs::symlink_metadata(home).is_err() {
        crate::atomic_file::private_dir(home).map_err(|err| Untrusted {
            path: home.to_owned(),
            problem: format!("cannot be created: {err}"),
            fix: "create it (mode 700) or set OPENCODE_MANAGER_HOME to a directory you own".into(),
        })?;
    }
    check_home(paths)
}

/// Refuses a home, a directory the manager uses under it, or its config files, when one is a
/// symlink, belongs to another user, or is writable by group or others. Missing ones are fine.
pub(crate) fn check_home(paths: &Paths) -> Result<(), Untrusted> {
    check_owned(paths.home(), Kind::Home)?;
    for dir in [
        paths.sandboxes_dir(),
        paths.keys_dir(),
        paths.logs_dir(),
        paths.runtime_dir(),
    ] {
        check_owned(&dir, Kind::Directory)?;
    }
    for file in [paths.config_file(), paths.opencode_config()] {
        check_owned(&file, Kind::File)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Home,
    Directory,
    File,
}

fn check_owned(path: &Path, kind: Kind) -> Result<(), Untrusted> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(Untrusted {
                path: path.to_owned(),
                problem: format!("cannot be examined: {err}"),
                fix: "check its permissions".into(),
            });
        }
    };
    let shown = path.display();
    let untrusted = |problem: String, fix: String| {
        Err(Untrusted {
            path: path.to_owned(),
            problem,
            fix,
        })
    };
    if metadata.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)
            .map_or_else(|_| "its target".to_owned(), |t| t.display().to_string());
        return untrusted(
            "is a symlink".into(),
            match kind {
                Kind::Home => {
                    format!("set OPENCODE_MANAGER_HOME={target} instead of linking to it")
                }
                Kind::Directory => {
                    format!("replace the symlink with the real directory ({target})")
                }
                Kind::File => format!("replace the symlink with the real file ({target})"),
            },
        );
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return untrusted(
            format!(
                "belongs to uid {}, not to this user (uid {me})",
                metadata.uid()
            ),
            format!(
                "run the manager as its owner, or `chown -R {me} {shown}` if it is yours, or use another OPENCODE_MANAGER_HOME"
            ),
        );
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return untrusted(
            format!("is writable by group or others (mode {mode:04o})"),
            format!("run `chmod go-w {shown}` (chmod 700 for a directory, 600 for a file)"),
        );
    }
    Ok(())
}

/// Refuses a program (after resolving symlinks) that another user could have written: the file
/// or any directory above it belongs to someone other than this user or root, or is writable by
/// group or others (a world-writable directory with the sticky bit, such as `/tmp`, is fine).
pub(crate) fn check_program(program: &Path) -> Result<(), Untrusted> {
    let resolved = std::fs::canonicalize(program).map_err(|err| Untrusted {
        path: program.to_owned(),
        problem: format!("cannot be resolved: {err}"),
        fix: "check the path".into(),
    })?;
    let me = rustix::process::geteuid().as_raw();
    for path in resolved.ancestors() {
        let Ok(metadata) = std::fs::metadata(path) else {
            continue;
        };
        let owner_ok = metadata.uid() == me || metadata.uid() == 0;
        let sticky_dir = metadata.is_dir() && metadata.mode() & 0o1000 != 0;
        let writable = metadata.mode() & 0o022 != 0 && !sticky_dir;
        if !owner_ok || writable {
            let why = if owner_ok {
                format!(
                    "is writable by group or others (mode {:04o})",
                    metadata.mode() & 0o7777
                )
            } else {
                format!("belongs to uid {}", metadata.uid())
            };
            return Err(Untrusted {
                path: resolved.clone(),
                problem: format!(
                    "could have been replaced by another user: {} {why}",
                    path.display()
                ),
                fix: "install the program where only you or root can write (or fix that directory's owner and mode)".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_private_home_is_trusted_and_created_when_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().join("home"));
        ensure_home(&paths).expect("created and trusted");
        let mode = std::fs::metadata(paths.home()).expect("home").mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn writable_homes_dirs_and_config_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().to_owned());
        chmod(dir.path(), 0o700);
        check_home(&paths).expect("private home");
        chmod(dir.path(), 0o777);
        let err = check_home(&paths).expect_err("world-writable");
        assert!(err.problem.contains("writable"), "{err}");
        assert!(err.fix.contains("chmod go-w"), "{err:?}");
        chmod(dir.path(), 0o755);
        check_home(&paths).expect("readable by others is not writable");

        std::fs::create_dir(paths.keys_dir()).expect("mkdir");
        chmod(&paths.keys_dir(), 0o770);
        assert_eq!(
            check_home(&paths).expect_err("group-writable keys").path,
            paths.keys_dir()
        );
        chmod(&paths.keys_dir(), 0o700);

        std::fs::write(paths.config_file(), "").expect("write");
        chmod(&paths.config_file(), 0o666);
        assert_eq!(
            check_home(&paths).expect_err("writable config").path,
            paths.config_file()
        );
    }

    #[test]
    fn symlinked_homes_and_config_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        chmod(&real, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = check_home(&Paths::new(link)).expect_err("symlinked home");
        assert!(err.problem.contains("symlink"), "{err}");
        assert!(err.fix.contains("OPENCODE_MANAGER_HOME="), "{err:?}");

        let paths = Paths::new(real.clone());
        std::fs::write(dir.path().join("elsewhere.toml"), "").expect("write");
        std::os::unix::fs::symlink(dir.path().join("elsewhere.toml"), paths.config_file())
            .expect("symlink");
        let err = check_home(&paths).expect_err("symlinked config");
        assert_eq!(err.path, paths.config_file());
    }

    #[test]
    fn programs_in_writable_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let program = dir.path().join("opencode");
        std::fs::write(&program, "#!/bin/sh\n").expect("write");
        chmod(&program, 0o755);
        check_program(&program).expect("a private program");
        check_program(Path::new("/bin/sh")).expect("a system program");
        chmod(dir.path(), 0o777);
        let err = check_program(&program).expect_err("world-writable directory");
        assert!(err.problem.contains("writable"), "{err}");
        chmod(dir.path(), 0o1777);
        check_program(&program).expect("a sticky directory like /tmp");
        chmod(&program, 0o777);
        check_program(&program).expect_err("a world-writable program");
    }
}
