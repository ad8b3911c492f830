//! Connections paused by a rate limit, by resume time: a min-heap of `(resume_at_ms, slot, gen)`.
//!
//! Entries are not removed when a connection closes; a stale one is recognised by its generation when it
//! comes due. A connection has at most one live entry (it is throttled at most once at a time).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Whole milliseconds, rounded up, at least 1 (a pause of 0.2 ms still waits a tick of the clock).
pub fn ceil_ms(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000) as u64).max(1)
}

#[derive(Debug, Default)]
pub struct Throttles {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Throttles {
    pub fn push(&mut self, resume_at_ms: u64, idx: u32, gen: u32) {
        self.heap.push(Reverse((resume_at_ms, idx, gen)));
    }

    /// When the earliest entry comes due.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns one entry due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now_ms => {
                self.heap.pop().map(|Reverse((_, idx, gen))| (idx, gen))
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
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
        assert!(t.is_empty());
    }
}
