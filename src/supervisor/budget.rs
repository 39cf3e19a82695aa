//! The memory budget as a decision: whether a launch fits, which Projects to park first so that
//! it does, or why it cannot. Pure: the Supervisor gathers what lives (measured memory, or an
//! estimate for what is not measured yet) and acts on the answer.
//!
//! A Project can be parked when its Instance is up with no busy session and no pending permission
//! request; the least recently active go first, and only as many as the launch needs. Nothing is
//! parked when parking everything that can be would still not make room: the launch is refused,
//! naming what runs and why each cannot be parked.

use std::time::Instant;

/// One living (or launching) Instance, as the budget sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    pub name: String,
    /// Its memory: measured, or the estimate for a launch not measured yet.
    pub memory: u64,
    /// When it was last active, if it can be parked; why not, otherwise.
    pub parkable: Result<Instant, String>,
}

/// What a launch needing some memory should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fit {
    Fits,
    /// Park these first (least recently active first), then launch.
    Park(Vec<String>),
    /// Nothing that can be parked makes room: the reason, for `over_budget`.
    Refuse(String),
}

const MIB: u64 = 1024 * 1024;

/// Whether `project`, needing `need` bytes, fits in `budget` beside `live`.
pub(crate) fn fit(project: &str, need: u64, budget: u64, live: &[Live]) -> Fit {
    let used: u64 = live.iter().map(|l| l.memory).sum();
    if used + need <= budget {
        return Fit::Fits;
    }
    let mut parkable: Vec<(&Live, Instant)> = live
        .iter()
        .filter_map(|l| l.parkable.as_ref().ok().map(|at| (l, *at)))
        .collect();
    parkable.sort_by_key(|(l, at)| (*at, l.name.clone()));
    let mut freed = 0;
    let mut victims = Vec::new();
    for (l, _) in parkable {
        if used - freed + need <= budget {
            break;
        }
        freed += l.memory;
        victims.push(l.name.clone());
    }
    if used - freed + need <= budget {
        return Fit::Park(victims);
    }
    let running: Vec<String> = live
        .iter()
        .map(|l| {
            let why = match &l.parkable {
                Ok(_) => "can be parked".to_owned(),
                Err(why) => why.clone(),
            };
            format!("{} ({} MiB, {why})", l.name, l.memory / MIB)
        })
        .collect();
    Fit::Refuse(format!(
        "starting {project} ({} MiB) would exceed the memory budget of {} MiB, even with every project that can be parked parked; running: {}",
        need / MIB,
        budget / MIB,
        if running.is_empty() {
            "nothing".to_owned()
        } else {
            running.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn live(name: &str, mib: u64, parkable: Result<u64, &str>, t0: Instant) -> Live {
        Live {
            name: name.into(),
            memory: mib * MIB,
            parkable: parkable
                .map(|secs| t0 + Duration::from_secs(secs))
                .map_err(str::to_owned),
        }
    }

    #[test]
    fn a_launch_that_fits_parks_nothing() {
        let t0 = Instant::now();
        let running = [live("a", 300, Ok(1), t0)];
        assert_eq!(fit("b", 500 * MIB, 1024 * MIB, &running), Fit::Fits);
    }

    #[test]
    fn the_least_recently_active_are_parked_and_only_as_many_as_needed() {
        let t0 = Instant::now();
        let running = [
            live("recent", 400, Ok(30), t0),
            live("old", 400, Ok(10), t0),
            live("older", 400, Ok(5), t0),
            live("busy", 400, Err("a session is busy"), t0),
        ];
        // 1600 used + 500 needed against 1800: 300 MiB must go, so one Project: the oldest.
        assert_eq!(
            fit("new", 500 * MIB, 1800 * MIB, &running),
            Fit::Park(vec!["older".into()])
        );
        // Against 1200: 900 MiB must go, so three, never the busy one.
        assert_eq!(
            fit("new", 500 * MIB, 1200 * MIB, &running),
            Fit::Park(vec!["older".into(), "old".into(), "recent".into()])
        );
    }

    #[test]
    fn when_parking_cannot_make_room_nothing_is_parked_and_each_reason_is_named() {
        let t0 = Instant::now();
        let running = [
            live("busy", 400, Err("a session is busy"), t0),
            live("idle", 100, Ok(1), t0),
        ];
        let Fit::Refuse(why) = fit("new", 500 * MIB, 800 * MIB, &running) else {
            panic!("refused");
        };
        assert!(
            why.contains("starting new (500 MiB)") && why.contains("800 MiB"),
            "{why}"
        );
        assert!(why.contains("busy (400 MiB, a session is busy)"), "{why}");
        assert!(why.contains("idle (100 MiB, can be parked)"), "{why}");
        assert!(
            matches!(fit("huge", 900 * MIB, 800 * MIB, &[]), Fit::Refuse(why) if why.contains("running: nothing"))
        );
    }
}
