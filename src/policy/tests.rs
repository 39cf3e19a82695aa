//! Table tests of the policy: every decision with explicit time, jitter and policy.

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
