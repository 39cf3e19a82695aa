//! Validated names for what a user hands us: [`ProjectName`] and [`GitUrl`].
//!
//! Validation happens once, here, at the boundary; code past it takes these types and never
//! re-checks. Pure: no IO. A rejected value is never echoed back whole when it could be a secret
//! (git URLs can carry credentials), and never reaches a shell or a path unchecked.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, OpError};

/// A Project's name: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, so it is safe as a path component,
/// a file name prefix and a JSON key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName(String);

impl ProjectName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<ProjectName, OpError> {
        let refuse = |why: &str| {
            OpError::new(
                ErrorCode::InvalidProjectName,
                format!("invalid project name {}: {why}", shown(raw)),
                "use 1 to 64 ASCII letters, digits, '-' or '_', starting with a letter or digit",
            )
        };
        let mut chars = raw.chars();
        match chars.next() {
            None => return Err(refuse("it is empty")),
            Some(first) if !first.is_ascii_alphanumeric() => {
                return Err(refuse("it must start with a letter or digit"));
            }
            Some(_) => {}
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(refuse("it is longer than 64 characters"));
        }
        if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(refuse(&format!("{bad:?} is not allowed")));
        }
        Ok(ProjectName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProjectName {
    type Error = OpError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ProjectName::parse(&value)
    }
}

impl From<ProjectName> for String {
    fn from(value: ProjectName) -> Self {
        value.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which URL schemes the manager accepts besides SSH. Set from the config (`allow_https`, `allow_file`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    pub allow_https: bool,
    pub allow_file: bool,
}

/// How a [`GitUrl`] reaches its repository; decides which transports git may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ssh,
    Https,
    File,
}

/// A git remote that is safe to pass to git after `--`: SSH (`user@host:path` or `ssh://`), or
/// `https://` / `file://` when the policy allows them. Never starts with `-`, never `ext::`,
/// holds no whitespace, control or shell metacharacters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    url: String,
    transport: Transport,
}

impl GitUrl {
    pub fn parse(raw: &str, policy: UrlPolicy) -> Result<GitUrl, OpError> {
        let refuse = |why: &str| {
            OpError::new(
                ErrorCode::InvalidGitUrl,
                format!("invalid git URL: {why}"),
                "give an SSH URL such as git@github.com:owner/repo.git or ssh://git@host:22/owner/repo.git",
            )
        };
        if raw.is_empty() {
            return Err(refuse("it is empty"));
        }
        if raw.starts_with('-') {
            return Err(refuse(
                "it starts with '-', which git would read as an option",
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || SHELL_META.contains(c))
        {
            return Err(refuse(&format!("it contains {bad:?}")));
        }
        if raw.contains("::") {
            return Err(refuse("remote helpers such as ext:: are not allowed"));
        }
        let transport = if let Some(rest) = raw.strip_prefix("ssh://") {
            let (authority, path) = rest
                .split_once('/')
                .ok_or_else(|| refuse("ssh:// URL has no path"))?;
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() || host.starts_with('-') || path.is_empty() {
                return Err(refuse("ssh:// URL needs a host and a path"));
            }
            Transport::Ssh
        } else if raw.starts_with("https://") {
            if !policy.allow_https {
                return Err(refuse(
                    "https:// URLs are not enabled (set allow_https = true in opencode-manager.toml)",
                ));
            }
            Transport::Https
        } else if raw.starts_with("file://") {
            if !policy.allow_file {
                return Err(refuse(
                    "file:// URLs are not enabled (set allow_file = true in opencode-manager.toml)",
                ));
            }
            Transport::File
        } else if raw.contains("://") {
            return Err(refuse(
                "only ssh:// (and https:// or file:// when enabled) URLs are accepted",
            ));
        } else {
            // scp-like `user@host:path`; a user part is required so a local path like `a:b` is not taken as a host.
            let (user_host, path) = raw
                .split_once(':')
                .ok_or_else(|| refuse("expected user@host:path"))?;
            let (user, host) = user_host
                .split_once('@')
                .ok_or_else(|| refuse("expected user@host:path"))?;
            if user.is_empty() || host.is_empty() || host.starts_with('-') || path.is_empty() {
                return Err(refuse("expected user@host:path"));
            }
            Transport::Ssh
        };
        Ok(GitUrl {
            url: raw.to_owned(),
            transport,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }
}

impl From<GitUrl> for String {
    fn from(value: GitUrl) -> Self {
        value.url
    }
}

impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

const SHELL_META: &[char] = &[
    '`', '$', ';', '|', '&', '<', '>', '(', ')', '\\', '"', '\'', '*', '?', '!', '{', '}',
];

/// Shows user input in a message, escaped and cut short, so a message stays one readable line.
fn shown(raw: &str) -> String {
    let cut: String = raw.chars().take(80).collect();
    let suffix = if raw.chars().count() > 80 { "…" } else { "" };
    format!("{cut:?}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_the_contract() {
        for good in ["a", "blog-api", "A_1", "0x", &"x".repeat(64)] {
            assert!(ProjectName::parse(good).is_ok(), "{good} should pass");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "-x",
            "_x",
            &"x".repeat(65),
            "café",
            "a.b",
            "a\nb",
            "..",
        ] {
            let err = ProjectName::parse(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidProjectName, "{bad}");
        }
    }

    #[test]
    fn ssh_urls_pass_and_dangerous_ones_do_not() {
        let policy = UrlPolicy::default();
        for good in [
            "git@github.com:user/repo.git",
            "ssh://root@127.0.0.1:2222/srv/git/ok.git",
            "ssh://host/x",
        ] {
            let url = GitUrl::parse(good, policy).expect(good);
            assert_eq!(url.transport(), Transport::Ssh);
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "git@host:repo;rm -rf ~",
            "git@host:$(id)",
            "git@host:a`id`",
            "git@host:a|b",
            "https://github.com/u/r.git",
            "file:///srv/repo.git",
            "/srv/repo.git",
            "host:repo",
            "ssh://-oProxyCommand=x/y",
            "git@-host:x",
            "ftp://x/y",
        ] {
            let err = GitUrl::parse(bad, policy).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidGitUrl, "{bad}");
        }
    }

    #[test]
    fn https_and_file_need_the_policy() {
        let open = UrlPolicy {
            allow_https: true,
            allow_file: true,
        };
        assert_eq!(
            GitUrl::parse("https://h/r.git", open).map(|u| u.transport()),
            Ok(Transport::Https)
        );
        assert_eq!(
            GitUrl::parse("file:///srv/r.git", open).map(|u| u.transport()),
            Ok(Transport::File)
        );
    }
}
