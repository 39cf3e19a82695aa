//! The only module that runs git: the access test, the atomic clone, and the "unsaved work" check
//! that guards `destroy`.
//!
//! Every call is hardened: the URL comes after `--`, only the URL's own transport is allowed
//! (`GIT_ALLOW_PROTOCOL`, so `ext::` never runs), no prompts (`BatchMode`, `GIT_TERMINAL_PROMPT=0`),
//! only the deploy key (`IdentitiesOnly`, no agent), the manager's own known_hosts, no user or system
//! git config, no hooks and no fsmonitor (`core.hooksPath`, `core.fsmonitor`), a clean environment
//! (the Instance's allowlist), and a timeout that kills git. Commands that run inside a clone, whose
//! `.git/config` the agent can write, also run confined like the Instance itself, so whatever else a
//! planted config makes git run reaches nothing beyond that Sandbox. Messages quote git's stderr
//! but never the environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::instance::confine::Confinement;
use crate::project::{GitUrl, Transport};

/// How a git operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
    /// The server refused the key: the user must add the public key.
    #[error("the SSH key has no access to the repository yet: {detail}")]
    NoAccess { detail: String },
    #[error("the host key of the git server changed or is not trusted: {detail}")]
    HostKey { detail: String },
    #[error("the repository was not found: {detail}")]
    NotFound { detail: String },
    #[error("the git server could not be reached: {detail}")]
    Unreachable { detail: String },
    #[error("git did not finish within {0:?}")]
    Timeout(Duration),
    #[error("git failed: {detail}")]
    Failed { detail: String },
}

/// What git needs to reach a remote with a deploy key.
#[derive(Debug, Clone)]
pub(crate) struct Remote<'a> {
    pub url: &'a GitUrl,
    pub key: &'a Path,
    pub known_hosts: &'a Path,
}

impl Remote<'_> {
    /// The `ssh` command line git runs (through a shell, hence the quoting).
    pub(crate) fn ssh_command(&self) -> String {
        let quote = |p: &Path| {
            shlex::try_quote(&p.to_string_lossy())
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| "/nonexistent".into())
        };
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes \
             -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={} -o LogLevel=ERROR -o ConnectTimeout=15",
            quote(self.key),
            quote(self.known_hosts)
        )
    }

    fn command(&self) -> std::process::Command {
        let protocol = match self.url.transport() {
            Transport::Ssh => "ssh",
            Transport::Https => "https",
            Transport::File => "file",
        };
        let mut command = git();
        command
            .env("GIT_SSH_COMMAND", self.ssh_command())
            .env("GIT_ALLOW_PROTOCOL", protocol);
        command
    }
}

/// `git ls-remote`: proves the key can read the repository.
pub(crate) async fn test_access(remote: &Remote<'_>, timeout: Duration) -> Result<(), GitError> {
    let mut command = remote.command();
    command.args(["ls-remote", "--heads", "--", remote.url.as_str()]);
    run(command, timeout).await.map(drop)
}

/// Clones into `dest` through a temporary directory beside it, renamed into place only when the
/// clone is complete, so a clone killed midway leaves no half repository. The clone's config pins
/// the deploy key (`core.sshCommand`), so the agent's own `git push` and `fetch` use it.
pub(crate) async fn clone_atomic(
    remote: &Remote<'_>,
    dest: &Path,
    timeout: Duration,
) -> Result<(), GitError> {
    let parent = dest.parent().ok_or_else(|| GitError::Failed {
        detail: "clone destination has no parent".into(),
    })?;
    remove_partial_clones(parent);
    let temp = parent.join(format!(".repo-clone-{}", crate::secrets::random_id()));
    let mut command = remote.command();
    command
        .arg("clone")
        .arg("--config")
        .arg(format!("core.sshCommand={}", remote.ssh_command()))
        .args(["--", remote.url.as_str()])
        .arg(&temp);
    let result = run(command, timeout).await;
    if let Err(err) = result {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(err);
    }
    std::fs::rename(&temp, dest).map_err(|err| {
        let _ = std::fs::remove_dir_all(&temp);
        GitError::Failed {
            detail: format!("moving the clone into {}: {err}", dest.display()),
        }
    })
}

/// Removes leftovers of clones that were killed before their rename.
pub(crate) fn remove_partial_clones(sandbox: &Path) {
    for entry in std::fs::read_dir(sandbox)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".repo-clone-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Work in `repo` that would be lost if it were deleted: uncommitted changes and commits that no
/// remote branch has. Empty when everything is saved on a remote. The agent can write the clone's
/// config, so each git runs under `confinement` (one clone of it per command).
pub(crate) async fn unsaved_work(
    repo: &Path,
    confinement: &Confinement,
) -> Result<Vec<String>, GitError> {
    let confined = |mut command: std::process::Command| {
        let confinement = confinement.try_clone().map_err(|err| GitError::Failed {
            detail: format!("preparing the confinement: {err}"),
        })?;
        crate::instance::confine::install(&mut command, confinement);
        Ok::<_, GitError>(command)
    };
    let mut lost = Vec::new();
    let mut status = git();
    status.arg("-C").arg(repo).args([
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=normal",
    ]);
    let changes = run(confined(status)?, Duration::from_secs(30)).await?;
    let changed: Vec<&str> = changes.lines().filter(|l| !l.trim().is_empty()).collect();
    if !changed.is_empty() {
        let shown: Vec<&str> = changed
            .iter()
            .take(10)
            .map(|l| l.get(3..).unwrap_or(l))
            .collect();
        let more = changed.len().saturating_sub(shown.len());
        let suffix = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        lost.push(format!(
            "{} uncommitted change(s): {}{suffix}",
            changed.len(),
            shown.join(", ")
        ));
    }
    let mut log = git();
    log.arg("-C").arg(repo).args([
        "--no-optional-locks",
        "log",
        "--branches",
        "--not",
        "--remotes",
        "--format=%h %s",
    ]);
    let commits = run(confined(log)?, Duration::from_secs(30)).await?;
    let unpushed: Vec<&str> = commits.lines().filter(|l| !l.trim().is_empty()).collect();
    if !unpushed.is_empty() {
        let shown: Vec<&str> = unpushed.iter().take(10).copied().collect();
        lost.push(format!(
            "{} commit(s) on no remote branch: {}",
            unpushed.len(),
            shown.join("; ")
        ));
    }
    Ok(lost)
}

/// `git` with a clean, predictable environment (the Instance's allowlist: `PATH`, `LANG`, `TZ`,
/// `TERM`, and the C locale), no user or system config, no prompts, no hooks, no fsmonitor.
fn git() -> std::process::Command {
    #[allow(clippy::disallowed_methods)]
    let mut command = std::process::Command::new("git");
    command.env_clear();
    for key in ["PATH", "LANG", "TZ", "TERM"] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    command
        .env("HOME", "/nonexistent")
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn run(command: std::process::Command, timeout: Duration) -> Result<String, GitError> {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| GitError::Timeout(timeout))?
        .map_err(|err| GitError::Failed {
            detail: format!("running git: {err}"),
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(classify(&String::from_utf8_lossy(&output.stderr)))
}

/// Sorts git's stderr into the cases a user acts on differently; the first match wins, so the
/// more specific messages come first.
pub(crate) fn classify(stderr: &str) -> GitError {
    let detail = summary(stderr);
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        GitError::HostKey { detail }
    } else if stderr.contains("Permission denied (publickey")
        || stderr.contains("Repository not found")
    {
        GitError::NoAccess { detail }
    } else if stderr.contains("does not appear to be a git repository") {
        GitError::NotFound { detail }
    } else if [
        "Connection refused",
        "Connection timed out",
        "Could not resolve hostname",
        "No route to host",
        "Network is unreachable",
        "Connection closed",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
    {
        GitError::Unreachable { detail }
    } else {
        GitError::Failed { detail }
    }
}

/// The informative lines of git's stderr, without git's boilerplate advice, on one line.
fn summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.starts_with("Please make sure")
                && !l.starts_with("and the repository exists")
                && *l != "fatal: Could not read from remote repository."
        })
        .collect();
    let text = lines.join(" | ");
    if text.is_empty() {
        "git gave no error message".into()
    } else {
        text.chars().take(500).collect()
    }
}

/// The path git would use for `.git` of a clone, for callers that check a repository exists.
pub(crate) fn is_repository(repo: &Path) -> bool {
    PathBuf::from(repo).join(".git").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_like_the_recipes_say() {
        let advice = "fatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n";
        assert!(matches!(
            classify(&format!(
                "root@127.0.0.1: Permission denied (publickey).\n{advice}"
            )),
            GitError::NoAccess { .. }
        ));
        assert!(matches!(
            classify(&format!(
                "fatal: '/x.git' does not appear to be a git repository\n{advice}"
            )),
            GitError::NotFound { .. }
        ));
        assert!(matches!(
            classify(&format!(
                "ssh: connect to host 127.0.0.1 port 1: Connection refused\n{advice}"
            )),
            GitError::Unreachable { .. }
        ));
        assert!(matches!(
            classify("Host key verification failed.\n"),
            GitError::HostKey { .. }
        ));
        let GitError::NoAccess { detail } =
            classify(&format!("root@h: Permission denied (publickey).\n{advice}"))
        else {
            unreachable!()
        };
        assert_eq!(detail, "root@h: Permission denied (publickey).");
    }

    #[test]
    fn the_ssh_command_quotes_paths() {
        let url =
            GitUrl::parse("git@h:o/r.git", crate::project::UrlPolicy::default()).expect("url");
        let remote = Remote {
            url: &url,
            key: Path::new("/k/a key"),
            known_hosts: Path::new("/k/kh"),
        };
        assert!(
            remote.ssh_command().contains("-i '/k/a key'"),
            "{}",
            remote.ssh_command()
        );
    }
}
