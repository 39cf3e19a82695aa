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
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn deadlines_are_the_backoff_end_the_next_probe_and_the_idle_timeout() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        assert_eq!(next_deadline(&s, &p, false), Some(t0), "probe at once");
        assert_eq!(
            next_deadline(&s, &p, true),
            Some(at(t0, 7200)),
            "while probing, only the idle deadline"
        );
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 1),
            &p,
            0.0,
        );
        assert_eq!(next_deadline(&s, &p, false), Some(at(t0, 11)));
        decide(&mut s, Observation::Unprobed, at(t0, 11), &p, 0.0);
        assert_eq!(next_deadline(&s, &p, false), Some(at(t0, 21)));
        decide(
            &mut s,
            Observation::Exited { how: "x".into() },
            at(t0, 12),
            &p,
            0.0,
        );
        assert_eq!(next_deadline(&s, &p, false), Some(at(t0, 13)));
        let parked = Supervised {
            phase: Phase::Idle { since: t0 },
            ..Supervised::starting()
        };
        assert_eq!(next_deadline(&parked, &p, false), None);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute_with_bounded_jitter() {
        let p = Policy::default();
        let table = [
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 32),
            (7, 60),
            (20, 60),
        ];
        for (failures, secs) in table {
            assert_eq!(
                backoff(&p, failures, 0.0),
                Duration::from_secs(secs),
                "failure {failures}"
            );
        }
        assert_eq!(backoff(&p, 1, 0.999), Duration::from_micros(1_249_750));
        assert_eq!(
            backoff(&p, 7, 0.999),
            Duration::from_secs(60),
            "jitter never passes the cap"
        );
    }

    #[test]
    fn a_crash_backs_off_then_restarts() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        assert_eq!(
            decide(
                &mut s,
                Observation::Exited {
                    how: "exit code 1".into()
                },
                at(t0, 10),
                &p,
                0.0
            ),
            vec![]
        );
        assert_eq!(s.phase, Phase::Backoff { until: at(t0, 11) });
        assert_eq!(s.state_word(), "backoff");
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 10), &p, 0.0),
            vec![],
            "not before the backoff ends"
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 11), &p, 0.0),
            vec![Action::Start]
        );
        assert_eq!((s.phase.clone(), s.restarts), (Phase::Starting, 1));
        decide(&mut s, Observation::Ready, at(t0, 12), &p, 0.0);
        assert_eq!(s.state_word(), "running");
    }

    #[test]
    fn five_failures_within_ten_minutes_give_up_with_the_reason() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        for i in 0..4 {
            decide(
                &mut s,
                Observation::Exited {
                    how: "killed by signal 9".into(),
                },
                at(t0, 60 * i),
                &p,
                0.0,
            );
            decide(&mut s, Observation::Tick, at(t0, 60 * i + 59), &p, 0.0);
            decide(&mut s, Observation::Ready, at(t0, 60 * i + 59), &p, 0.0);
        }
        let actions = decide(
            &mut s,
            Observation::Exited {
                how: "killed by signal 9".into(),
            },
            at(t0, 300),
            &p,
            0.0,
        );
        let reason = "5 failures within 10 minutes; last: exited (killed by signal 9)".to_owned();
        assert_eq!(
            actions,
            vec![Action::GiveUp {
                reason: reason.clone()
            }]
        );
        assert_eq!(s.phase, Phase::Failed { reason });
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 10_000), &p, 0.0),
            vec![],
            "failed stays failed"
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count_and_health_resets_them() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        for i in 0..4 {
            decide(
                &mut s,
                Observation::Exited { how: "x".into() },
                at(t0, 200 * i),
                &p,
                0.0,
            );
            decide(&mut s, Observation::Tick, at(t0, 200 * i + 100), &p, 0.0);
            decide(&mut s, Observation::Ready, at(t0, 200 * i + 100), &p, 0.0);
        }
        decide(
            &mut s,
            Observation::Exited { how: "x".into() },
            at(t0, 800),
            &p,
            0.0,
        );
        assert!(
            matches!(s.phase, Phase::Backoff { .. }),
            "the first failure fell out of the window"
        );
        decide(&mut s, Observation::Tick, at(t0, 900), &p, 0.0);
        decide(&mut s, Observation::Ready, at(t0, 900), &p, 0.0);
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 1200),
            &p,
            0.0,
        );
        assert!(
            s.failures.is_empty(),
            "five healthy minutes reset the count"
        );
    }

    #[test]
    fn a_wedged_server_is_recycled_after_three_failed_probes_unless_busy_before_the_deadline() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        let fail = Observation::Probe {
            ok: false,
            busy_sessions: false,
        };
        assert_eq!(decide(&mut s, fail.clone(), at(t0, 10), &p, 0.0), vec![]);
        assert_eq!(s.state_word(), "unhealthy");
        assert_eq!(decide(&mut s, fail.clone(), at(t0, 20), &p, 0.0), vec![]);
        let reason = "no answer to 3 health probes in a row".to_owned();
        assert_eq!(
            decide(&mut s, fail, at(t0, 30), &p, 0.0),
            vec![Action::Recycle { reason }]
        );
        assert_eq!((s.phase.clone(), s.restarts), (Phase::Starting, 1));

        // A failed probe cannot see sessions; the last good probe saw a busy one.
        let mut busy = Supervised::running(t0);
        decide(
            &mut busy,
            Observation::Probe {
                ok: true,
                busy_sessions: true,
            },
            at(t0, 5),
            &p,
            0.0,
        );
        let fail_busy = Observation::Probe {
            ok: false,
            busy_sessions: false,
        };
        for i in 1..=3 {
            assert_eq!(
                decide(&mut busy, fail_busy.clone(), at(t0, 10 * i), &p, 0.0),
                vec![]
            );
        }
        assert_eq!(
            decide(&mut busy, fail_busy.clone(), at(t0, 200), &p, 0.0),
            vec![],
            "draining"
        );
        assert!(
            matches!(
                decide(&mut busy, fail_busy, at(t0, 331), &p, 0.0).as_slice(),
                [Action::Recycle { .. }]
            ),
            "after the drain deadline"
        );
        let mut recovers = Supervised::running(t0);
        decide(
            &mut recovers,
            Observation::Probe {
                ok: false,
                busy_sessions: false,
            },
            at(t0, 10),
            &p,
            0.0,
        );
        decide(
            &mut recovers,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 20),
            &p,
            0.0,
        );
        assert_eq!(recovers.state_word(), "running");
    }

    #[test]
    fn probes_are_due_every_interval() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::running(t0);
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 1), &p, 0.0),
            vec![Action::Probe]
        );
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 1),
            &p,
            0.0,
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 5), &p, 0.0),
            vec![]
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 11), &p, 0.0),
            vec![Action::Probe]
        );
    }

    #[test]
    fn no_activity_for_the_idle_timeout_parks_and_demand_starts_again() {
        let (p, t0) = (
            Policy {
                idle_timeout: Some(Duration::from_secs(100)),
                ..Policy::default()
            },
            Instant::now(),
        );
        let mut s = Supervised::running(t0);
        decide(&mut s, Observation::Activity, at(t0, 50), &p, 0.0);
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 149),
            &p,
            0.0,
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 149), &p, 0.0),
            vec![],
            "active 99 s ago"
        );
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: true,
            },
            at(t0, 149),
            &p,
            0.0,
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 248), &p, 0.0),
            vec![Action::Probe],
            "a busy session is activity: no park"
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 249), &p, 0.0),
            vec![Action::Park]
        );
        assert_eq!(s.state_word(), "idle");
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 10_000), &p, 0.0),
            vec![],
            "parked until asked"
        );
        assert_eq!(
            decide(&mut s, Observation::Demand, at(t0, 10_001), &p, 0.0),
            vec![Action::Start]
        );
        decide(&mut s, Observation::Ready, at(t0, 10_002), &p, 0.0);
        assert_eq!(s.state_word(), "running");
        let never = Policy {
            idle_timeout: None,
            ..Policy::default()
        };
        let mut s = Supervised::running(t0);
        decide(
            &mut s,
            Observation::Probe {
                ok: true,
                busy_sessions: false,
            },
            at(t0, 1_000_000),
            &never,
            0.0,
        );
        assert_eq!(
            decide(&mut s, Observation::Tick, at(t0, 1_000_001), &never, 0.0),
            vec![]
        );
    }

    #[test]
    fn the_rss_watchdog_recycles_when_no_session_is_busy() {
        let (p, t0) = (Policy::default(), Instant::now());
        let over = Observation::OverMemory {
            rss: 3 << 30,
            limit: 2 << 30,
        };
        let mut idle = Supervised::running(t0);
        let actions = decide(&mut idle, over.clone(), at(t0, 5), &p, 0.0);
        let reason = "its processes use 3072 MiB, past the memory limit of 2048 MiB".to_owned();
        assert_eq!(actions, vec![Action::Recycle { reason }]);
        let mut busy = Supervised::running(t0);
        decide(
            &mut busy,
            Observation::Probe {
                ok: true,
                busy_sessions: true,
            },
            at(t0, 1),
            &p,
            0.0,
        );
        assert_eq!(
            decide(&mut busy, over.clone(), at(t0, 5), &p, 0.0),
            vec![],
            "a busy session drains first"
        );
        assert!(matches!(
            decide(&mut busy, over, at(t0, 306), &p, 0.0).as_slice(),
            [Action::Recycle { .. }]
        ));
    }

    #[test]
    fn a_failed_start_counts_as_a_failure() {
        let (p, t0) = (Policy::default(), Instant::now());
        let mut s = Supervised::starting();
        decide(
            &mut s,
            Observation::StartFailed {
                reason: "port_unavailable".into(),
            },
            t0,
            &p,
            0.0,
        );
        assert_eq!(s.phase, Phase::Backoff { until: at(t0, 1) });
    }
}
