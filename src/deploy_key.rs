//! Deploy keys: one ed25519 key pair per Project at `opencode-keys/<project>-deploy`, or a key the
//! user names, checked before use.
//!
//! Private keys are created 0600 from the first byte (never chmod after writing); an existing key is
//! never deleted or replaced. Only the public half ever leaves this module as text.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};

use crate::atomic_file;
use crate::project::ProjectName;

/// A usable key pair.
#[derive(Debug, Clone)]
pub(crate) struct DeployKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// The `ssh-ed25519 AAAA… comment` line to show the user.
    pub public_key: String,
}

/// Why a key cannot be used; reported as `invalid_ssh_key`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct KeyError {
    pub message: String,
    pub hint: String,
}

/// The manager's key for `project`: reused if present, generated otherwise.
pub(crate) fn ensure_generated(
    private_path: &Path,
    project: &ProjectName,
) -> Result<DeployKey, KeyError> {
    if let Some(dir) = private_path.parent() {
        atomic_file::private_dir(dir).map_err(|err| KeyError {
            message: format!("creating {}: {err}", dir.display()),
            hint: "check the permissions of the manager home".into(),
        })?;
    }
    if !private_path.exists() {
        let mut key =
            PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|err| KeyError {
                message: format!("generating an ed25519 key: {err}"),
                hint: "this should not happen; see the manager log".into(),
            })?;
        key.set_comment(format!("opencode-mcp-{project}"));
        let private_pem = key.to_openssh(LineEnding::LF).map_err(|err| KeyError {
            message: format!("encoding the key: {err}"),
            hint: "this should not happen; see the manager log".into(),
        })?;
        match atomic_file::create_new(private_path, private_pem.as_bytes(), atomic_file::PRIVATE) {
            // Another start wrote it first: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(KeyError {
                    message: format!("writing {}: {err}", private_path.display()),
                    hint: "check the permissions of opencode-keys/".into(),
                });
            }
            Ok(()) => {}
        }
    }
    check(private_path)
}

/// Checks a key file: a regular file, no group or other permission bits, readable as an OpenSSH
/// private key. A missing `.pub` is derived from the private key rather than the key being replaced.
pub(crate) fn check(private_path: &Path) -> Result<DeployKey, KeyError> {
    let shown = private_path.display();
    let meta = std::fs::metadata(private_path).map_err(|err| KeyError {
        message: format!("SSH key not found at {shown}: {err}"),
        hint: "give the path of an existing private key, or leave user_ssh_key out to have one generated".into(),
    })?;
    if !meta.is_file() {
        return Err(KeyError {
            message: format!("SSH key path is not a file: {shown}"),
            hint: "give the path of a private key file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError {
            message: format!("SSH key has insecure permissions {mode:o}: {shown}"),
            hint: format!("fix with: chmod 600 {shown}"),
        });
    }
    let public_path = PathBuf::from(format!("{}.pub", private_path.display()));
    let public_key = match std::fs::read_to_string(&public_path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => {
            let key = PrivateKey::read_openssh_file(private_path).map_err(|err| KeyError {
                message: format!("{shown} is not a readable OpenSSH private key: {err}"),
                hint:
                    "give an unencrypted OpenSSH private key (passphrase-less, as deploy keys are)"
                        .into(),
            })?;
            let line = key.public_key().to_openssh().map_err(|err| KeyError {
                message: format!("deriving the public key of {shown}: {err}"),
                hint: format!(
                    "regenerate it with: ssh-keygen -y -f {shown} > {}",
                    public_path.display()
                ),
            })?;
            match atomic_file::create_new(
                &public_path,
                format!("{line}\n").as_bytes(),
                atomic_file::PUBLIC,
            ) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(KeyError {
                        message: format!("writing {}: {err}", public_path.display()),
                        hint: "check the permissions of the key's directory".into(),
                    });
                }
            }
            line
        }
    };
    Ok(DeployKey {
        private_path: private_path.to_owned(),
        public_path,
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn generates_once_with_private_permissions_and_reuses_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys").join("demo-deploy");
        let project = ProjectName::parse("demo").expect("name");
        let first = ensure_generated(&path, &project).expect("generate");
        assert!(
            first.public_key.starts_with("ssh-ed25519 ")
                && first.public_key.ends_with(" opencode-mcp-demo")
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&first.public_path).expect("meta").mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("keys"))
                .expect("meta")
                .mode()
                & 0o777,
            0o700
        );
        let second = ensure_generated(&path, &project).expect("reuse");
        assert_eq!(first.public_key, second.public_key);
    }

    #[test]
    fn a_missing_public_half_is_derived_not_regenerated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo-deploy");
        let project = ProjectName::parse("demo").expect("name");
        let first = ensure_generated(&path, &project).expect("generate");
        std::fs::remove_file(&first.public_path).expect("rm pub");
        let again = check(&path).expect("derive");
        assert_eq!(again.public_key, first.public_key);
    }

    #[test]
    fn keys_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        std::fs::write(&path, "x").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = check(&path).expect_err("insecure");
        assert!(
            err.message.contains("insecure permissions 644"),
            "{}",
            err.message
        );
        assert!(err.hint.contains("chmod 600"));
    }
}
