//! How long each step of a launch or an end took, for the log line that reports it
//! (`1450 ms (program 2, slot 0, …)`). Measures and formats; decides nothing.

use std::time::{Duration, Instant};

/// How long each step took, for the log: `1450 ms (program 2, slot 0, …)`.
pub(super) struct Timeline {
    begun: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timeline {
    pub(super) fn new() -> Timeline {
        let now = Instant::now();
        Timeline {
            begun: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms (",
            self.last.duration_since(self.begun).as_millis()
        )?;
        for (n, (name, took)) in self.steps.iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {}", took.as_millis())?;
        }
        write!(f, ")")
    }
}
