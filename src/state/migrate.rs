//! Turns any state file's text into the current [`State`]: this program's own format as is, and the
//! Python original's v1.0 and v1.1 files (`tests/fixtures/`) by mapping them.
//!
//! Pure: no IO and no clock. Writing the backup and the migrated file is `store`'s job. A migration
//! never adopts a recorded process, because a bare pid cannot be proven to be the same process, and it
//! copies only the fields it knows, so nothing unexpected travels into the new file or the notes.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{
    Desired, GatewayRecord, InstanceRecord, LegacyMcpTool, ProjectRecord, STATE_VERSION, State,
};
use crate::timestamp;

/// What a state file turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Loaded {
    /// Already this program's format; nothing to write back.
    Current(State),
    /// Mapped from an older format. `notes` are lines worth showing the user, one per finding.
    Migrated {
        state: State,
        from: Generation,
        notes: Vec<String>,
    },
}

/// The older formats this program reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// 1:1 layout: one MCP tool process per project, no `global_mcp_tool` key.
    PythonV1_0,
    /// N:1 layout: one global MCP tool under `global_mcp_tool`.
    PythonV1_1,
}

impl Generation {
    /// The release name the original used.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Generation::PythonV1_0 => "v1.0",
            Generation::PythonV1_1 => "v1.1",
        }
    }
}

/// Why a state file could not be read. Messages never quote the file's values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Shape(String),
    #[error("state version {0} is newer than this program understands (max {max})", max = super::STATE_VERSION)]
    TooNew(u32),
}

/// Written for a project whose original record had no `created_at`.
const UNKNOWN_TIME: &str = "1970-01-01T00:00:00Z";

/// Reads a state file of any known generation.
pub(crate) fn from_json(text: &str) -> Result<Loaded, MigrateError> {
    let value: Value = serde_json::from_str(text).map_err(MigrateError::Json)?;
    let Value::Object(root) = value else {
        return Err(shape("the state file is not a JSON object"));
    };
    if let Some(version) = root.get("version") {
        return current(text, version);
    }
    // The original had no version field; v1.1 is the one that added `global_mcp_tool`.
    let from = if root.contains_key("global_mcp_tool") {
        Generation::PythonV1_1
    } else {
        Generation::PythonV1_0
    };
    let mut notes = Vec::new();
    let state = python(&root, from, &mut notes)?;
    Ok(Loaded::Migrated { state, from, notes })
}

fn current(text: &str, version: &Value) -> Result<Loaded, MigrateError> {
    let Some(version) = version.as_u64() else {
        return Err(shape("version is not a non-negative integer"));
    };
    let Ok(version) = u32::try_from(version) else {
        return Err(shape(format!("state version {version} is out of range")));
    };
    if version > STATE_VERSION {
        return Err(MigrateError::TooNew(version));
    }
    if version < STATE_VERSION {
        return Err(shape(format!(
            "state version {version} was never written by any release"
        )));
    }
    // Parsed again from the text so serde's errors carry line and column.
    serde_json::from_str(text)
        .map(Loaded::Current)
        .map_err(|e| shape(format!("state version {version}: {e}")))
}

fn python(
    root: &Map<String, Value>,
    from: Generation,
    notes: &mut Vec<String>,
) -> Result<State, MigrateError> {
    let projects = match root.get("projects") {
        Some(Value::Object(projects)) => projects,
        Some(_) => return Err(shape("projects is not an object")),
        None => return Err(shape("projects is missing")),
    };
    let mut state = State::default();
    for (name, value) in projects {
        let Value::Object(map) = value else {
            return Err(shape(format!("project {name:?} is not an object")));
        };
        let fields = Fields::new(map, format!("project {name:?}"));
        state
            .projects
            .insert(name.clone(), project(name, &fields, notes)?);
        if from == Generation::PythonV1_0
            && let Some(tool) = fields.object("mcp_tool")?
        {
            let (pid, port) = (tool.pid("pid")?, tool.port("port")?);
            if pid.is_some() || port.is_some() {
                notes.push(format!(
                    "project {name:?}: the v1.0 per-project MCP tool ({}) is kept as a legacy record; \
                     it may still be running",
                    describe(pid, port)
                ));
                let project_name = name.clone();
                state.legacy_mcp_tools.push(LegacyMcpTool {
                    project_name,
                    pid,
                    port,
                });
            }
        }
    }
    if from == Generation::PythonV1_1 {
        let root = Fields::new(root, "state file".to_owned());
        if let Some(tool) = root.object("global_mcp_tool")? {
            let (pid, port) = (tool.pid("pid")?, tool.port("port")?);
            // The Node tool is replaced by our gateway; only its port carries over.
            state.gateway = Some(GatewayRecord {
                port,
                status: "stopped".into(),
                started_at: None,
                error: None,
            });
            if pid.is_some() {
                notes.push(format!(
                    "the original's global MCP tool ({}) was not adopted; if it is still running, \
                     stop it so the gateway can take its port",
                    describe(pid, port)
                ));
            }
        }
    }
    Ok(state)
}

fn project(
    name: &str,
    fields: &Fields<'_>,
    notes: &mut Vec<String>,
) -> Result<ProjectRecord, MigrateError> {
    let context = &fields.context;
    let sandbox_dir = PathBuf::from(fields.string("sandbox_dir")?);
    let git_url = fields.string("git_url")?.to_owned();
    let ssh_key_path = fields
        .opt_string("ssh_key_path")?
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(recorded) = fields.opt_string("project_name")?
        && recorded != name
    {
        notes.push(format!(
            "{context}: its record was named {recorded:?}; it is kept as {name:?}"
        ));
    }
    let created_at = match fields.opt_string("created_at")? {
        Some(text) => normalise(text, context, "created_at", notes),
        None => UNKNOWN_TIME.to_owned(),
    };
    // `last_health_check` was an observation; observations are not kept across daemons.

    let Some(opencode) = fields.object("opencode")? else {
        return Err(shape(format!("{context}: opencode is missing")));
    };
    let pid = opencode.pid("pid")?;
    let port = opencode.port("port")?;
    // The original stored "unknown" before its first launch.
    let status = opencode.opt_string("status")?.unwrap_or("unknown");
    let last_error = opencode.opt_string("last_error")?;
    if !["starting", "running", "stopped", "failed", "unknown"].contains(&status) {
        notes.push(format!(
            "{context}: status {status:?} is not one the original wrote; treated as stopped"
        ));
    }
    let desired = match status {
        "running" | "starting" => Desired::Running,
        _ => Desired::Stopped,
    };
    let instance = match (status, last_error, pid) {
        ("failed", Some(error), _) => InstanceRecord::Failed {
            error: error.to_owned(),
            at: created_at.clone(),
        },
        // The original never cleared a pid on stop, so a stopped record's pid says nothing.
        ("stopped" | "failed", _, _) | (_, _, None) => InstanceRecord::Stopped { last_exit: None },
        (_, _, Some(pid)) => {
            notes.push(format!(
                "{context}: OpenCode ({}) was recorded as {status} and was not adopted, since it \
                 cannot be proven to be the same process",
                describe(Some(pid), port)
            ));
            InstanceRecord::Stopped {
                last_exit: Some(format!(
                    "migrated from the Python original (pid {pid} was recorded as {status}; it cannot \
                     be proven to be the same process, so it was not adopted)"
                )),
            }
        }
    };
    Ok(ProjectRecord {
        project_name: name.to_owned(),
        sandbox_dir,
        git_url,
        ssh_key_path,
        port,
        desired,
        instance,
        created_at,
        isolation: None,
        agent: crate::agent::AgentKind::Opencode,
    })
}

/// Rewrites the original's naive `2026-01-28T10:30:00.123456` as `2026-01-28T10:30:00Z`.
fn normalise(text: &str, context: &str, field: &str, notes: &mut Vec<String>) -> String {
    match timestamp::parse(text) {
        Some(time) => timestamp::format(time),
        None => {
            notes.push(format!(
                "{context}: {field} {text:?} is not a timestamp; kept as is"
            ));
            text.to_owned()
        }
    }
}

fn describe(pid: Option<i32>, port: Option<u16>) -> String {
    match (pid, port) {
        (Some(pid), Some(port)) => format!("pid {pid}, port {port}"),
        (Some(pid), None) => format!("pid {pid}"),
        (None, Some(port)) => format!("port {port}"),
        (None, None) => "no pid or port".to_owned(),
    }
}

fn shape(message: impl Into<String>) -> MigrateError {
    MigrateError::Shape(message.into())
}

/// Typed access to one JSON object, naming `context` and the field's path in every error.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    context: String,
    /// Path of this object inside the context, e.g. `opencode.`.
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, context: String) -> Self {
        Fields {
            map,
            context,
            prefix: String::new(),
        }
    }

    fn error(&self, key: &str, problem: &str) -> MigrateError {
        shape(format!("{}: {}{key} {problem}", self.context, self.prefix))
    }

    /// Missing and `null` both read as `None`: the original wrote `null` for unset fields.
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<&'a str, MigrateError> {
        self.opt_string(key)?
            .ok_or_else(|| self.error(key, "is missing"))
    }

    fn opt_string(&self, key: &str) -> Result<Option<&'a str>, MigrateError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error(key, "is not a string")),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'a>>, MigrateError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields {
                map,
                context: self.context.clone(),
                prefix: format!("{}{key}.", self.prefix),
            })),
            Some(_) => Err(self.error(key, "is not an object")),
        }
    }

    /// Zero and negative pids address process groups, so they are rejected rather than carried over.
    fn pid(&self, key: &str) -> Result<Option<i32>, MigrateError> {
        self.positive(key, "is not a pid")
    }

    fn port(&self, key: &str) -> Result<Option<u16>, MigrateError> {
        self.positive(key, "is not a port number")
    }

    fn positive<T: TryFrom<i64>>(
        &self,
        key: &str,
        problem: &str,
    ) -> Result<Option<T>, MigrateError> {
        let Some(value) = self.present(key) else {
            return Ok(None);
        };
        let number = value
            .as_i64()
            .filter(|n| *n > 0)
            .and_then(|n| T::try_from(n).ok());
        number.map(Some).ok_or_else(|| self.error(key, problem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_0: &str = include_str!("../../tests/fixtures/python-v1.0-opencode-state.json");
    const V1_1: &str = include_str!("../../tests/fixtures/python-v1.1-opencode-state.json");

    fn migrated(text: &str) -> (State, Generation, Vec<String>) {
        match from_json(text).expect("loads") {
            Loaded::Migrated { state, from, notes } => (state, from, notes),
            Loaded::Current(_) => panic!("expected a migration"),
        }
    }

    fn record(name: &str, port: u16, instance: InstanceRecord, created_at: &str) -> ProjectRecord {
        ProjectRecord {
            project_name: name.into(),
            sandbox_dir: format!("/home/alex/.memory/opencode-sandboxes/{name}").into(),
            git_url: format!("git@github.com:example/{name}.git"),
            ssh_key_path: None,
            port: Some(port),
            desired: Desired::Stopped,
            instance,
            created_at: created_at.into(),
            isolation: None,
            agent: Default::default(),
        }
    }

    fn not_adopted(pid: i32) -> InstanceRecord {
        InstanceRecord::Stopped {
            last_exit: Some(format!(
                "migrated from the Python original (pid {pid} was recorded as running; it cannot be \
                 proven to be the same process, so it was not adopted)"
            )),
        }
    }

    #[test]
    fn maps_python_v1_0() {
        let (state, from, notes) = migrated(V1_0);
        assert_eq!((from, from.label()), (Generation::PythonV1_0, "v1.0"));
        assert_eq!((state.version, &state.gateway), (STATE_VERSION, &None));

        let mut alpha = record("alpha", 4100, not_adopted(41234), "2026-01-20T09:14:55Z");
        alpha.ssh_key_path = Some("/home/alex/.memory/opencode-keys/alpha-deploy".into());
        alpha.desired = Desired::Running;
        assert_eq!(state.projects["alpha"], alpha);
        // The original never cleared a stopped project's pid; it must not surface as a claim.
        let stopped = InstanceRecord::Stopped { last_exit: None };
        assert_eq!(
            state.projects["beta"],
            record("beta", 4101, stopped, "2026-01-19T16:40:12Z")
        );

        let tools: Vec<_> = state
            .legacy_mcp_tools
            .iter()
            .map(|t| (t.project_name.as_str(), t.pid, t.port))
            .collect();
        assert_eq!(
            tools,
            [
                ("alpha", Some(41301), Some(5100)),
                ("beta", Some(40025), Some(5101))
            ]
        );

        assert_eq!(notes.len(), 3, "{notes:#?}");
        assert!(notes[0].starts_with(
            r#"project "alpha": OpenCode (pid 41234, port 4100) was recorded as running"#
        ));
        assert!(
            notes[1].contains("MCP tool (pid 41301, port 5100)"),
            "{notes:#?}"
        );
    }

    #[test]
    fn maps_python_v1_1() {
        let (state, from, notes) = migrated(V1_1);
        assert_eq!((from, from.label()), (Generation::PythonV1_1, "v1.1"));
        assert!(state.legacy_mcp_tools.is_empty());
        let gateway = GatewayRecord {
            port: Some(3005),
            status: "stopped".into(),
            started_at: None,
            error: None,
        };
        assert_eq!(state.gateway, Some(gateway));

        let alpha = &state.projects["alpha"];
        assert_eq!(
            (alpha.desired, alpha.port, &alpha.instance),
            (Desired::Running, Some(4100), &not_adopted(52188))
        );
        let error = "OpenCode health check failed after 60s".into();
        let failed = InstanceRecord::Failed {
            error,
            at: "2026-01-28T10:31:12Z".into(),
        };
        let mut beta = record("beta", 4101, failed, "2026-01-28T10:31:12Z");
        beta.ssh_key_path = Some("/home/alex/.ssh/beta-deploy".into());
        assert_eq!(state.projects["beta"], beta);

        assert_eq!(notes.len(), 2, "{notes:#?}");
        assert!(
            notes[1].starts_with(
                "the original's global MCP tool (pid 52210, port 3005) was not adopted"
            )
        );
        // Error text may quote a launch command line, so it stays in the record and out of notes.
        assert!(
            !notes.concat().contains("health check failed"),
            "{notes:#?}"
        );
    }

    #[test]
    fn migrated_state_reloads_as_current() {
        for text in [V1_0, V1_1] {
            let (state, _, _) = migrated(text);
            let written = serde_json::to_string_pretty(&state).expect("serialises");
            assert_eq!(
                from_json(&written).expect("reloads"),
                Loaded::Current(state)
            );
        }
    }

    #[test]
    fn current_round_trips() {
        let text = serde_json::to_string(&State::default()).expect("serialises");
        assert_eq!(
            from_json(&text).expect("loads"),
            Loaded::Current(State::default())
        );
    }

    #[test]
    fn refuses_newer_versions() {
        let err = from_json(r#"{"version": 3, "projects": {}}"#).expect_err("too new");
        assert!(matches!(err, MigrateError::TooNew(3)));
        let expected =
            format!("state version 3 is newer than this program understands (max {STATE_VERSION})");
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn refuses_garbage() {
        for text in ["", "not json", "{\"projects\": "] {
            let err = from_json(text).expect_err(text);
            assert!(
                matches!(err, MigrateError::Json(_))
                    && err.to_string().starts_with("not valid JSON: ")
            );
        }
    }

    #[test]
    fn names_the_project_and_field_of_a_bad_shape() {
        let oc = r#""opencode": {"pid": null, "port": 4102, "status": "stopped"}"#;
        let base = r#""sandbox_dir": "/s", "git_url": "g""#;
        let cases = [
            ("[]".to_owned(), "the state file is not a JSON object"),
            ("{}".to_owned(), "projects is missing"),
            (
                r#"{"projects": []}"#.to_owned(),
                "projects is not an object",
            ),
            (
                r#"{"projects": {"gamma": 1}}"#.to_owned(),
                r#"project "gamma" is not an object"#,
            ),
            (
                format!(r#""sandbox_dir": "/s", {oc}"#),
                r#"project "gamma": git_url is missing"#,
            ),
            (
                format!(r#""sandbox_dir": 7, "git_url": "g", {oc}"#),
                r#"project "gamma": sandbox_dir is not a string"#,
            ),
            (base.to_owned(), r#"project "gamma": opencode is missing"#),
            (
                format!(r#"{base}, "opencode": {{"port": 70000}}"#),
                r#"project "gamma": opencode.port is not a port number"#,
            ),
            (
                format!(r#"{base}, "opencode": {{"pid": -1}}"#),
                r#"project "gamma": opencode.pid is not a pid"#,
            ),
            (
                format!(r#"{base}, {oc}, "mcp_tool": "x""#),
                r#"project "gamma": mcp_tool is not an object"#,
            ),
            (
                r#"{"global_mcp_tool": {"port": "3005"}, "projects": {}}"#.to_owned(),
                "state file: global_mcp_tool.port is not a port number",
            ),
            (
                r#"{"version": "2"}"#.to_owned(),
                "version is not a non-negative integer",
            ),
            (
                r#"{"version": 1}"#.to_owned(),
                "state version 1 was never written by any release",
            ),
            (
                r#"{"version": 2, "projects": {"x": {}}}"#.to_owned(),
                "state version 2: missing field",
            ),
        ];
        for (text, expected) in cases {
            // Bare field lists are the body of a project named gamma.
            let text = if text.starts_with('"') {
                format!(r#"{{"projects": {{"gamma": {{{text}}}}}}}"#)
            } else {
                text
            };
            match from_json(&text) {
                Err(MigrateError::Shape(message)) => {
                    assert!(message.starts_with(expected), "{message} <- {text}")
                }
                other => panic!("expected a shape error for {text}, got {other:?}"),
            }
        }
    }

    #[test]
    fn fills_gaps_without_copying_unknown_fields() {
        let text = r#"{"global_mcp_tool": null, "projects": {"gamma": {
            "project_name": "other", "sandbox_dir": "/s", "git_url": "g", "secret": "hunter2",
            "opencode": {"pid": 9, "port": null, "status": "zombie", "last_error": null},
            "last_health_check": "yesterday"}}}"#;
        let (state, _, notes) = migrated(text);
        assert_eq!(state.gateway, None);
        let gamma = &state.projects["gamma"];
        assert_eq!(
            (gamma.project_name.as_str(), gamma.created_at.as_str()),
            ("gamma", UNKNOWN_TIME)
        );
        assert_eq!(gamma.desired, Desired::Stopped);
        assert!(matches!(
            gamma.instance,
            InstanceRecord::Stopped { last_exit: Some(_) }
        ));
        assert_eq!(notes.len(), 3, "{notes:#?}");
        let written = serde_json::to_string(&state).expect("serialises");
        assert!(!written.contains("hunter2") && !notes.concat().contains("hunter2"));
    }
}
