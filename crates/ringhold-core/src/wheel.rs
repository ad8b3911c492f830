//! The idle-timeout wheel: one per shard, coarse, with no timer operation per connection.
//!
//! Each connection sits in exactly one bucket, at the tick its deadline fell on when it was scheduled.
//! Activity only updates [`crate::Conn::last_active`] (O(1), no wheel access). When the wheel reaches a
//! bucket it asks, for each entry, when the connection was last active: gone or reused slots are dropped,
//! connections active since are moved to their new deadline, the rest are expired. Each connection thus
//! costs 8 bytes here and is looked at about once per timeout period.

use std::time::Duration;

#[derive(Debug)]
pub struct IdleWheel {
    buckets: Vec<Vec<(u32, u32)>>,
    tick: Duration,
    timeout_ticks: u32,
    now: u32,
}

/// What the engine says about an entry when its bucket comes due.
pub enum Check {
    /// The slot is free or holds another generation: drop the entry.
    Gone,
    /// The connection was last active at this tick.
    LastActive(u32),
}

impl IdleWheel {
    /// A wheel for `timeout`, with a tick of about 1/32 of it (10 ms to 1 s).
    pub fn new(timeout: Duration) -> IdleWheel {
        let tick = (timeout / 32).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let timeout_ticks = (timeout.as_nanos().div_ceil(tick.as_nanos()) as u32).max(1);
        IdleWheel {
            buckets: (0..timeout_ticks + 1).map(|_| Vec::new()).collect(),
            tick,
            timeout_ticks,
            now: 0,
        }
    }

    /// The wheel's resolution: engines wake at least this often.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The current tick.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// The tick an instant `elapsed` after the shard started falls on.
    pub fn tick_of(&self, elapsed: Duration) -> u32 {
        (elapsed.as_nanos() / self.tick.as_nanos()) as u32
    }

    fn bucket_of(&self, tick: u32) -> usize {
        (tick % self.buckets.len() as u32) as usize
    }

    /// Schedules slot `idx` (generation `gen`) last active at `last_active`.
    pub fn schedule(&mut self, idx: u32, gen: u32, last_active: u32) {
        let deadline = last_active
            .wrapping_add(self.timeout_ticks)
            .max(self.now + 1);
        let b = self.bucket_of(deadline);
        self.buckets[b].push((idx, gen));
    }

    /// Moves the wheel to tick `to`, calling `check` for each entry that came due and pushing the
    /// expired ones to `expired`.
    pub fn advance(
        &mut self,
        to: u32,
        mut check: impl FnMut(u32, u32) -> Check,
        expired: &mut Vec<(u32, u32)>,
    ) {
        while self.now < to {
            self.now += 1;
            let b = self.bucket_of(self.now);
            let mut due = std::mem::take(&mut self.buckets[b]);
            for (idx, gen) in due.drain(..) {
                match check(idx, gen) {
                    Check::Gone => {}
                    Check::LastActive(t) => {
                        if t.wrapping_add(self.timeout_ticks) <= self.now {
                            expired.push((idx, gen));
                        } else {
                            self.schedule(idx, gen, t);
                        }
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
    fn expires_idle_and_keeps_active() {
        let mut w = IdleWheel::new(Duration::from_secs(32)); // tick 1 s, 32 ticks
        assert_eq!(w.tick(), Duration::from_secs(1));
        let mut last: HashMap<u32, u32> = HashMap::new();
        w.schedule(1, 7, 0);
        last.insert(1, 0);
        w.schedule(2, 9, 0);
        last.insert(2, 0);
        let mut expired = Vec::new();
        // Connection 2 is active at tick 20.
        w.advance(20, |i, _| Check::LastActive(last[&i]), &mut expired);
        assert!(expired.is_empty());
        last.insert(2, 20);
        w.advance(32, |i, _| Check::LastActive(last[&i]), &mut expired);
        assert_eq!(expired, vec![(1, 7)]);
        expired.clear();
        assert_eq!(w.len(), 1);
        w.advance(51, |i, _| Check::LastActive(last[&i]), &mut expired);
        assert!(expired.is_empty());
        w.advance(52, |i, _| Check::LastActive(last[&i]), &mut expired);
        assert_eq!(expired, vec![(2, 9)]);
        assert!(w.is_empty());
    }

    #[test]
    fn gone_entries_are_dropped() {
        let mut w = IdleWheel::new(Duration::from_millis(320)); // tick 10 ms
        w.schedule(3, 1, 0);
        let mut expired = Vec::new();
        w.advance(100, |_, _| Check::Gone, &mut expired);
        assert!(expired.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn short_timeouts_have_fine_ticks() {
        let w = IdleWheel::new(Duration::from_millis(100));
        assert_eq!(w.tick(), Duration::from_millis(10));
        assert_eq!(w.tick_of(Duration::from_millis(95)), 9);
    }
}
