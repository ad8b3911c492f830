//! Shard-local time: a millisecond clock, the min-heap of throttled connections waiting to resume, and
//! the poll timeout that wakes the loop for whichever comes first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Milliseconds since the shard started (u64: never wraps; buckets get the low 32 bits).
#[derive(Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Whole milliseconds, rounded up, at least 1 (a pause of 0.2 ms still waits a tick of the clock).
pub fn ceil_ms(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000) as u64).max(1)
}

/// Monotonic seconds for `Shared::log_allowed`, the same for every shard of the process, from 1.
pub fn log_second() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// Connections paused by a rate limit, by resume time: `(resume_at_ms, fd, gen)`.
///
/// Entries are not removed when a connection closes; a stale one is recognised by its generation when it
/// comes due. A connection has at most one live entry (it is throttled at most once at a time).
#[derive(Debug, Default)]
pub struct Throttles {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Throttles {
    pub fn push(&mut self, resume_at_ms: u64, fd: u32, gen: u32) {
        self.heap.push(Reverse((resume_at_ms, fd, gen)));
    }

    /// When the earliest entry comes due.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns one entry due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now_ms => {
                self.heap.pop().map(|Reverse((_, fd, gen))| (fd, gen))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// The epoll_wait timeout in ms: `base_ms`, or less if one of `deadlines` (absolute ms) comes sooner;
/// 0 if one is already due.
pub fn poll_timeout(
    now_ms: u64,
    base_ms: u64,
    deadlines: impl IntoIterator<Item = Option<u64>>,
) -> i32 {
    let mut t = base_ms;
    for d in deadlines.into_iter().flatten() {
        t = t.min(d.saturating_sub(now_ms));
    }
    t.min(i32::MAX as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_rounds_up() {
        assert_eq!(ceil_ms(Duration::ZERO), 1);
        assert_eq!(ceil_ms(Duration::from_micros(200)), 1);
        assert_eq!(ceil_ms(Duration::from_micros(1001)), 2);
        assert_eq!(ceil_ms(Duration::from_millis(250)), 250);
    }

    #[test]
    fn throttles_come_due_in_order() {
        let mut t = Throttles::default();
        t.push(300, 7, 1);
        t.push(100, 9, 2);
        t.push(200, 8, 3);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.pop_due(99), None);
        assert_eq!(t.pop_due(250), Some((9, 2)));
        assert_eq!(t.pop_due(250), Some((8, 3)));
        assert_eq!(t.pop_due(250), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_due(), Some(300));
        assert_eq!(t.pop_due(1000), Some((7, 1)));
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn timeout_takes_the_soonest() {
        assert_eq!(poll_timeout(1000, 250, [None, None]), 250);
        assert_eq!(poll_timeout(1000, 250, [Some(1100), None]), 100);
        assert_eq!(poll_timeout(1000, 250, [Some(1100), Some(1040)]), 40);
        assert_eq!(poll_timeout(1000, 250, [Some(900)]), 0);
    }

    #[test]
    fn log_seconds_start_at_one() {
        assert!(log_second() >= 1);
    }
}
