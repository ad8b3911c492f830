//! The little that shards share: the shutdown flag, the process-wide connection count behind
//! `--max-connections`, and the listener's `--max-conn-rate` bucket (EMQX's `max_conn_rate` is per
//! listener: one bucket for the listen address, whatever `--shards` is). All are touched per
//! accept/close and per loop tick, never per message.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bucket::{Bucket, BucketSpec};

/// The listener's accept bucket and the tokens shards hold for accepts they have armed.
#[derive(Debug)]
struct ConnRate {
    bucket: Bucket,
    reserved: u32,
}

impl ConnRate {
    /// The bucket's spec with room for the reserved tokens: tokens in the bucket plus tokens held by
    /// armed accepts never exceed the burst.
    fn spec(&self, spec: &BucketSpec) -> BucketSpec {
        BucketSpec {
            rate: spec.rate,
            burst: (spec.burst - self.reserved as f64).max(0.0),
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    shutdown: AtomicBool,
    active: AtomicUsize,
    max_connections: usize,
    last_log_sec: AtomicU64,
    conn_rate: Option<(BucketSpec, Mutex<ConnRate>)>,
    epoch: Instant,
}

impl Shared {
    /// `max_connections == 0` means no limit.
    pub fn new(max_connections: usize) -> Shared {
        Shared::with_conn_rate(max_connections, None)
    }

    /// With a listener-wide accept rate (`--max-conn-rate`).
    pub fn with_conn_rate(max_connections: usize, conn_rate: Option<BucketSpec>) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            max_connections,
            last_log_sec: AtomicU64::new(0),
            conn_rate: conn_rate.map(|spec| {
                (
                    spec,
                    Mutex::new(ConnRate {
                        bucket: Bucket::full(&spec, 0),
                        reserved: 0,
                    }),
                )
            }),
            epoch: Instant::now(),
        }
    }

    fn rate_ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// `--max-conn-rate`: takes a token for one accept the caller is about to make (or to arm, for an
    /// io_uring accept that completes later); `Err(wait)` until one is there. The caller then reports
    /// [`Shared::accept_used`] (a connection left the backlog) or [`Shared::accept_refund`] (none
    /// came). A held token counts against the burst, so however many shards hold one, no more than
    /// the burst is accepted at once, and the rate holds over time.
    pub fn accept_reserve(&self, now: Instant) -> Result<(), Duration> {
        let Some((spec, rate)) = &self.conn_rate else {
            return Ok(());
        };
        let ms = self.rate_ms(now);
        let mut r = rate.lock().unwrap_or_else(|p| p.into_inner());
        let eff = r.spec(spec);
        r.bucket.try_take_one(&eff, ms).map(|()| r.reserved += 1)
    }

    /// The accept a token was reserved for took a connection.
    pub fn accept_used(&self) {
        if let Some((_, rate)) = &self.conn_rate {
            let mut r = rate.lock().unwrap_or_else(|p| p.into_inner());
            r.reserved = r.reserved.saturating_sub(1);
        }
    }

    /// The accept a token was reserved for took nothing (the backlog was empty, an error, a cancel):
    /// the token goes back.
    pub fn accept_refund(&self, now: Instant) {
        if let Some((spec, rate)) = &self.conn_rate {
            let ms = self.rate_ms(now);
            let mut r = rate.lock().unwrap_or_else(|p| p.into_inner());
            r.reserved = r.reserved.saturating_sub(1);
            let eff = r.spec(spec);
            r.bucket.give_back(&eff, ms, 1.0);
        }
    }

    /// A connection left the backlog without a reserved token (the spare-descriptor trick refusing
    /// one): it pays after the fact, possibly into debt.
    pub fn accept_paid(&self, now: Instant) {
        if let Some((spec, rate)) = &self.conn_rate {
            let ms = self.rate_ms(now);
            let mut r = rate.lock().unwrap_or_else(|p| p.into_inner());
            let eff = r.spec(spec);
            r.bucket.take(&eff, ms, 1.0);
        }
    }

    /// The time the accept bucket takes to make one token (zero without `--max-conn-rate`).
    pub fn conn_rate_period(&self) -> Duration {
        self.conn_rate
            .as_ref()
            .map_or(Duration::ZERO, |(spec, _)| spec.pause_for(1.0))
    }

    /// Whether `--max-conn-rate` is set.
    pub fn conn_rate_limited(&self) -> bool {
        self.conn_rate.is_some()
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

/// Monotonic seconds for [`Shared::log_allowed`], the same for every shard of the process, from 1.
pub fn log_second() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1
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
    fn conn_rate_is_one_bucket_for_every_shard() {
        let spec = BucketSpec {
            rate: 10.0,
            burst: 2.0,
        };
        let s = Shared::with_conn_rate(0, Some(spec));
        let t0 = s.epoch;
        // Two "shards" share the burst of 2: each holds a token for an armed accept.
        assert!(s.accept_reserve(t0).is_ok());
        assert!(s.accept_reserve(t0).is_ok());
        let wait = s.accept_reserve(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Held tokens count against the burst: a long quiet spell refills only what is not held.
        let later = t0 + Duration::from_secs(10);
        assert!(s.accept_reserve(later).is_err(), "two held of a burst of 2");
        // Both held tokens are used by connections: that was the burst; the next waits for the refill.
        s.accept_used();
        s.accept_used();
        assert!(s.accept_reserve(later).is_err());
        let next = later + Duration::from_millis(100);
        assert!(s.accept_reserve(next).is_ok());
        assert!(s.accept_reserve(next).is_err());
        // A refund gives the token back.
        s.accept_refund(next);
        assert!(s.accept_reserve(next).is_ok());
        assert!(Shared::new(0).accept_reserve(t0).is_ok());
    }

    #[test]
    fn log_once_per_second() {
        let s = Shared::new(0);
        assert!(s.log_allowed(1));
        assert!(!s.log_allowed(1));
        assert!(s.log_allowed(2));
    }
}
