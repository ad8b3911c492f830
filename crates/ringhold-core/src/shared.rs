//! The little that shards share: the shutdown flag and the process-wide connection count behind
//! `--max-connections`. Both are touched per accept/close and per loop tick, never per message.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Shared {
    shutdown: AtomicBool,
    active: AtomicUsize,
    max_connections: usize,
    last_log_sec: AtomicU64,
}

impl Shared {
    /// `max_connections == 0` means no limit.
    pub fn new(max_connections: usize) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            max_connections,
            last_log_sec: AtomicU64::new(0),
        }
    }

    /// Asks every shard to stop accepting and drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Takes one place under `--max-connections`; `false` if none is left.
    pub fn try_admit(&self) -> bool {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if self.max_connections != 0 && prev >= self.max_connections {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back a place taken by [`Shared::try_admit`].
    pub fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Rate-limits a warning to once per second across all shards (`now_sec`: any monotonic seconds).
    pub fn log_allowed(&self, now_sec: u64) -> bool {
        let last = self.last_log_sec.load(Ordering::Relaxed);
        now_sec > last
            && self
                .last_log_sec
                .compare_exchange(last, now_sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission() {
        let s = Shared::new(2);
        assert!(s.try_admit());
        assert!(s.try_admit());
        assert!(!s.try_admit());
        assert_eq!(s.active(), 2);
        s.release();
        assert!(s.try_admit());
        let unlimited = Shared::new(0);
        for _ in 0..1000 {
            assert!(unlimited.try_admit());
        }
    }

    #[test]
    fn log_once_per_second() {
        let s = Shared::new(0);
        assert!(s.log_allowed(1));
        assert!(!s.log_allowed(1));
        assert!(s.log_allowed(2));
    }
}
