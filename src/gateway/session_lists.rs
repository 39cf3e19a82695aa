//! `opencode-session-list` answers kept per live Instance until that Instance says something
//! changed. Clients poll the list, and OpenCode reads it from its database at every ask (2–3 ms on
//! a quiet machine, 5–10 ms beside a busy fleet); a kept answer costs a map lookup.
//!
//! An answer is OpenCode's own, word for word, and is kept only while a watcher holds that
//! Instance's event stream (`GET /event`) open and only if nothing happened while it was read.
//! It is dropped by every event except those known not to touch the list ([`changes_the_list`]),
//! by the end of every Gateway call that changes something in the Project, and by the stream's
//! end. The first list call for a launch (told apart by the Instance's process) starts the watcher,
//! which reads the list once as the stream opens so that the next call finds it kept; it ends
//! with the stream: when the Instance stops, or after [`SILENCE`] without even a
//! heartbeat. This decides nothing about who may reach a Project: the route and the lease come
//! first, and only OpenCode's reading of its list is replaced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::results::json_text;
use crate::instance::api::{ApiError, InstanceApi};
use crate::instance::events::EventFrames;
use crate::metrics::Metrics;
use crate::state::ProcIdentity;

/// OpenCode sends a heartbeat every 10 s; a stream silent for this long belongs to an Instance
/// that hangs, and is dropped with what it kept.
const SILENCE: Duration = Duration::from_secs(30);

/// How long the watcher waits for the list it reads when the stream opens.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an Instance whose `/event` is no event stream (an OpenCode without one) is asked
/// directly before its stream is tried again.
const REFUSED_FOR: Duration = Duration::from_secs(60);

/// The kept answers of every Project's Instance, shared by all Gateway sessions.
#[derive(Default)]
pub(crate) struct SessionLists {
    projects: Mutex<HashMap<String, Entry>>,
    watchers: AtomicU64,
}

/// One Project's launch as far as its list is concerned.
struct Entry {
    launch: ProcIdentity,
    /// The watcher that owns this entry; a watcher of an earlier launch changes nothing.
    watcher: u64,
    watch: Watch,
}

enum Watch {
    /// The stream is being opened: nothing is kept until it is.
    Opening,
    /// The stream is open. `changes` counts what dropped an answer; the answer is kept with the
    /// count it was read at, and is current while that is still the count.
    Open {
        changes: u64,
        answer: Option<(u64, Arc<str>)>,
    },
    /// `/event` answered with no event stream: asked directly until then.
    Refused { until: Instant },
}

/// A list call's answer.
pub(crate) enum Listed {
    /// A list, as its text (kept, or kept now).
    Text(Arc<str>),
    /// OpenCode answered something else than a list: passed on, never kept.
    Other(Value),
}

/// What a list call does.
enum Lookup {
    /// Answer with this text.
    Kept(Arc<str>),
    /// Ask the Instance; hand its answer back with the ticket (if any) to keep it.
    Ask(Option<Ticket>),
}

/// Proof of what the stream had said when an answer was asked for.
struct Ticket {
    watcher: u64,
    changes: u64,
}

impl SessionLists {
    /// The session list of `project`'s Instance `launch` (its process): the one kept, or
    /// OpenCode's answer (kept when nothing happened while it was read), counted in `metrics`
    /// either way.
    pub(crate) async fn list(
        self: &Arc<Self>,
        project: &str,
        launch: ProcIdentity,
        api: &InstanceApi,
        metrics: &Metrics,
        timeout: Duration,
    ) -> Result<Listed, ApiError> {
        let ticket = match self.lookup(project, launch, api) {
            Lookup::Kept(text) => {
                metrics.session_list("kept");
                return Ok(Listed::Text(text));
            }
            Lookup::Ask(ticket) => ticket,
        };
        metrics.session_list("asked");
        let value = api.call(Method::GET, "/session", None, timeout).await?;
        Ok(match (ticket, list_text(&value)) {
            (Some(ticket), Some(text)) => {
                self.keep(project, ticket, text.clone());
                Listed::Text(text)
            }
            (None, Some(text)) => Listed::Text(text),
            (_, None) => Listed::Other(value),
        })
    }

    /// The kept answer for `project`'s Instance `launch`, or a ticket to keep the one about to be
    /// asked for. Starts watching that Instance when nothing does.
    fn lookup(self: &Arc<Self>, project: &str, launch: ProcIdentity, api: &InstanceApi) -> Lookup {
        let mut projects = self.lock();
        let entry = projects.get(project).filter(|entry| entry.launch == launch);
        match entry.map(|entry| (entry.watcher, &entry.watch)) {
            Some((watcher, Watch::Open { changes, answer })) => match answer {
                Some((at, text)) if at == changes => Lookup::Kept(text.clone()),
                _ => Lookup::Ask(Some(Ticket {
                    watcher,
                    changes: *changes,
                })),
            },
            Some((_, Watch::Opening)) => Lookup::Ask(None),
            Some((_, Watch::Refused { until })) if Instant::now() < *until => Lookup::Ask(None),
            _ => {
                let watcher = self.watchers.fetch_add(1, Ordering::Relaxed) + 1;
                projects.insert(
                    project.to_owned(),
                    Entry {
                        launch,
                        watcher,
                        watch: Watch::Opening,
                    },
                );
                tokio::spawn(watch(
                    Arc::downgrade(self),
                    project.to_owned(),
                    watcher,
                    api.clone(),
                ));
                Lookup::Ask(None)
            }
        }
    }

    /// Keeps an answer asked for with `ticket`, unless something happened since.
    fn keep(&self, project: &str, ticket: Ticket, text: Arc<str>) {
        self.with_own(project, ticket.watcher, |watch| {
            if let Watch::Open { changes, answer } = watch
                && *changes == ticket.changes
            {
                *answer = Some((*changes, text));
            }
        });
    }

    /// A Gateway call that changes something in `project` ended (`None`: in the only Project
    /// serving, or one the call named no further): what was kept may no longer be current.
    pub(crate) fn changed(&self, project: Option<&str>) {
        let mut projects = self.lock();
        for (name, entry) in projects.iter_mut() {
            if project.is_none_or(|p| p == name) {
                entry.watch.change();
            }
        }
    }

    /// A ticket for the watcher's own read of the list.
    fn ticket(&self, project: &str, watcher: u64) -> Option<Ticket> {
        self.with_own(project, watcher, |watch| match watch {
            Watch::Open { changes, .. } => Some(Ticket {
                watcher,
                changes: *changes,
            }),
            _ => None,
        })
        .flatten()
    }

    fn opened(&self, project: &str, watcher: u64) {
        self.with_own(project, watcher, |watch| {
            if let Watch::Opening = watch {
                *watch = Watch::Open {
                    changes: 0,
                    answer: None,
                };
            }
        });
    }

    fn event(&self, project: &str, watcher: u64) {
        self.with_own(project, watcher, Watch::change);
    }

    /// The watcher ended: forget the entry, or remember for a while that it has no stream.
    fn ended(&self, project: &str, watcher: u64, refused: bool) {
        let mut projects = self.lock();
        match projects.get_mut(project) {
            Some(entry) if entry.watcher == watcher && refused => {
                entry.watch = Watch::Refused {
                    until: Instant::now() + REFUSED_FOR,
                };
            }
            Some(entry) if entry.watcher == watcher => {
                projects.remove(project);
            }
            _ => {}
        }
    }

    /// Runs `f` on the entry's state if `watcher` still owns it.
    fn with_own<R>(
        &self,
        project: &str,
        watcher: u64,
        f: impl FnOnce(&mut Watch) -> R,
    ) -> Option<R> {
        self.lock()
            .get_mut(project)
            .filter(|entry| entry.watcher == watcher)
            .map(|entry| f(&mut entry.watch))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Nothing panics while holding the lock; a poisoned map is still a correct map.
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Watch {
    fn change(&mut self) {
        if let Watch::Open { changes, answer } = self {
            *changes += 1;
            *answer = None;
        }
    }
}

/// The text of a list answer, as the tools render OpenCode's JSON; `None` for anything but a
/// list (never kept).
fn list_text(value: &Value) -> Option<Arc<str>> {
    value.is_array().then(|| json_text(value).into())
}

/// Whether an event may mean a different list. Only the kinds known to leave every session's
/// fields alone pass (a turn's progress and a session's busy state are not in the list; a turn
/// that changes a session also sends `session.updated`); any other, known or new, drops the
/// answer.
fn changes_the_list(kind: &str) -> bool {
    !matches!(
        kind,
        "server.connected"
            | "server.heartbeat"
            | "message.part.delta"
            | "message.part.updated"
            | "message.updated"
            | "session.status"
            | "session.idle"
            | "permission.asked"
            | "permission.replied"
            | "todo.updated"
    )
}

/// Follows one Instance's event stream for its entry, then says how it ended. Holds the lists
/// weakly: a closed Gateway's watchers end at their stream's next heartbeat.
async fn watch(lists: Weak<SessionLists>, project: String, watcher: u64, api: InstanceApi) {
    let refused = match api.events().await {
        Ok(stream) if is_event_stream(&stream) => {
            follow(&lists, &project, watcher, &api, stream).await;
            false
        }
        // OpenCode answers routes it does not have with its web UI.
        Ok(_) | Err(ApiError::Status { .. }) => true,
        // Not reachable now: the next list call tries again.
        Err(_) => false,
    };
    if let Some(lists) = lists.upgrade() {
        lists.ended(&project, watcher, refused);
    }
}

async fn follow(
    lists: &Weak<SessionLists>,
    project: &str,
    watcher: u64,
    api: &InstanceApi,
    mut stream: reqwest::Response,
) {
    let mut frames = EventFrames::default();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(SILENCE, stream.chunk()).await {
        let (Ok(kinds), Some(lists)) = (frames.push(&chunk), lists.upgrade()) else {
            return;
        };
        for kind in kinds {
            if kind == "server.connected" {
                lists.opened(project, watcher);
                // The next call finds the list kept. Events that arrive meanwhile wait in the
                // stream and drop it once read, so nothing stale survives this read.
                if let Some(ticket) = lists.ticket(project, watcher)
                    && let Ok(value) = api.call(Method::GET, "/session", None, ASK_TIMEOUT).await
                    && let Some(text) = list_text(&value)
                {
                    lists.keep(project, ticket, text);
                }
            } else if changes_the_list(&kind) {
                lists.event(project, watcher);
            }
        }
    }
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    fn launch(pid: i32) -> ProcIdentity {
        ProcIdentity {
            pid,
            start_ticks: 7,
        }
    }

    fn open(lists: &SessionLists, project: &str, launch: ProcIdentity) -> u64 {
        let watcher = lists.watchers.fetch_add(1, Ordering::Relaxed) + 1;
        lists.lock().insert(
            project.to_owned(),
            Entry {
                launch,
                watcher,
                watch: Watch::Opening,
            },
        );
        lists.opened(project, watcher);
        watcher
    }

    fn ticket(lookup: Lookup) -> Ticket {
        match lookup {
            Lookup::Ask(Some(ticket)) => ticket,
            Lookup::Ask(None) => panic!("no ticket"),
            Lookup::Kept(text) => panic!("kept {text}"),
        }
    }

    fn kept(lookup: Lookup) -> Option<String> {
        match lookup {
            Lookup::Kept(text) => Some(text.to_string()),
            Lookup::Ask(_) => None,
        }
    }

    #[tokio::test]
    async fn an_answer_is_kept_until_an_event_or_a_write_and_never_across_launches() {
        let lists = Arc::new(SessionLists::default());
        let api = InstanceApi::new(1, Secret::new("pw".into()));
        let watcher = open(&lists, "a", launch(4100));

        let first = ticket(lists.lookup("a", launch(4100), &api));
        lists.keep("a", first, "[1]".into());
        assert_eq!(
            kept(lists.lookup("a", launch(4100), &api)).as_deref(),
            Some("[1]")
        );

        // An event drops it; an event while an answer is read: that answer is not kept.
        lists.event("a", watcher);
        let during = ticket(lists.lookup("a", launch(4100), &api));
        lists.event("a", watcher);
        lists.keep("a", during, "[stale]".into());
        assert_eq!(
            kept(lists.lookup("a", launch(4100), &api)),
            None,
            "not kept"
        );

        // A write through the Gateway, to this Project or to an unnamed one.
        let fresh = ticket(lists.lookup("a", launch(4100), &api));
        lists.keep("a", fresh, "[2]".into());
        lists.changed(Some("b"));
        assert_eq!(
            kept(lists.lookup("a", launch(4100), &api)).as_deref(),
            Some("[2]")
        );
        lists.changed(Some("a"));
        assert_eq!(kept(lists.lookup("a", launch(4100), &api)), None);
        let fresh = ticket(lists.lookup("a", launch(4100), &api));
        lists.keep("a", fresh, "[3]".into());
        lists.changed(None);
        assert_eq!(kept(lists.lookup("a", launch(4100), &api)), None);

        // Another launch (another process, on the same port or not) starts over; the old watcher
        // changes nothing.
        let fresh = ticket(lists.lookup("a", launch(4100), &api));
        lists.keep("a", fresh, "[4]".into());
        assert!(matches!(
            lists.lookup("a", launch(4200), &api),
            Lookup::Ask(None)
        ));
        lists.opened("a", watcher);
        lists.ended("a", watcher, false);
        assert!(matches!(
            lists.lookup("a", launch(4200), &api),
            Lookup::Ask(None)
        ));
        assert!(
            lists.lock().contains_key("a"),
            "the new launch's entry stays"
        );
    }

    #[tokio::test]
    async fn an_instance_without_an_event_stream_is_asked_directly() {
        let lists = Arc::new(SessionLists::default());
        let api = InstanceApi::new(1, Secret::new("pw".into()));
        let watcher = open(&lists, "a", launch(4100));
        lists.ended("a", watcher, true);
        for _ in 0..3 {
            assert!(matches!(
                lists.lookup("a", launch(4100), &api),
                Lookup::Ask(None)
            ));
        }
        assert_eq!(lists.lock()["a"].watcher, watcher, "no new watcher");
        let watcher = open(&lists, "b", launch(4101));
        lists.ended("b", watcher, false);
        assert!(
            !lists.lock().contains_key("b"),
            "a lost stream is forgotten"
        );
    }

    #[test]
    fn only_events_known_to_leave_the_list_alone_keep_it() {
        for kind in [
            "session.created",
            "session.updated",
            "session.deleted",
            "session.diff",
            "server.instance.disposed",
            "plugin.added",
            "",
        ] {
            assert!(changes_the_list(kind), "{kind}");
        }
        for kind in ["server.heartbeat", "message.part.delta", "session.status"] {
            assert!(!changes_the_list(kind), "{kind}");
        }
    }
}
