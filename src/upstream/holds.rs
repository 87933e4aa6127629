//! What the upstream is busy with because a client asked: the commands in flight that keep
//! Redis from answering anyone else (see [`holds_the_server`](crate::command::holds_the_server)),
//! shared by every connection to one upstream.
//!
//! The command timeout is a hang detector. While a hold is in flight, Redis's silence toward
//! other requests is Redis doing what it was told, so no command timeout runs; once the hold
//! is answered (or its pause is over), waiting requests count their timeout from then. If
//! Redis really hangs meanwhile, the health probe is what notices: when it declares the
//! upstream unavailable, what waits on it fails (see `upstream::shared`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::command::Hold;

/// The holds in flight on one upstream.
#[derive(Debug)]
pub(crate) struct Holds {
    running: AtomicUsize,
    /// Instants below are stored as nanoseconds since this one.
    base: Instant,
    /// When the last hold was answered.
    ended: AtomicU64,
    /// When the latest CLIENT PAUSE ends.
    paused_until: AtomicU64,
}

/// A hold in flight: dropped when its reply arrives or its connection fails.
#[derive(Debug)]
pub(crate) struct HoldMark(Arc<Holds>);

impl Holds {
    pub(crate) fn new() -> Arc<Holds> {
        Arc::new(Holds {
            running: AtomicUsize::new(0),
            base: Instant::now(),
            ended: AtomicU64::new(0),
            paused_until: AtomicU64::new(0),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// A hold sent now: a mark to keep with the request until it is answered, or `None` for
    /// a pause, which is over at a known time.
    pub(crate) fn begin(self: &Arc<Self>, hold: Hold) -> Option<HoldMark> {
        match hold {
            Hold::UntilReply => {
                self.running.fetch_add(1, Ordering::AcqRel);
                Some(HoldMark(self.clone()))
            }
            Hold::Pause(ms) => {
                let until = self.nanos(Instant::now()).saturating_add(ms * 1_000_000);
                self.paused_until.fetch_max(until, Ordering::AcqRel);
                None
            }
        }
    }

    /// Whether a hold is in flight or a pause is running now.
    pub(crate) fn held(&self) -> bool {
        self.timeout_from(self.base).is_none()
    }

    /// When the command timeout of a request waiting since `since` (or making progress since)
    /// counts from: `None` while the upstream is held, so no timeout runs.
    pub(crate) fn timeout_from(&self, since: Instant) -> Option<Instant> {
        if self.running.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.nanos(Instant::now());
        let paused = self.paused_until.load(Ordering::Acquire);
        if paused > now {
            return None;
        }
        let quiet = self.ended.load(Ordering::Acquire).max(paused);
        Some(since.max(self.base + std::time::Duration::from_nanos(quiet)))
    }
}

impl Drop for HoldMark {
    fn drop(&mut self) {
        let holds = &self.0;
        holds
            .ended
            .fetch_max(holds.nanos(Instant::now()), Ordering::AcqRel);
        holds.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn no_timeout_runs_while_held_and_it_counts_from_the_end_of_the_hold() {
        let holds = Holds::new();
        let since = Instant::now();
        assert_eq!(holds.timeout_from(since), Some(since));
        let mark = holds.begin(Hold::UntilReply).unwrap();
        let second = holds.begin(Hold::UntilReply).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(holds.timeout_from(since), None);
        drop(mark);
        assert_eq!(holds.timeout_from(since), None, "one hold still runs");
        tokio::time::advance(Duration::from_secs(1)).await;
        let end = Instant::now();
        drop(second);
        assert_eq!(holds.timeout_from(since), Some(end));
        // A request that made progress after the hold counts from its progress.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(holds.timeout_from(Instant::now()), Some(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_until_its_end() {
        let holds = Holds::new();
        let since = Instant::now();
        assert!(holds.begin(Hold::Pause(2000)).is_none());
        let end = Instant::now() + Duration::from_millis(2000);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(holds.timeout_from(since), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(holds.timeout_from(since), Some(end));
    }
}
