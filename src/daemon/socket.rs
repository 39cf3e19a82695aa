//! The daemon's control socket (`opencode-manager.sock`, 0600) and the token that opens it.
//!
//! Landlock cannot refuse `connect` to a path-named socket, so a confined agent could reach the
//! socket; what it cannot do is read `opencode-manager.token` (0600, outside its Sandbox). Every
//! connection starts with one line, `opencode-manager <version> <token>`, the token compared in
//! constant time; a connection without it gets one refusal and is closed, and nothing is done for
//! it. A client of another version is told the daemon's version and pid, and nothing else. The daemon removes a
//! socket only if it is the one it bound (same device and inode).

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::net::UnixListener;

use crate::config::Paths;
use crate::secrets::Secret;

/// How long a client has to present its token before the connection is closed.
const TOKEN_DEADLINE: Duration = Duration::from_secs(10);

/// The daemon's token: read from the home, or created (0600) on first start. Kept across
/// daemons, so a client never races a restart.
pub(crate) fn load_or_create_token(paths: &Paths) -> io::Result<Secret> {
    let path = paths.daemon_token();
    let fresh = crate::secrets::random_hex(32);
    match crate::atomic_file::create_new(
        &path,
        format!("{}\n", fresh.expose()).as_bytes(),
        crate::atomic_file::PRIVATE,
    ) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    read_token(paths)
}

/// The token a client presents.
pub(crate) fn read_token(paths: &Paths) -> io::Result<Secret> {
    let path = paths.daemon_token();
    let text = std::fs::read_to_string(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("reading {}: {err}", path.display())))?;
    let token = text.trim();
    if token.len() < 32 {
        return Err(io::Error::other(format!(
            "{} holds no valid token; delete it and stop the daemon to have a new one made",
            path.display()
        )));
    }
    Ok(Secret::new(token.to_owned()))
}

/// The first line a client sends: who it is, its version, and the daemon's token.
pub(crate) fn greeting(version: &str, token: &Secret) -> String {
    format!("{GREETING} {version} {}\n", token.expose())
}

const GREETING: &str = "opencode-manager";

/// What the first line of a connection said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Greeting {
    /// This version, with the token.
    Welcome,
    /// The token, from another version of this program (told so, and nothing more).
    OtherVersion,
    /// No token, or a wrong one.
    Unauthorized,
}

/// Reads the first line of a connection: `opencode-manager <version> <token>`. Bounded in time
/// and size, so a client that never sends it cannot hold the daemon. The version is told apart
/// only for a client that has the token.
pub(crate) async fn greet(reader: &mut (impl AsyncBufRead + Unpin), token: &Secret) -> Greeting {
    let mut line = String::new();
    let read = tokio::time::timeout(
        TOKEN_DEADLINE,
        (&mut *reader).take(256).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return Greeting::Unauthorized;
    }
    let mut words = line.trim_end_matches('\n').splitn(3, ' ');
    let (Some(GREETING), Some(version), Some(presented)) =
        (words.next(), words.next(), words.next())
    else {
        return Greeting::Unauthorized;
    };
    if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        return Greeting::Unauthorized;
    }
    if version == super::version() {
        Greeting::Welcome
    } else {
        Greeting::OtherVersion
    }
}

/// The bound control socket, with the identity of the file it created.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    pub listener: UnixListener,
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl ControlSocket {
    /// Binds the socket, 0600 from creation. A socket file already at the path is removed first:
    /// the caller holds the home's lock and has found no daemon answering on it.
    pub(crate) fn bind(path: &Path) -> io::Result<ControlSocket> {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_dir() => {
                return Err(io::Error::other(format!(
                    "{} is a directory, not a socket",
                    path.display()
                )));
            }
            Ok(_) => std::fs::remove_file(path)?,
            Err(_) => {}
        }
        // The socket's mode is its first protection: nobody else can reach it before it is 0600.
        // It is bound in a fresh 0700 directory, made 0600 there, then moved into place (a
        // process-wide umask would change the mode of every file other threads create meanwhile).
        let parent = path.parent().unwrap_or_else(|| Path::new("."));
        let private = tempfile::Builder::new()
            .prefix(".opencode-manager-socket-")
            .tempdir_in(parent)?;
        let staged = private.path().join("sock");
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            identity,
        })
    }

    /// Removes the socket file if it is still the one this daemon bound.
    pub(crate) fn remove_if_ours(&self) {
        let at_path = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if at_path.is_some() && at_path == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_greeting_with_the_token_opens_a_connection() {
        let token = Secret::new("a".repeat(64));
        let text = format!("{}{{}}\n", greeting(crate::daemon::version(), &token));
        let mut good = tokio::io::BufReader::new(text.as_bytes());
        assert_eq!(greet(&mut good, &token).await, Greeting::Welcome);
        let mut rest = String::new();
        good.read_line(&mut rest).await.expect("read");
        assert_eq!(rest, "{}\n", "the request line stays for the caller");
        let other = greeting("0.0.1", &token);
        let mut reader = tokio::io::BufReader::new(other.as_bytes());
        assert_eq!(greet(&mut reader, &token).await, Greeting::OtherVersion);
        let wrong = Secret::new("b".repeat(64));
        for bad in [
            greeting(crate::daemon::version(), &wrong),
            "a".repeat(64),
            format!("opencode-manager {}", "a".repeat(64)),
            String::new(),
            "x".repeat(300),
        ] {
            let bytes = format!("{bad}\n").into_bytes();
            let mut reader = tokio::io::BufReader::new(bytes.as_slice());
            assert_eq!(
                greet(&mut reader, &token).await,
                Greeting::Unauthorized,
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_socket_replaced_by_someone_else_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let socket = ControlSocket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_file(&path).expect("rm");
        let other = ControlSocket::bind(&path).expect("second bind");
        socket.remove_if_ours();
        assert!(path.exists(), "another daemon's socket must survive");
        other.remove_if_ours();
        assert!(!path.exists());
    }
}
