//! Shard-local time: a millisecond clock and the poll timeout that wakes the loop for whichever deadline
//! comes first (the connection machine's, the acceptor's).

use std::time::Instant;

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

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
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
    fn timeout_takes_the_soonest() {
        assert_eq!(poll_timeout(1000, 250, [None, None]), 250);
        assert_eq!(poll_timeout(1000, 250, [Some(1100), None]), 100);
        assert_eq!(poll_timeout(1000, 250, [Some(1100), Some(1040)]), 40);
        assert_eq!(poll_timeout(1000, 250, [Some(900)]), 0);
    }
}
