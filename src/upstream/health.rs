//! The health of one upstream node: a pure state machine fed with the outcome of each thing
//! that talked to the upstream (a data-path connection, an active probe).
//!
//! ```text
//!                 refused or closed: at once
//!                 timeout, bad reply, probe failed: `failures` in a row
//!   ┌─────────┐ ──────────────────────────────────────▶ ┌─────────────┐
//!   │ healthy │                                          │ unavailable │ ◀──┐
//!   └─────────┘                                          └─────────────┘    │
//!        ▲                                                first │           │ any
//!        │                                              success │           │ failure
//!        │    `successes` more in a row                 ┌───────▼────┐      │
//!        └───────────────────────────────────────────── │ recovering │ ─────┘
//!                                                       └────────────┘
//! ```
//!
//! Rules, and why:
//! - A refused connection or a closed socket is definite: the upstream is not there, so the
//!   machine flips at once. A timeout, a malformed reply or a failed probe can be one slow or
//!   odd reply, so only `failures` of them in a row flip it; one success resets the run.
//!   (What the data path sees on an established connection reaches this machine only once a
//!   probe confirmed it: see `MonitorHandle::suspect`.)
//! - The first success opens `recovering`; `successes` more in a row close the outage, so an
//!   upstream that answers once and dies again (a restart loop) does not. With `successes` at
//!   1, two successes in a row. Any failure while recovering goes back to `unavailable`.
//! - Every flip is returned as exactly one [`Transition`]; an outcome that changes nothing
//!   returns `None`, so there is never a `healthy → healthy`.
//!
//! What is *not* an outcome: upstream error replies (WRONGTYPE, NOSCRIPT, OOM, BUSY, ...) are
//! answers to the client's command and are forwarded; they never reach [`Health::observe`]. Only
//! the probe reads an error reply as a failure, because an error to `PING` (LOADING, MASTERDOWN)
//! means the upstream cannot serve anything.
//!
//! No sockets and no clock: the caller passes `now` (from `tokio::time`, so tests can pause it).

use std::fmt;

use tokio::time::Instant;

use crate::error::UpstreamFailure;

/// Where an upstream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Healthy,
    Unavailable,
    /// Answering again, not yet confirmed: see the monitor for what the data path does here.
    Recovering,
}

/// Why something that talked to the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The connection was refused: nothing listens at the address. Flips at once.
    Refused,
    /// An established connection was closed or reset by the upstream. Flips at once.
    Closed,
    /// No reply (or no connection) within a timeout. Counted.
    Timeout,
    /// A connect that failed otherwise (no route, name not resolved): can be transient. Counted.
    Unreachable,
    /// The upstream sent bytes that are not RESP. Counted.
    BadReply,
    /// The probe got an answer that is not `+PONG` (LOADING, MASTERDOWN, ...). Counted.
    ProbeFailed,
}

/// The result of one exchange with the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure(Cause),
}

/// Consecutive results needed to flip. Zero is read as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// Counted failures in a row that take `healthy` to `unavailable`.
    pub failures: u32,
    /// Successes in a row while `recovering` (after the one that left `unavailable`) that make
    /// it `healthy`.
    pub successes: u32,
}

/// One flip of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub from: State,
    pub to: State,
    /// The failure that caused it; `None` when a success did.
    pub cause: Option<Cause>,
    pub at: Instant,
}

/// The state machine of one upstream.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    state: State,
    since: Instant,
    thresholds: Thresholds,
    /// The current run of counted failures (only grows while healthy).
    failures: u32,
    /// The current run of successes (only grows while recovering).
    successes: u32,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unavailable => "unavailable",
            State::Recovering => "recovering",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Cause {
    /// The snake_case word used in events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Closed => "closed",
            Cause::Timeout => "timeout",
            Cause::Unreachable => "unreachable",
            Cause::BadReply => "bad_reply",
            Cause::ProbeFailed => "probe_failed",
        }
    }

    /// True when one occurrence is proof enough that the upstream is gone.
    pub(crate) fn is_immediate(self) -> bool {
        matches!(self, Cause::Refused | Cause::Closed)
    }

    /// The cause of a failed connect.
    pub(crate) fn of_connect_error(e: &std::io::Error) -> Cause {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionRefused => Cause::Refused,
            ErrorKind::TimedOut => Cause::Timeout,
            _ => Cause::Unreachable,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a data-path failure counts. `Unavailable` is the multiplexer's word for a failed connect,
/// which it does not break down further; where the `io::Error` is at hand,
/// [`Cause::of_connect_error`] is more precise (a connect timeout is counted, not immediate).
impl From<UpstreamFailure> for Cause {
    fn from(why: UpstreamFailure) -> Cause {
        match why {
            UpstreamFailure::Unavailable => Cause::Refused,
            UpstreamFailure::ConnectionLost => Cause::Closed,
            UpstreamFailure::Timeout(_) => Cause::Timeout,
            UpstreamFailure::BadReply | UpstreamFailure::SetupRefused => Cause::BadReply,
        }
    }
}

impl Health {
    pub(crate) fn new(initial: State, thresholds: Thresholds, now: Instant) -> Health {
        let mut health = Health {
            state: initial,
            since: now,
            thresholds,
            failures: 0,
            successes: 0,
        };
        health.set_thresholds(thresholds);
        health
    }

    /// New thresholds (a reload), for the next outcomes; the counts so far are kept.
    pub(crate) fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = Thresholds {
            failures: thresholds.failures.max(1),
            successes: thresholds.successes.max(1),
        };
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// When the current state was entered.
    #[cfg(test)]
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Takes in one outcome; returns the flip it caused, if any.
    pub(crate) fn observe(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        match (self.state, outcome) {
            // healthy: a success ends any run of failures.
            (State::Healthy, Outcome::Success) => {
                self.failures = 0;
                None
            }
            // healthy → unavailable: at once for a definite cause, else after a run.
            (State::Healthy, Outcome::Failure(cause)) => {
                self.failures += 1;
                if cause.is_immediate() || self.failures >= self.thresholds.failures {
                    self.go(State::Unavailable, Some(cause), now)
                } else {
                    None
                }
            }
            // unavailable → recovering on the first success.
            (State::Unavailable, Outcome::Success) => self.go(State::Recovering, None, now),
            // unavailable: more failures change nothing.
            (State::Unavailable, Outcome::Failure(_)) => None,
            // recovering → healthy after the run of successes.
            (State::Recovering, Outcome::Success) => {
                self.successes += 1;
                if self.successes >= self.thresholds.successes {
                    self.go(State::Healthy, None, now)
                } else {
                    None
                }
            }
            // recovering → unavailable on any failure: the return was not real yet.
            (State::Recovering, Outcome::Failure(cause)) => {
                self.go(State::Unavailable, Some(cause), now)
            }
        }
    }

    fn go(&mut self, to: State, cause: Option<Cause>, now: Instant) -> Option<Transition> {
        debug_assert_ne!(self.state, to);
        let from = self.state;
        self.state = to;
        self.since = now;
        self.failures = 0;
        self.successes = 0;
        Some(Transition {
            from,
            to,
            cause,
            at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use Cause::*;
    use State::*;

    const OK: Outcome = Outcome::Success;
    const fn fail(c: Cause) -> Outcome {
        Outcome::Failure(c)
    }

    /// The configured defaults.
    const T3_1: Thresholds = Thresholds {
        failures: 3,
        successes: 1,
    };

    /// Feeds `outcomes` one millisecond apart; returns (index of the outcome, from, to, cause)
    /// for every transition.
    fn run(
        initial: State,
        t: Thresholds,
        outcomes: &[Outcome],
    ) -> Vec<(usize, State, State, Option<Cause>)> {
        let start = Instant::now();
        let mut h = Health::new(initial, t, start);
        let mut out = Vec::new();
        for (i, &o) in outcomes.iter().enumerate() {
            let now = start + Duration::from_millis(i as u64 + 1);
            if let Some(tr) = h.observe(o, now) {
                assert_eq!(tr.at, now);
                assert_eq!(h.since(), now);
                assert_eq!(h.state(), tr.to);
                out.push((i, tr.from, tr.to, tr.cause));
            }
        }
        out
    }

    #[test]
    fn transitions() {
        type Case = (
            &'static str,
            State,
            Thresholds,
            Vec<Outcome>,
            Vec<(usize, State, State, Option<Cause>)>,
        );
        let t = T3_1;
        let cases: Vec<Case> = vec![
            (
                "successes keep it healthy",
                Healthy,
                t,
                vec![OK, OK, OK],
                vec![],
            ),
            (
                "refused flips at once",
                Healthy,
                t,
                vec![fail(Refused)],
                vec![(0, Healthy, Unavailable, Some(Refused))],
            ),
            (
                "closed flips at once",
                Healthy,
                t,
                vec![OK, fail(Closed)],
                vec![(1, Healthy, Unavailable, Some(Closed))],
            ),
            (
                "two timeouts are not enough",
                Healthy,
                t,
                vec![fail(Timeout), fail(Timeout)],
                vec![],
            ),
            (
                "the third timeout in a row flips",
                Healthy,
                t,
                vec![fail(Timeout), fail(Timeout), fail(Timeout)],
                vec![(2, Healthy, Unavailable, Some(Timeout))],
            ),
            (
                "counted causes add up",
                Healthy,
                t,
                vec![fail(Timeout), fail(ProbeFailed), fail(BadReply)],
                vec![(2, Healthy, Unavailable, Some(BadReply))],
            ),
            (
                "unreachable is counted, not immediate",
                Healthy,
                t,
                vec![fail(Unreachable), fail(Unreachable), fail(Unreachable)],
                vec![(2, Healthy, Unavailable, Some(Unreachable))],
            ),
            (
                "one success resets the run",
                Healthy,
                t,
                vec![
                    fail(Timeout),
                    fail(Timeout),
                    OK,
                    fail(Timeout),
                    fail(Timeout),
                ],
                vec![],
            ),
            (
                "an immediate cause does not wait for the run",
                Healthy,
                t,
                vec![fail(Timeout), fail(Closed), fail(Timeout)],
                vec![(1, Healthy, Unavailable, Some(Closed))],
            ),
            (
                "failures while unavailable change nothing",
                Unavailable,
                t,
                vec![fail(Refused), fail(Timeout), fail(Closed)],
                vec![],
            ),
            (
                "first success opens recovering, second closes it",
                Unavailable,
                t,
                vec![fail(Refused), OK, OK],
                vec![
                    (1, Unavailable, Recovering, None),
                    (2, Recovering, Healthy, None),
                ],
            ),
            (
                "any failure while recovering goes back",
                Unavailable,
                t,
                vec![OK, fail(Timeout), OK, OK],
                vec![
                    (0, Unavailable, Recovering, None),
                    (1, Recovering, Unavailable, Some(Timeout)),
                    (2, Unavailable, Recovering, None),
                    (3, Recovering, Healthy, None),
                ],
            ),
            (
                "a machine created recovering needs its run of successes",
                Recovering,
                t,
                vec![OK],
                vec![(0, Recovering, Healthy, None)],
            ),
            (
                "a full outage and recovery, then a fresh failure run",
                Healthy,
                t,
                vec![
                    fail(Timeout),
                    fail(Closed),
                    OK,
                    OK,
                    fail(Timeout),
                    fail(Timeout),
                    OK,
                    fail(Timeout),
                ],
                vec![
                    (1, Healthy, Unavailable, Some(Closed)),
                    (2, Unavailable, Recovering, None),
                    (3, Recovering, Healthy, None),
                ],
            ),
            (
                "failures 1: any failure flips",
                Healthy,
                Thresholds {
                    failures: 1,
                    successes: 2,
                },
                vec![fail(Timeout)],
                vec![(0, Healthy, Unavailable, Some(Timeout))],
            ),
            (
                "zero is read as one",
                Healthy,
                Thresholds {
                    failures: 0,
                    successes: 0,
                },
                vec![fail(ProbeFailed), OK, OK],
                vec![
                    (0, Healthy, Unavailable, Some(ProbeFailed)),
                    (1, Unavailable, Recovering, None),
                    (2, Recovering, Healthy, None),
                ],
            ),
            (
                "successes 2: the opening success does not count",
                Unavailable,
                Thresholds {
                    failures: 3,
                    successes: 2,
                },
                vec![OK, OK, fail(Timeout), OK, OK, OK],
                vec![
                    (0, Unavailable, Recovering, None),
                    (2, Recovering, Unavailable, Some(Timeout)),
                    (3, Unavailable, Recovering, None),
                    (5, Recovering, Healthy, None),
                ],
            ),
        ];
        for (name, initial, t, outcomes, want) in cases {
            assert_eq!(run(initial, t, &outcomes), want, "{name}");
        }
    }

    /// Over random sequences: transitions chain (each starts where the last ended), never loop
    /// on one state, and `since` is the time of the last one.
    #[test]
    fn random_sequences_chain() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = 7_301_993;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let all = [Refused, Closed, Timeout, Unreachable, BadReply, ProbeFailed];
        for _ in 0..200 {
            let t = Thresholds {
                failures: rng.gen_range(1..5),
                successes: rng.gen_range(1..4),
            };
            let start = Instant::now();
            let mut h = Health::new(Healthy, t, start);
            let mut last = (Healthy, start);
            for i in 0..200u64 {
                let o = if rng.gen_bool(0.5) {
                    OK
                } else {
                    fail(all[rng.gen_range(0..all.len())])
                };
                let now = start + Duration::from_millis(i + 1);
                if let Some(tr) = h.observe(o, now) {
                    assert_eq!(tr.from, last.0, "seed {seed}");
                    assert_ne!(tr.from, tr.to, "seed {seed}");
                    assert_eq!(tr.cause.is_some(), matches!(o, Outcome::Failure(_)));
                    last = (tr.to, now);
                }
                assert_eq!((h.state(), h.since()), last, "seed {seed}");
            }
        }
    }

    #[test]
    fn causes_as_words() {
        let words: Vec<_> = [Refused, Closed, Timeout, Unreachable, BadReply, ProbeFailed]
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            words,
            [
                "refused",
                "closed",
                "timeout",
                "unreachable",
                "bad_reply",
                "probe_failed"
            ]
        );
    }

    #[test]
    fn data_path_failures_map() {
        let cases = [
            (UpstreamFailure::Unavailable, Refused),
            (UpstreamFailure::ConnectionLost, Closed),
            (UpstreamFailure::Timeout(Duration::from_secs(1)), Timeout),
            (UpstreamFailure::BadReply, BadReply),
        ];
        for (why, cause) in cases {
            assert_eq!(Cause::from(why), cause, "{why:?}");
        }
        let io = |k| std::io::Error::from(k);
        use std::io::ErrorKind as K;
        assert_eq!(Cause::of_connect_error(&io(K::ConnectionRefused)), Refused);
        assert_eq!(Cause::of_connect_error(&io(K::TimedOut)), Timeout);
        assert_eq!(
            Cause::of_connect_error(&io(K::AddrNotAvailable)),
            Unreachable
        );
    }
}
