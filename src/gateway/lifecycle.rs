//! When the Gateway opens and closes, as a pure transition table: it opens with the first Project
//! a user wants running and closes after the last (the original's auto-lifecycle); a user's
//! `stop-mcp-tool` keeps it closed until a user starts a Project or `mcp-restart`; a port it
//! cannot bind is retried while Projects want it. No IO, no clock.

/// The listener's state, as far as the decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    NotStarted,
    Running,
    Stopped {
        /// A user closed it.
        by_user: bool,
        /// The last attempt to listen failed.
        failed: bool,
    },
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The Projects changed: whether any is wanted, and whether a user started one since the
    /// last time.
    Projects { wanted: bool, user_started: bool },
    /// `stop-mcp-tool`.
    UserStop,
    /// `mcp-restart` (its caller has checked that Projects run).
    UserRestart,
    /// The retry delay after a failed attempt to listen has passed.
    RetryDue { wanted: bool },
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Nothing,
    Open,
    Close {
        by_user: bool,
    },
    /// Close and open again.
    Reopen,
}

pub(crate) fn decide(state: State, cause: Cause) -> Transition {
    match (state, cause) {
        (State::Running, Cause::Projects { wanted: true, .. }) => Transition::Nothing,
        (State::Running, Cause::Projects { wanted: false, .. }) => {
            Transition::Close { by_user: false }
        }
        (
            State::Stopped { by_user: true, .. },
            Cause::Projects {
                wanted: true,
                user_started: false,
            },
        ) => Transition::Nothing,
        (
            State::Stopped { failed: true, .. },
            Cause::Projects {
                wanted: true,
                user_started: false,
            },
        ) => Transition::Nothing,
        (_, Cause::Projects { wanted: true, .. }) => Transition::Open,
        (_, Cause::Projects { wanted: false, .. }) => Transition::Nothing,
        (State::Running, Cause::UserStop) => Transition::Close { by_user: true },
        (_, Cause::UserStop) => Transition::Nothing,
        (State::Running, Cause::UserRestart) => Transition::Reopen,
        (_, Cause::UserRestart) => Transition::Open,
        (State::Stopped { failed: true, .. }, Cause::RetryDue { wanted: true }) => Transition::Open,
        (_, Cause::RetryDue { .. }) => Transition::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_follows_the_projects_and_the_user() {
        let stopped = State::Stopped {
            by_user: false,
            failed: false,
        };
        let by_user = State::Stopped {
            by_user: true,
            failed: false,
        };
        let failed = State::Stopped {
            by_user: false,
            failed: true,
        };
        let projects = |wanted, user_started| Cause::Projects {
            wanted,
            user_started,
        };
        let table = [
            (
                State::NotStarted,
                projects(false, false),
                Transition::Nothing,
            ),
            (State::NotStarted, projects(true, false), Transition::Open),
            (State::Running, projects(true, false), Transition::Nothing),
            (
                State::Running,
                projects(false, false),
                Transition::Close { by_user: false },
            ),
            (stopped, projects(true, false), Transition::Open),
            (by_user, projects(true, false), Transition::Nothing),
            (by_user, projects(true, true), Transition::Open),
            (by_user, projects(false, false), Transition::Nothing),
            (failed, projects(true, false), Transition::Nothing),
            (failed, projects(true, true), Transition::Open),
            (failed, Cause::RetryDue { wanted: true }, Transition::Open),
            (
                failed,
                Cause::RetryDue { wanted: false },
                Transition::Nothing,
            ),
            (
                State::Running,
                Cause::UserStop,
                Transition::Close { by_user: true },
            ),
            (stopped, Cause::UserStop, Transition::Nothing),
            (State::Running, Cause::UserRestart, Transition::Reopen),
            (by_user, Cause::UserRestart, Transition::Open),
        ];
        for (state, cause, expected) in table {
            assert_eq!(decide(state, cause), expected, "{state:?} {cause:?}");
        }
    }
}
