//! The audit log: one JSON line per state-changing call, from any door (CLI, MCP, Gateway tool,
//! dashboard), in `<home>/opencode-logs/audit.log` (0600, rotated like the other logs).
//!
//! A line says when, through which door, who (the local user behind the socket, the Gateway token's
//! scope, a dashboard session), what (the action and the Project), how it ended and how long it
//! took. Never a secret, never prompt text: entries are built from typed fields only, and the
//! outcome is a status word or an error code, not a message. One writer task appends the lines in
//! order, off the async threads; [`read`] filters them for `opencode-manager audit`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where a call came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Door {
    #[default]
    Cli,
    Mcp,
    Gateway,
    Dashboard,
}

/// Who made a call, as far as the door can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Caller {
    /// A process of this user on the control socket (its uid, from the socket's credentials).
    LocalUser { uid: u32 },
    /// The Gateway's global token.
    GlobalToken,
    /// A Project's own token.
    ProjectToken { project: String },
    /// A dashboard session, opened with a login code that this local user asked for.
    DashboardSession { uid: u32 },
    /// The daemon itself could not tell.
    Unknown,
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub door: Door,
    pub caller: Caller,
    /// `start`, `stop`, `opencode-session-message`, `permission-reply`, …
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `ok`, a reply status (`waiting_for_key`), or an error code (`clone_failed`).
    pub outcome: String,
    pub duration_ms: u64,
}

/// The handle calls are recorded through. Cheap to clone; recording never waits.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    lines: mpsc::UnboundedSender<Entry>,
}

impl AuditLog {
    /// Starts the writer task appending to `path`; it ends when every handle is dropped.
    pub(crate) fn open(path: PathBuf) -> AuditLog {
        let (lines, mut pending) = mpsc::unbounded_channel::<Entry>();
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = pending.try_recv() {
                    batch.push(next);
                }
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || append(&path, &batch)).await;
                if let Ok(Err(err)) = written {
                    tracing::error!("writing the audit log: {err}");
                }
            }
        });
        AuditLog { lines }
    }

    /// Records one call that started at `since`.
    pub(crate) fn record(
        &self,
        door: Door,
        caller: Caller,
        action: &str,
        project: Option<&str>,
        outcome: &str,
        since: std::time::Instant,
    ) {
        let _ = self.lines.send(Entry {
            time: crate::timestamp::now(),
            door,
            caller,
            action: action.to_owned(),
            project: project.map(str::to_owned),
            outcome: outcome.to_owned(),
            duration_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
}

/// Appends `entries`, one JSON object per line, rotating the file first when it is large.
fn append(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    crate::logs::rotate_if_large(path, crate::logs::ROTATE_AT_BYTES)?;
    let mut text = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut text, entry)?;
        text.push(b'\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&text)
}

/// What `audit` asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub project: Option<String>,
    /// Only entries at or after this time (RFC 3339, compared as text: both are UTC with `Z`).
    pub since: Option<String>,
}

/// The entries of the log and its rotated generations, oldest first, that pass `filter`. Lines
/// that are not entries (a torn last line after a crash) are skipped. Blocking.
pub(crate) fn read(path: &Path, filter: &Filter) -> std::io::Result<Vec<Entry>> {
    let mut files: Vec<PathBuf> = (1..=crate::logs::KEEP)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .collect();
    files.push(path.to_owned());
    let mut entries = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        entries.extend(
            text.lines()
                .filter_map(|line| serde_json::from_str::<Entry>(line).ok())
                .filter(|e| {
                    filter
                        .project
                        .as_deref()
                        .is_none_or(|p| e.project.as_deref() == Some(p))
                })
                .filter(|e| filter.since.as_deref().is_none_or(|s| e.time.as_str() >= s)),
        );
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: &str, project: Option<&str>) -> Entry {
        Entry {
            time: time.into(),
            door: Door::Gateway,
            caller: Caller::ProjectToken {
                project: "a".into(),
            },
            action: "opencode-session-message".into(),
            project: project.map(str::to_owned),
            outcome: "ok".into(),
            duration_ms: 12,
        }
    }

    #[test]
    fn entries_are_appended_as_json_lines_and_read_back_filtered() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        append(&path, &[entry("2026-11-30T10:00:00Z", Some("a"))]).expect("append");
        append(
            &path,
            &[
                entry("2026-11-30T11:00:00Z", Some("b")),
                entry("2026-11-30T12:00:00Z", None),
            ],
        )
        .expect("append");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"torn"))
            .expect("torn line");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(
            "{\"time\":\"2026-11-30T10:00:00Z\",\"door\":\"gateway\",\"caller\":{\"kind\":\"project_token\",\"project\":\"a\"}"
        ));
        let all = read(&path, &Filter::default()).expect("read");
        assert_eq!(all.len(), 3);
        let b = Filter {
            project: Some("b".into()),
            since: None,
        };
        assert_eq!(
            read(&path, &b).expect("read"),
            [entry("2026-11-30T11:00:00Z", Some("b"))]
        );
        let late = Filter {
            project: None,
            since: Some("2026-11-30T11:30:00Z".into()),
        };
        assert_eq!(read(&path, &late).expect("read").len(), 1);
    }
}
