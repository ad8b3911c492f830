//! Token buckets, EMQX style: a `<rate>,<burst>` pair, tokens taken after the fact (a read has already
//! happened when we learn its size), and a pause of `(needed - available) / rate` when the bucket is in
//! debt, instead of dropping anything.
//!
//! The per-connection state is 8 bytes ([`Bucket`]); the spec is per shard ([`BucketSpec`]). Time is a
//! shard-local millisecond clock in a `u32` (wraps after 49 days; all arithmetic wraps).

use std::time::Duration;

use crate::units::{parse_duration, parse_pair, parse_size};

/// A rate and a burst, in units per second and units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSpec {
    /// Tokens added per second (> 0).
    pub rate: f64,
    /// Most tokens the bucket holds (≥ 1).
    pub burst: f64,
}

impl BucketSpec {
    /// `--rate-limit <bytes/s>,<burst>`, e.g. `1MiB,256KiB` (the `/s` suffix is optional).
    pub fn parse_bytes(s: &str) -> Result<BucketSpec, String> {
        let (r, b) = parse_pair(s, "<bytes/s>,<burst> (e.g. 1MiB/s,256KiB)")?;
        not_negative(s, &[r, b])?;
        let r = r.strip_suffix("/s").unwrap_or(r);
        let rate = parse_size(r)? as f64;
        let burst = parse_size(b)? as f64;
        Self::checked(rate, burst, s)
    }

    /// `--message-rate <count>,<period>`, e.g. `10,1m`: `count` reads per `period`, burst `count`.
    pub fn parse_count_period(s: &str) -> Result<BucketSpec, String> {
        let (c, p) = parse_pair(s, "<count>,<period> (e.g. 10,1m)")?;
        not_negative(s, &[c, p])?;
        let count: u64 = c
            .parse()
            .map_err(|_| format!("'{c}' is not a whole count"))?;
        let period = parse_duration(p)?;
        if period.is_zero() {
            return Err(format!("'{s}': the period must be longer than 0"));
        }
        Self::checked(count as f64 / period.as_secs_f64(), count as f64, s)
    }

    /// `--max-conn-rate N`: N per second, burst N.
    pub fn parse_per_second(s: &str) -> Result<BucketSpec, String> {
        not_negative(s, &[s])?;
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number of accepts per second"))?;
        Self::checked(n as f64, n as f64, s)
    }

    fn checked(rate: f64, burst: f64, s: &str) -> Result<BucketSpec, String> {
        if rate <= 0.0 || burst < 1.0 {
            return Err(format!("'{s}': rate and burst must both be greater than 0"));
        }
        Ok(BucketSpec { rate, burst })
    }

    /// How long until `debt` tokens are paid back.
    pub fn pause_for(&self, debt: f64) -> Duration {
        Duration::from_secs_f64((debt / self.rate).max(0.0))
    }
}

/// A limit is a positive number: say so for `-3` rather than "not a number".
fn not_negative(s: &str, parts: &[&str]) -> Result<(), String> {
    if parts.iter().any(|p| p.trim_start().starts_with('-')) {
        return Err(format!(
            "'{s}': a limit must be greater than 0, not negative"
        ));
    }
    Ok(())
}

/// The per-connection (or per-listener) part: 8 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    tokens: f32,
    stamp_ms: u32,
}

impl Bucket {
    /// A full bucket at time `now_ms`.
    pub fn full(spec: &BucketSpec, now_ms: u32) -> Bucket {
        Bucket {
            tokens: spec.burst as f32,
            stamp_ms: now_ms,
        }
    }

    fn refill(&mut self, spec: &BucketSpec, now_ms: u32) {
        let dt = now_ms.wrapping_sub(self.stamp_ms);
        // A reading older than the stamp (shards sharing a listener's bucket read their clocks before
        // taking its lock) wraps to a huge `dt`: it is no time at all, not 49 days.
        if dt > 0 && dt <= i32::MAX as u32 {
            let t = self.tokens as f64 + spec.rate * dt as f64 / 1000.0;
            self.tokens = t.min(spec.burst) as f32;
            self.stamp_ms = now_ms;
        }
    }

    /// Takes `n` tokens (possibly into debt). Returns the pause needed before the next read, if any.
    pub fn take(&mut self, spec: &BucketSpec, now_ms: u32, n: f64) -> Option<Duration> {
        self.refill(spec, now_ms);
        let t = self.tokens as f64 - n;
        self.tokens = t as f32;
        (t < 0.0).then(|| spec.pause_for(-t))
    }

    /// Whether a whole token is there, without taking it: `Err(wait)` until one is. Accept admission
    /// checks with this before accepting and pays with `take(.., 1.0)` once a connection came, so that
    /// no token is held while nobody connects (a held token would make the burst N + 1).
    pub fn has_one(&mut self, spec: &BucketSpec, now_ms: u32) -> Result<(), Duration> {
        self.refill(spec, now_ms);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(spec.pause_for(1.0 - self.tokens as f64))
        }
    }

    /// Gives `n` tokens back (a reservation that was not used), up to the burst.
    pub fn give_back(&mut self, spec: &BucketSpec, now_ms: u32, n: f64) {
        self.refill(spec, now_ms);
        self.tokens = (self.tokens as f64 + n).min(spec.burst) as f32;
    }

    /// Takes one token only if one is there: `Err(wait)` otherwise.
    pub fn try_take_one(&mut self, spec: &BucketSpec, now_ms: u32) -> Result<(), Duration> {
        self.refill(spec, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(spec.pause_for(1.0 - self.tokens as f64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let s = BucketSpec::parse_bytes("1MiB/s,256KiB").unwrap();
        assert_eq!(s.rate, 1048576.0);
        assert_eq!(s.burst, 262144.0);
        let m = BucketSpec::parse_count_period("10,1m").unwrap();
        assert!((m.rate - 10.0 / 60.0).abs() < 1e-9);
        assert!(BucketSpec::parse_count_period("10,0s").is_err());
        assert!(BucketSpec::parse_bytes("-1,5").is_err());
        assert!(BucketSpec::parse_bytes("garbage").is_err());
        assert!(BucketSpec::parse_bytes("0,5").is_err());
        assert!(BucketSpec::parse_per_second("0").is_err());
        assert!(BucketSpec::parse_per_second("x").is_err());
        for bad in ["-3", " -3"] {
            let e = BucketSpec::parse_per_second(bad).unwrap_err();
            assert!(e.contains("negative"), "{e}");
        }
        assert!(BucketSpec::parse_bytes("5,-1")
            .unwrap_err()
            .contains("negative"));
        assert!(BucketSpec::parse_count_period("-10,1s")
            .unwrap_err()
            .contains("negative"));
        assert!(BucketSpec::parse_count_period("10,-1s")
            .unwrap_err()
            .contains("negative"));
        assert!(BucketSpec::parse_bytes("1MiB/s,256KiB,7").is_err());
    }

    #[test]
    fn debt_and_pause() {
        let spec = BucketSpec {
            rate: 1000.0,
            burst: 500.0,
        };
        let mut b = Bucket::full(&spec, 0);
        assert_eq!(b.take(&spec, 0, 400.0), None);
        // 100 left; taking 300 leaves a debt of 200 = 200 ms at 1000/s.
        let p = b.take(&spec, 0, 300.0).unwrap();
        assert_eq!(p.as_millis(), 200);
        // After 200 ms the debt is paid.
        assert_eq!(b.take(&spec, 200, 0.0), None);
        // Refill caps at burst.
        assert_eq!(b.take(&spec, 100_000, 500.0), None);
        assert!(b.take(&spec, 100_000, 1.0).is_some());
    }

    #[test]
    fn accept_admission() {
        let spec = BucketSpec {
            rate: 10.0,
            burst: 2.0,
        };
        let mut b = Bucket::full(&spec, 0);
        assert!(b.try_take_one(&spec, 0).is_ok());
        assert!(b.try_take_one(&spec, 0).is_ok());
        let w = b.try_take_one(&spec, 0).unwrap_err();
        assert_eq!(w.as_millis(), 100);
        assert!(b.try_take_one(&spec, 100).is_ok());
    }

    #[test]
    fn check_then_pay() {
        let spec = BucketSpec {
            rate: 10.0,
            burst: 2.0,
        };
        let mut b = Bucket::full(&spec, 0);
        // Checking takes nothing, however often.
        for _ in 0..5 {
            assert!(b.has_one(&spec, 0).is_ok());
        }
        assert_eq!(b.take(&spec, 0, 1.0), None);
        assert_eq!(b.take(&spec, 0, 1.0), None);
        assert_eq!(b.has_one(&spec, 0).unwrap_err().as_millis(), 100);
        assert_eq!(b.has_one(&spec, 50).unwrap_err().as_millis(), 50);
        assert!(b.has_one(&spec, 100).is_ok());
    }

    #[test]
    fn an_older_clock_reading_refills_nothing() {
        let spec = BucketSpec {
            rate: 100.0,
            burst: 100.0,
        };
        let mut b = Bucket::full(&spec, 1000);
        assert_eq!(b.take(&spec, 1000, 100.0), None);
        // Another shard read the clock a little earlier and took the lock a little later.
        assert!(b.has_one(&spec, 999).is_err());
        assert!(b.has_one(&spec, 1010).is_ok());
    }

    #[test]
    fn clock_wraps() {
        let spec = BucketSpec {
            rate: 1000.0,
            burst: 10.0,
        };
        let mut b = Bucket::full(&spec, u32::MAX - 5);
        assert!(b.take(&spec, u32::MAX - 5, 20.0).is_some());
        assert_eq!(b.take(&spec, 5, 0.0), None);
    }
}
