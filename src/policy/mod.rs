//! The Supervisor's decisions, as a pure function of (what it knows, what it observed, now). A
//! leaf: the config reads its knobs ([`Policy`]), the Supervisor actor asks it what to do.
//!
//! No IO, no clock, no randomness: time and jitter are arguments, so every transition is
//! table-tested with made-up instants. The actor in `supervisor` gathers observations and carries
//! out the returned [`Action`]s; nothing here touches a process.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The knobs of the policy (defaults from the issue: 1 s → 60 s backoff, reset after 5 minutes
/// healthy, give up after 5 failures in 10 minutes, a probe every 10 s, recycle after 3 failed
/// probes, idle after 2 hours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub healthy_reset: Duration,
    pub max_failures: usize,
    pub failure_window: Duration,
    pub probe_interval: Duration,
    pub wedge_after: u32,
    /// How long a wedged instance with busy sessions is left to finish before it is recycled anyway.
    pub drain_deadline: Duration,
    /// `None` disables idle parking.
    pub idle_timeout: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            healthy_reset: Duration::from_secs(300),
            max_failures: 5,
            failure_window: Duration::from_secs(600),
            probe_interval: Duration::from_secs(10),
            wedge_after: 3,
            drain_deadline: Duration::from_secs(300),
            idle_timeout: Some(Duration::from_secs(2 * 3600)),
        }
    }
}

/// The supervisor's view of one Project whose user wants it running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Being launched; nothing to decide until it is ready or fails.
    Starting,
    Running {
        since: Instant,
        /// Consecutive failed health probes.
        failed_probes: u32,
        last_probe: Option<Instant>,
        last_activity: Instant,
        /// When a wedge (or a memory overrun) was first seen while sessions were busy.
        draining_since: Option<Instant>,
        /// Whether the last probe found a busy session.
        busy: bool,
    },
    /// Waiting to be restarted after a failure.
    Backoff { until: Instant },
    /// Parked for lack of activity; started again on demand.
    Idle { since: Instant },
    /// Gave up: too many failures in the window.
    Failed { reason: String },
}

/// What the supervisor remembers about a Project between observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Supervised {
    pub phase: Phase,
    /// Failure times within the window (crashes, failed starts, recycles).
    pub failures: VecDeque<Instant>,
    pub restarts: u32,
}

impl Supervised {
    pub(crate) fn starting() -> Supervised {
        Supervised {
            phase: Phase::Starting,
            failures: VecDeque::new(),
            restarts: 0,
        }
    }

    pub(crate) fn running(now: Instant) -> Supervised {
        Supervised {
            phase: running(now),
            failures: VecDeque::new(),
            restarts: 0,
        }
    }

    /// The word a phase reads as (the tables below compare it; the Supervisor's view also knows
    /// the process and the user's wish).
    #[cfg(test)]
    fn state_word(&self) -> &'static str {
        match &self.phase {
            Phase::Starting => "starting",
            Phase::Running { failed_probes, .. } if *failed_probes > 0 => "unhealthy",
            Phase::Running { .. } => "running",
            Phase::Backoff { .. } => "backoff",
            Phase::Idle { .. } => "idle",
            Phase::Failed { .. } => "failed",
        }
    }
}

/// One thing the actor saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observation {
    /// The launch finished and the instance answers.
    Ready,
    /// A launch failed before the instance was ready.
    StartFailed { reason: String },
    /// The instance process is gone without anyone asking (`how`: exit code, signal, OOM).
    Exited { how: String },
    /// A health probe finished.
    Probe { ok: bool, busy_sessions: bool },
    /// A probe could not ask the Instance (its `.env` is unreadable just now): nothing is known
    /// of its health, but the next probe is due a full interval later.
    Unprobed,
    /// Something used the instance: a busy session, a gateway call, an open connection.
    Activity,
    /// A gateway call arrived for a parked Project.
    Demand,
    /// The instance's process tree uses more memory than its limit (the RSS watchdog, where no
    /// cgroup enforces the limit).
    OverMemory { rss: u64, limit: u64 },
    /// Time passed.
    Tick,
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a health probe now.
    Probe,
    /// Launch the instance now (after a backoff, or on demand).
    Start,
    /// Stop the instance and launch it again (it is wedged).
    Recycle { reason: String },
    /// Stop the instance for lack of activity; keep the Project wanted.
    Park,
    /// Record the give-up, with the reason, for `status`.
    GiveUp { reason: String },
}

fn running(now: Instant) -> Phase {
    Phase::Running {
        since: now,
        failed_probes: 0,
        last_probe: None,
        last_activity: now,
        draining_since: None,
        busy: false,
    }
}

/// The delay before restart number `failures` (1-based), with `jitter` in [0, 1) spreading it by
/// up to a quarter, never past the cap.
pub(crate) fn backoff(policy: &Policy, failures: usize, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16) as u32;
    let base = policy
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(policy.backoff_max);
    let spread = base.mul_f64(0.25 * jitter.clamp(0.0, 1.0));
    (base + spread).min(policy.backoff_max)
}

/// Records a failure and decides between a backoff and giving up.
fn failed(
    s: &mut Supervised,
    now: Instant,
    policy: &Policy,
    jitter: f64,
    what: String,
) -> Vec<Action> {
    s.failures.push_back(now);
    while s
        .failures
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > policy.failure_window)
    {
        s.failures.pop_front();
    }
    if s.failures.len() >= policy.max_failures {
        let reason = format!(
            "{} failures within {} minutes; last: {what}",
            s.failures.len(),
            policy.failure_window.as_secs() / 60
        );
        s.phase = Phase::Failed {
            reason: reason.clone(),
        };
        return vec![Action::GiveUp { reason }];
    }
    s.phase = Phase::Backoff {
        until: now + backoff(policy, s.failures.len(), jitter),
    };
    Vec::new()
}

/// Recycles a live but useless Instance (wedged, or over its memory limit): not while a session
/// is busy (`busy_since`: when that was first seen) until the drain deadline, then at once rather
/// than after a backoff, counting it as a failure.
fn recycle(
    s: &mut Supervised,
    now: Instant,
    policy: &Policy,
    jitter: f64,
    busy_since: Option<Instant>,
    reason: String,
) -> Vec<Action> {
    if busy_since.is_some_and(|since| now.saturating_duration_since(since) < policy.drain_deadline)
    {
        return Vec::new();
    }
    let mut actions = failed(s, now, policy, jitter, format!("recycled: {reason}"));
    if !matches!(s.phase, Phase::Failed { .. }) {
        s.phase = Phase::Starting;
        s.restarts += 1;
        actions.push(Action::Recycle { reason });
    }
    actions
}

/// The policy. `jitter` is a number in [0, 1) drawn by the caller.
pub(crate) fn decide(
    s: &mut Supervised,
    observation: Observation,
    now: Instant,
    policy: &Policy,
    jitter: f64,
) -> Vec<Action> {
    match (&mut s.phase, observation) {
        (Phase::Failed { .. }, _) => Vec::new(),
        (Phase::Starting | Phase::Backoff { .. } | Phase::Idle { .. }, Observation::Ready) => {
            s.phase = running(now);
            Vec::new()
        }
        (_, Observation::StartFailed { reason }) => {
            failed(s, now, policy, jitter, format!("start failed: {reason}"))
        }
        (
            Phase::Running { .. } | Phase::Starting | Phase::Idle { .. },
            Observation::Exited { how },
        ) => failed(s, now, policy, jitter, format!("exited ({how})")),
        (Phase::Backoff { until }, Observation::Tick) if now >= *until => {
            s.phase = Phase::Starting;
            s.restarts += 1;
            vec![Action::Start]
        }
        (Phase::Idle { .. }, Observation::Demand) => {
            s.phase = Phase::Starting;
            vec![Action::Start]
        }
        (Phase::Running { last_activity, .. }, Observation::Activity) => {
            *last_activity = now;
            Vec::new()
        }
        (
            Phase::Running {
                since,
                failed_probes,
                last_probe,
                last_activity,
                draining_since,
                busy,
            },
            Observation::Probe { ok, busy_sessions },
        ) => {
            *last_probe = Some(now);
            // A failed probe cannot see the sessions: keep what the last good one saw.
            if ok {
                *busy = busy_sessions;
            }
            if busy_sessions {
                *last_activity = now;
            }
            if ok {
                *failed_probes = 0;
                *draining_since = None;
                if now.saturating_duration_since(*since) >= policy.healthy_reset {
                    s.failures.clear();
                }
                return Vec::new();
            }
            *failed_probes += 1;
            if *failed_probes < policy.wedge_after {
                return Vec::new();
            }
            let reason = format!("no answer to {} health probes in a row", *failed_probes);
            let busy_since = (*busy).then(|| *draining_since.get_or_insert(now));
            recycle(s, now, policy, jitter, busy_since, reason)
        }
        (Phase::Running { last_probe, .. }, Observation::Unprobed) => {
            *last_probe = Some(now);
            Vec::new()
        }
        (
            Phase::Running {
                busy,
                draining_since,
                ..
            },
            Observation::OverMemory { rss, limit },
        ) => {
            let reason = format!(
                "its processes use {} MiB, past the memory limit of {} MiB",
                rss / (1024 * 1024),
                limit / (1024 * 1024)
            );
            let busy_since = (*busy).then(|| *draining_since.get_or_insert(now));
            recycle(s, now, policy, jitter, busy_since, reason)
        }
        (
            Phase::Running {
                last_probe,
                last_activity,
                ..
            },
            Observation::Tick,
        ) => {
            if let Some(idle_timeout) = policy.idle_timeout
                && now.saturating_duration_since(*last_activity) >= idle_timeout
            {
                s.phase = Phase::Idle { since: now };
                return vec![Action::Park];
            }
            match last_probe {
                Some(at) if now.saturating_duration_since(*at) < policy.probe_interval => {
                    Vec::new()
                }
                _ => vec![Action::Probe],
            }
        }
        _ => Vec::new(),
    }
}

/// When the policy next has something to decide without a new observation: the end of a
/// backoff, the next probe (unless one is `probing` already), the idle deadline. `None` when
/// only an observation can change anything.
pub(crate) fn next_deadline(s: &Supervised, policy: &Policy, probing: bool) -> Option<Instant> {
    match &s.phase {
        Phase::Backoff { until } => Some(*until),
        Phase::Running {
            since,
            last_probe,
            last_activity,
            ..
        } => {
            let probe =
                (!probing).then(|| last_probe.map_or(*since, |at| at + policy.probe_interval));
            let idle = policy.idle_timeout.map(|timeout| *last_activity + timeout);
            match (probe, idle) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Phase::Starting | Phase::Idle { .. } | Phase::Failed { .. } => None,
    }
}

#[cfg(test)]
mod tests;
