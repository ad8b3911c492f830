//! `ringhold load`'s handles: registered once when the run starts, then stored into by the load
//! generator's main thread about once a second from the sums of its workers' counters. Like the
//! shards, the workers never touch these: they count in their own integers.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::names::*;

/// Connection states, in the order of [`LoadCounters::states`]. They add up to the connections this
/// process was asked for: not started yet, connect in flight, open, failed (never retried), and held
/// until the end of the run and then closed by the load generator.
pub const LOAD_STATES: [&str; 5] = ["waiting", "connecting", "open", "failed", "closed"];

/// One snapshot of a load generator's counters (sums over its workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadCounters {
    /// Connections per state, in the order of [`LOAD_STATES`].
    pub states: [u64; 5],
    pub opened: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_echoed: u64,
    pub heartbeats_late: u64,
    pub heartbeats_outstanding: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Pre-registered handles of `ringhold load`'s metrics.
pub struct LoadMetrics {
    states: [Gauge; 5],
    opened: Counter,
    sent: Counter,
    echoed: Counter,
    late: Counter,
    outstanding: Gauge,
    failures: Vec<Counter>,
    bytes_sent: Counter,
    bytes_received: Counter,
    latency: Histogram,
}

impl LoadMetrics {
    /// Registers every series (all at 0, so `rate()` works from the first scrape); `causes` are the
    /// values of the `cause` label of `ringhold_load_failures_total`, in the order `flush` gets them.
    /// Call after [`crate::install_load`]; without an installed recorder the handles do nothing.
    pub fn new(causes: &[&'static str]) -> LoadMetrics {
        let m = LoadMetrics {
            states: LOAD_STATES.map(|s| gauge!(LOAD_CONNECTIONS, "state" => s)),
            opened: counter!(LOAD_CONNECTIONS_OPENED),
            sent: counter!(LOAD_HEARTBEATS_SENT),
            echoed: counter!(LOAD_HEARTBEATS_ECHOED),
            late: counter!(LOAD_HEARTBEATS_LATE),
            outstanding: gauge!(LOAD_HEARTBEATS_OUTSTANDING),
            failures: causes
                .iter()
                .map(|c| counter!(LOAD_FAILURES, "cause" => *c))
                .collect(),
            bytes_sent: counter!(LOAD_BYTES_SENT),
            bytes_received: counter!(LOAD_BYTES_RECEIVED),
            latency: histogram!(LOAD_LATENCY),
        };
        m.flush(&LoadCounters::default(), &vec![0; causes.len()]);
        m
    }

    /// Copies a snapshot into the handles (counters with `absolute`, gauges with `set`); `failures`
    /// per cause, in the order given to [`LoadMetrics::new`].
    pub fn flush(&self, c: &LoadCounters, failures: &[u64]) {
        for (h, v) in self.states.iter().zip(c.states) {
            h.set(v as f64);
        }
        self.opened.absolute(c.opened);
        self.sent.absolute(c.heartbeats_sent);
        self.echoed.absolute(c.heartbeats_echoed);
        self.late.absolute(c.heartbeats_late);
        self.outstanding.set(c.heartbeats_outstanding as f64);
        for (h, v) in self.failures.iter().zip(failures) {
            h.absolute(*v);
        }
        self.bytes_sent.absolute(c.bytes_sent);
        self.bytes_received.absolute(c.bytes_received);
    }

    /// Adds `count` latency samples of `seconds` each to the histogram (from an HdrHistogram's
    /// recorded values: one call per distinct value). Call [`crate::upkeep`] about once a second so
    /// that samples are folded into the buckets even when nobody scrapes.
    pub fn record_latency(&self, seconds: f64, count: u64) {
        self.latency
            .record_many(seconds, usize::try_from(count).unwrap_or(usize::MAX));
    }
}
