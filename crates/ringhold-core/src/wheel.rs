//! The timer wheel: one per shard, coarse, with no timer operation per connection.
//!
//! Each connection sits in exactly one bucket, at the tick its deadline fell on when it was scheduled.
//! Activity only updates the connection's own time stamp (O(1), no wheel access). When the wheel reaches
//! a bucket it asks, for each entry, what that connection's deadline is *now* (idle, stalled send or
//! lingering close: the connection machine knows which clock runs): gone or reused slots are dropped,
//! entries whose deadline moved on are moved to it, the rest are expired. Each connection thus costs 8
//! bytes here and is looked at about once per timeout period.

use std::time::Duration;

#[derive(Debug)]
pub struct TimerWheel {
    buckets: Vec<Vec<(u32, u32)>>,
    tick: Duration,
    now: u32,
}

/// What the owner says about an entry when its bucket comes due.
pub enum Check {
    /// The slot is free, holds another generation or needs no timer: drop the entry.
    Gone,
    /// The connection's deadline, in ticks.
    Due(u32),
}

impl TimerWheel {
    /// A wheel whose resolution is about 1/32 of `shortest` (10 ms to 1 s) and whose buckets span
    /// `longest` (a deadline further out is parked at the far end and looked at again then).
    pub fn new(shortest: Duration, longest: Duration) -> TimerWheel {
        let tick = (shortest / 32).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let span = (longest.max(shortest).as_nanos().div_ceil(tick.as_nanos()) as u32).max(1);
        TimerWheel {
            buckets: (0..span + 2).map(|_| Vec::new()).collect(),
            tick,
            now: 0,
        }
    }

    /// The wheel's resolution: owners wake at least this often while entries are held.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The current tick.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Whole ticks in `d`, rounded up (a timeout never fires early).
    pub fn ticks(&self, d: Duration) -> u32 {
        d.as_nanos()
            .div_ceil(self.tick.as_nanos())
            .min(u32::MAX as u128) as u32
    }

    /// The tick an instant `elapsed` after the shard started falls on.
    pub fn tick_of(&self, elapsed: Duration) -> u32 {
        (elapsed.as_nanos() / self.tick.as_nanos()) as u32
    }

    fn bucket_of(&self, tick: u32) -> usize {
        (tick % self.buckets.len() as u32) as usize
    }

    /// The tick an entry for `deadline` goes to when scheduled at tick `now`: at the earliest the next
    /// tick, at the latest the far end of the wheel.
    fn place(now: u32, len: usize, deadline: u32) -> u32 {
        deadline.clamp(now + 1, now + len as u32 - 1)
    }

    /// Schedules slot `idx` (generation `gen`) to be checked at tick `deadline`; returns the tick the
    /// entry will be checked at (see [`TimerWheel::place`]).
    pub fn schedule(&mut self, idx: u32, gen: u32, deadline: u32) -> u32 {
        let at = Self::place(self.now, self.buckets.len(), deadline);
        let b = self.bucket_of(at);
        self.buckets[b].push((idx, gen));
        at
    }

    /// Moves the wheel to tick `to`, calling `check(idx, gen, tick, place)` for each entry that came
    /// due at `tick` and pushing the expired ones to `expired`. `place(deadline)` tells `check` which
    /// tick the entry will move to if it answers `Due(deadline)` with a deadline still ahead.
    pub fn advance(
        &mut self,
        to: u32,
        mut check: impl FnMut(u32, u32, u32, &dyn Fn(u32) -> u32) -> Check,
        expired: &mut Vec<(u32, u32)>,
    ) {
        let len = self.buckets.len();
        while self.now < to {
            self.now += 1;
            let now = self.now;
            let place = move |d: u32| Self::place(now, len, d);
            let b = self.bucket_of(now);
            let mut due = std::mem::take(&mut self.buckets[b]);
            for (idx, gen) in due.drain(..) {
                match check(idx, gen, now, &place) {
                    Check::Gone => {}
                    Check::Due(t) if t <= now => expired.push((idx, gen)),
                    Check::Due(t) => {
                        self.schedule(idx, gen, t);
                    }
                }
            }
            // Give the (now empty) vector back so its capacity is reused, unless it is oversized.
            if self.buckets[b].is_empty() && due.capacity() <= 4096 {
                self.buckets[b] = due;
            }
        }
    }

    /// Entries held (for memory accounting and tests).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn expires_due_and_moves_the_rest() {
        let mut w = TimerWheel::new(Duration::from_secs(32), Duration::from_secs(32)); // tick 1 s
        assert_eq!(w.tick(), Duration::from_secs(1));
        let mut due: HashMap<u32, u32> = HashMap::new();
        assert_eq!(w.schedule(1, 7, 32), 32);
        due.insert(1, 32);
        w.schedule(2, 9, 32);
        due.insert(2, 32);
        let mut expired = Vec::new();
        w.advance(20, |i, _, _, _| Check::Due(due[&i]), &mut expired);
        assert!(expired.is_empty());
        // Connection 2 was active at tick 20: its deadline moves to 52.
        due.insert(2, 52);
        w.advance(32, |i, _, _, _| Check::Due(due[&i]), &mut expired);
        assert_eq!(expired, vec![(1, 7)]);
        expired.clear();
        assert_eq!(w.len(), 1);
        w.advance(51, |i, _, _, _| Check::Due(due[&i]), &mut expired);
        assert!(expired.is_empty());
        w.advance(52, |i, _, _, _| Check::Due(due[&i]), &mut expired);
        assert_eq!(expired, vec![(2, 9)]);
        assert!(w.is_empty());
    }

    #[test]
    fn gone_entries_are_dropped() {
        let mut w = TimerWheel::new(Duration::from_millis(320), Duration::from_millis(320));
        w.schedule(3, 1, 5);
        let mut expired = Vec::new();
        w.advance(100, |_, _, _, _| Check::Gone, &mut expired);
        assert!(expired.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_past_the_span_are_parked_at_the_far_end() {
        // Tick 10 ms, span 1 s: a deadline 5 s out is checked at 1 s and rescheduled until it is due.
        let mut w = TimerWheel::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(w.schedule(4, 2, 500), 101, "parked at the far end");
        let mut expired = Vec::new();
        let mut checks = 0;
        w.advance(
            499,
            |_, _, _, _| {
                checks += 1;
                Check::Due(500)
            },
            &mut expired,
        );
        assert!(expired.is_empty());
        assert!(checks >= 4, "looked at about once per span: {checks}");
        w.advance(500, |_, _, _, _| Check::Due(500), &mut expired);
        assert_eq!(expired, vec![(4, 2)]);
    }

    #[test]
    fn short_timeouts_have_fine_ticks_and_round_up() {
        let w = TimerWheel::new(Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(w.tick(), Duration::from_millis(10));
        assert_eq!(w.tick_of(Duration::from_millis(95)), 9);
        assert_eq!(w.ticks(Duration::from_millis(95)), 10);
        assert_eq!(w.ticks(Duration::ZERO), 0);
    }
}
