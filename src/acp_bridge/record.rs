//! The bridge's own record of an ACP agent's sessions: each session's turns (bounded), whether a
//! turn is under way, and the permission requests waiting for an answer, kept as OpenCode's
//! server API shows them (`ses_…` and `per_…` ids, `{info, parts}` messages), so the Gateway, the
//! probe and the dashboard read every agent kind alike. Pure data: no IO, no clock (callers pass
//! the time), no protocol.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

/// How many messages a session keeps (the oldest go first).
pub(crate) const KEPT_MESSAGES: usize = 200;
/// How many sessions the record keeps (the least recently updated go first).
pub(crate) const KEPT_SESSIONS: usize = 100;

/// One message of a session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub id: String,
    pub role: &'static str,
    pub text: String,
    pub created_ms: u64,
    pub completed_ms: Option<u64>,
    /// How the turn ended when it did not end normally (`cancelled`, `refusal`, a failure).
    pub error: Option<String>,
}

impl Message {
    /// `{info, parts}`, as OpenCode answers a message.
    pub(crate) fn to_json(&self, session: &str) -> Value {
        let mut info = json!({
            "id": self.id,
            "sessionID": session,
            "role": self.role,
            "time": { "created": self.created_ms, "completed": self.completed_ms },
        });
        if let Some(error) = &self.error {
            let name = if error == "cancelled" {
                "MessageAbortedError"
            } else {
                "AgentError"
            };
            info["error"] = json!({ "name": name, "data": { "message": error } });
        }
        json!({ "info": info, "parts": [{ "type": "text", "text": self.text }] })
    }
}

/// One session: ours (`ses_…`) over the agent's own id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Session {
    pub id: String,
    pub acp_id: String,
    pub title: String,
    pub directory: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub messages: VecDeque<Message>,
    /// A turn is under way.
    pub busy: bool,
}

impl Session {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "directory": self.directory,
            "time": { "created": self.created_ms, "updated": self.updated_ms },
        })
    }
}

/// A permission request the agent is waiting on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Permission {
    pub id: String,
    pub session: String,
    /// The tool's kind (`execute`, `edit`, …) and what it would do (its title).
    pub kind: String,
    pub title: String,
    /// The agent's options: (option id, kind: `allow_once`, `allow_always`, `reject_once`, …).
    pub options: Vec<(String, String)>,
}

impl Permission {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "sessionID": self.session,
            "permission": self.kind,
            "patterns": [self.title],
            "metadata": {},
        })
    }

    /// The agent's option for an answer (`once`, `always`, `reject`), chosen by kind, never by id.
    pub(crate) fn option_for(&self, reply: &str) -> Option<&str> {
        let wanted: &[&str] = match reply {
            "once" => &["allow_once"],
            "always" => &["allow_always", "allow_once"],
            "reject" => &["reject_once", "reject_always"],
            _ => return None,
        };
        wanted.iter().find_map(|kind| {
            self.options
                .iter()
                .find(|(_, k)| k == kind)
                .map(|(id, _)| id.as_str())
        })
    }
}

/// Every session and pending permission of one agent.
#[derive(Debug, Default)]
pub(crate) struct Record {
    sessions: BTreeMap<String, Session>,
    permissions: BTreeMap<String, Permission>,
    /// Random per bridge, so an id from before a restart never names a new session.
    launch: String,
    next: u64,
}

impl Record {
    /// An empty record whose ids carry `launch` (letters and digits).
    pub(crate) fn new(launch: String) -> Record {
        Record {
            launch,
            ..Record::default()
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_{}{:08}", self.launch, self.next)
    }

    /// Records a session the agent opened as `acp_id`; returns ours.
    pub(crate) fn open(&mut self, acp_id: String, directory: String, now_ms: u64) -> &Session {
        if self.sessions.len() >= KEPT_SESSIONS
            && let Some(oldest) = self
                .sessions
                .values()
                .filter(|s| !s.busy)
                .min_by_key(|s| s.updated_ms)
                .map(|s| s.id.clone())
        {
            self.sessions.remove(&oldest);
        }
        let id = self.next_id("ses");
        let session = Session {
            title: format!("Session {}", self.sessions.len() + 1),
            id: id.clone(),
            acp_id,
            directory,
            created_ms: now_ms,
            updated_ms: now_ms,
            messages: VecDeque::new(),
            busy: false,
        };
        self.sessions.entry(id).or_insert(session)
    }

    pub(crate) fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Sessions, most recently updated first.
    pub(crate) fn sessions(&self) -> Vec<&Session> {
        let mut all: Vec<&Session> = self.sessions.values().collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.updated_ms));
        all
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Session> {
        self.permissions.retain(|_, p| p.session != id);
        self.sessions.remove(id)
    }

    /// A turn begins with the user's `text`; `None` when the session is unknown or busy.
    pub(crate) fn begin_turn(&mut self, id: &str, text: &str, now_ms: u64) -> Option<String> {
        let user_id = self.next_id("msg");
        let reply_id = self.next_id("msg");
        let session = self.sessions.get_mut(id).filter(|s| !s.busy)?;
        if session.messages.is_empty() {
            session.title = text.lines().next().unwrap_or("").chars().take(60).collect();
        }
        session.busy = true;
        session.updated_ms = now_ms;
        push(
            &mut session.messages,
            Message {
                id: user_id,
                role: "user",
                text: text.to_owned(),
                created_ms: now_ms,
                completed_ms: Some(now_ms),
                error: None,
            },
        );
        push(
            &mut session.messages,
            Message {
                id: reply_id.clone(),
                role: "assistant",
                text: String::new(),
                created_ms: now_ms,
                completed_ms: None,
                error: None,
            },
        );
        Some(reply_id)
    }

    /// Text the agent streamed into the current turn of the session it calls `acp_id`.
    pub(crate) fn append(&mut self, acp_id: &str, text: &str, now_ms: u64) {
        if let Some(session) = self.sessions.values_mut().find(|s| s.acp_id == acp_id)
            && session.busy
            && let Some(last) = session.messages.back_mut()
        {
            last.text.push_str(text);
            session.updated_ms = now_ms;
        }
    }

    /// The turn ended (`error`: how, when not normally); returns the assistant's message and
    /// the ids of the session's permission requests, which end with it.
    pub(crate) fn end_turn(
        &mut self,
        id: &str,
        error: Option<String>,
        now_ms: u64,
    ) -> Option<(Message, Vec<String>)> {
        let session = self.sessions.get_mut(id)?;
        session.busy = false;
        session.updated_ms = now_ms;
        let last = session.messages.back_mut()?;
        last.completed_ms = Some(now_ms);
        last.error = error;
        let ended = last.clone();
        let dropped = self.permissions_of(id);
        self.permissions.retain(|_, p| p.session != id);
        Some((ended, dropped))
    }

    /// The ids of a session's pending permission requests.
    pub(crate) fn permissions_of(&self, id: &str) -> Vec<String> {
        self.permissions
            .values()
            .filter(|p| p.session == id)
            .map(|p| p.id.clone())
            .collect()
    }

    /// The session (ours) of the agent's `acp_id`.
    pub(crate) fn ours(&self, acp_id: &str) -> Option<&str> {
        self.sessions
            .values()
            .find(|s| s.acp_id == acp_id)
            .map(|s| s.id.as_str())
    }

    /// Records a permission request; returns its id.
    pub(crate) fn ask(
        &mut self,
        session: String,
        kind: String,
        title: String,
        options: Vec<(String, String)>,
    ) -> String {
        let id = self.next_id("per");
        self.permissions.insert(
            id.clone(),
            Permission {
                id: id.clone(),
                session,
                kind,
                title,
                options,
            },
        );
        id
    }

    pub(crate) fn permissions(&self) -> Vec<&Permission> {
        self.permissions.values().collect()
    }

    pub(crate) fn permission(&self, id: &str) -> Option<&Permission> {
        self.permissions.get(id)
    }

    /// Takes an answered (or withdrawn) request out.
    pub(crate) fn answered(&mut self, id: &str) -> Option<Permission> {
        self.permissions.remove(id)
    }

    /// `{ses_…: {"type": "busy"}}` for the busy sessions, as `GET /session/status` answers.
    pub(crate) fn status(&self) -> Value {
        Value::Object(
            self.sessions
                .values()
                .filter(|s| s.busy)
                .map(|s| (s.id.clone(), json!({ "type": "busy" })))
                .collect(),
        )
    }
}

fn push(messages: &mut VecDeque<Message>, message: Message) {
    if messages.len() >= KEPT_MESSAGES {
        messages.pop_front();
    }
    messages.push_back(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_is_recorded_as_opencode_shows_it() {
        let mut record = Record::new("b0a7".into());
        let id = record.open("acp-1".into(), "/r".into(), 10).id.clone();
        assert_eq!(id, "ses_b0a700000001");
        assert!(record.begin_turn(&id, "Say hello\nplease", 11).is_some());
        assert!(record.begin_turn(&id, "again", 12).is_none(), "busy");
        assert_eq!(record.status()[&id]["type"], "busy");
        record.append("acp-1", "Hello ", 13);
        record.append("acp-1", "there", 14);
        record.append("acp-unknown", "lost", 14);
        let (ended, _) = record.end_turn(&id, None, 15).expect("ended");
        let shown = ended.to_json(&id);
        assert_eq!(shown["parts"][0]["text"], "Hello there");
        assert_eq!(shown["info"]["role"], "assistant");
        assert!(shown["info"].get("error").is_none());
        assert_eq!(record.status(), json!({}));
        let session = record.session(&id).expect("session");
        assert_eq!(session.title, "Say hello");
        assert_eq!(session.messages.len(), 2);
        assert_eq!(record.ours("acp-1"), Some(id.as_str()));
    }

    #[test]
    fn a_cancelled_turn_reads_as_opencode_aborted_one() {
        let mut record = Record::default();
        let id = record.open("a".into(), "/r".into(), 1).id.clone();
        record.begin_turn(&id, "go", 2);
        let (ended, _) = record
            .end_turn(&id, Some("cancelled".into()), 3)
            .expect("ended");
        assert_eq!(
            ended.to_json(&id)["info"]["error"]["name"],
            "MessageAbortedError"
        );
    }

    #[test]
    fn answers_pick_the_agent_option_by_kind() {
        let mut record = Record::default();
        let session = record.open("a".into(), "/r".into(), 1).id.clone();
        let options = vec![
            ("proceed_always".to_owned(), "allow_always".to_owned()),
            ("proceed_once".to_owned(), "allow_once".to_owned()),
            ("cancel".to_owned(), "reject_once".to_owned()),
        ];
        let id = record.ask(session.clone(), "execute".into(), "echo hi".into(), options);
        let asked = record.permission(&id).expect("asked");
        assert_eq!(asked.option_for("once"), Some("proceed_once"));
        assert_eq!(asked.option_for("always"), Some("proceed_always"));
        assert_eq!(asked.option_for("reject"), Some("cancel"));
        assert_eq!(asked.option_for("maybe"), None);
        assert_eq!(asked.to_json()["patterns"][0], "echo hi");
        assert_eq!(record.permissions().len(), 1);
        record.begin_turn(&session, "x", 2);
        let (_, dropped) = record.end_turn(&session, None, 3).expect("ended");
        assert_eq!(dropped, std::slice::from_ref(&id));
        assert!(
            record.permissions().is_empty(),
            "a turn's requests end with it"
        );
    }

    #[test]
    fn histories_and_sessions_are_bounded() {
        let mut record = Record::default();
        let id = record.open("a".into(), "/r".into(), 0).id.clone();
        for n in 0..KEPT_MESSAGES as u64 {
            record.begin_turn(&id, "x", n);
            record.end_turn(&id, None, n);
        }
        assert_eq!(
            record.session(&id).expect("s").messages.len(),
            KEPT_MESSAGES
        );
        for n in 0..KEPT_SESSIONS as u64 + 5 {
            record.open(format!("b{n}"), "/r".into(), n + 1000);
        }
        assert_eq!(record.sessions().len(), KEPT_SESSIONS);
        assert!(
            record.session(&id).is_none(),
            "the least recently updated went first"
        );
    }
}
