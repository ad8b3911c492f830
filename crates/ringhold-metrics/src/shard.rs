//! Per-shard handles: registered once when the shard is built, then only stored into (about once a
//! second) by that shard's own thread. No map lookup, lock or shared atomic on the per-message path —
//! the shard counts in its plain `ShardCounters` and `flush` copies them here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{counter, gauge, Counter, Gauge};
use ringhold_core::http::{HttpError, Method, STATUS_CLASS_LABELS};
use ringhold_core::ws::CloseCode;
use ringhold_core::{CloseReason, RejectReason, ShardCounters};

use crate::names::*;

/// Open connections per shard as last flushed, read by the exporter thread to compute memory per
/// connection. One slot per shard, written only by that shard (once per flush).
#[derive(Default)]
#[repr(align(64))]
pub(crate) struct ActiveSlot(AtomicU64);

static ACTIVE_SLOTS: Mutex<Vec<Arc<ActiveSlot>>> = Mutex::new(Vec::new());

/// Sum of the last flushed `active` over all shards built so far.
pub(crate) fn active_connections() -> u64 {
    let slots = ACTIVE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

/// Pre-registered `metrics` handles for one shard (label `shard="<id>"`).
pub struct ShardMetrics {
    active_slot: Arc<ActiveSlot>,
    active: Gauge,
    accepts: Counter,
    closes: [Counter; CloseReason::COUNT],
    rejected: [Counter; RejectReason::COUNT],
    bytes_received: Counter,
    bytes_sent: Counter,
    buffers_capacity: Gauge,
    buffers_in_use: Gauge,
    buffer_exhausted: Counter,
    submits: Counter,
    completions: Counter,
    throttled: Gauge,
    pauses: Counter,
    accepts_deferred: Counter,
    lingering_closes: Counter,
    linger_timeouts: Counter,
    waiting_for_buffer: Gauge,
    parked: Gauge,
    parks: Counter,
    reserve_pauses: Counter,
    output_pauses: Counter,
    http: HttpMetrics,
    ws: WsMetrics,
}

/// `--protocol http` series of one shard.
struct HttpMetrics {
    responses: [[Counter; STATUS_CLASS_LABELS.len()]; Method::COUNT],
    errors: [Counter; HttpError::COUNT],
    continues: Counter,
    truncated: Counter,
}

/// `--protocol websocket` series of one shard.
struct WsMetrics {
    upgrades: Counter,
    rejected: [Counter; 3],
    frames: [Counter; 2],
    messages: [Counter; 2],
    pings: [Counter; 2],
    pongs: [Counter; 2],
    closes_sent: [Counter; CloseCode::COUNT],
    closes_received: Counter,
}

impl HttpMetrics {
    fn new(s: &str) -> HttpMetrics {
        HttpMetrics {
            responses: Method::ALL.map(|m| {
                STATUS_CLASS_LABELS.map(|c| {
                    counter!(HTTP_RESPONSES, "shard" => s.to_string(), "method" => m.label(), "status_class" => c)
                })
            }),
            errors: HttpError::ALL.map(|e| {
                counter!(HTTP_PROTOCOL_ERRORS, "shard" => s.to_string(), "status" => e.status().to_string())
            }),
            continues: counter!(HTTP_CONTINUES, "shard" => s.to_string()),
            truncated: counter!(HTTP_TRUNCATED, "shard" => s.to_string()),
        }
    }

    fn flush(&self, h: &ringhold_core::http::HttpStats) {
        for (row, vals) in self.responses.iter().zip(&h.responses) {
            for (c, v) in row.iter().zip(vals) {
                c.absolute(*v);
            }
        }
        for (c, v) in self.errors.iter().zip(&h.protocol_errors) {
            c.absolute(*v);
        }
        self.continues.absolute(h.continues);
        self.truncated.absolute(h.truncated);
    }
}

impl WsMetrics {
    fn new(s: &str) -> WsMetrics {
        let dir = |name: &'static str| {
            ["in", "out"].map(|d| counter!(name, "shard" => s.to_string(), "direction" => d))
        };
        WsMetrics {
            upgrades: counter!(WS_UPGRADES, "shard" => s.to_string()),
            rejected: ["400", "426", "431"]
                .map(|st| counter!(WS_REJECTED, "shard" => s.to_string(), "status" => st)),
            frames: dir(WS_FRAMES),
            messages: dir(WS_MESSAGES),
            pings: dir(WS_PINGS),
            pongs: dir(WS_PONGS),
            closes_sent: CloseCode::ALL
                .map(|c| counter!(WS_CLOSES_SENT, "shard" => s.to_string(), "code" => c.label())),
            closes_received: counter!(WS_CLOSES_RECEIVED, "shard" => s.to_string()),
        }
    }

    fn flush(&self, w: &ringhold_core::ws::WsStats) {
        self.upgrades.absolute(w.upgrades);
        for (c, v) in self
            .rejected
            .iter()
            .zip([w.rejected_400, w.rejected_426, w.rejected_431])
        {
            c.absolute(v);
        }
        for (pair, (i, o)) in [
            (&self.frames, (w.frames_in, w.frames_out)),
            (&self.messages, (w.messages_in, w.messages_out)),
            (&self.pings, (w.pings_in, w.pings_out)),
            (&self.pongs, (w.pongs_in, w.pongs_out)),
        ] {
            pair[0].absolute(i);
            pair[1].absolute(o);
        }
        for (c, v) in self.closes_sent.iter().zip(&w.closes_sent) {
            c.absolute(*v);
        }
        self.closes_received.absolute(w.closes_received);
    }
}

impl ShardMetrics {
    /// Registers every series of shard `shard` (all at 0, so `rate()` works from the first scrape).
    /// Call after [`crate::install`]; without an installed recorder the handles do nothing.
    pub fn new(shard: usize) -> ShardMetrics {
        let s = shard.to_string();
        let active_slot = Arc::new(ActiveSlot::default());
        ACTIVE_SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(active_slot.clone());
        let m = ShardMetrics {
            active_slot,
            active: gauge!(CONNECTIONS_ACTIVE, "shard" => s.clone()),
            accepts: counter!(ACCEPTS, "shard" => s.clone()),
            closes: CloseReason::ALL
                .map(|r| counter!(CLOSES, "shard" => s.clone(), "reason" => r.label())),
            rejected: RejectReason::ALL
                .map(|r| counter!(REJECTED, "shard" => s.clone(), "reason" => r.label())),
            bytes_received: counter!(BYTES_RECEIVED, "shard" => s.clone()),
            bytes_sent: counter!(BYTES_SENT, "shard" => s.clone()),
            buffers_capacity: gauge!(BUFFERS_CAPACITY, "shard" => s.clone()),
            buffers_in_use: gauge!(BUFFERS_IN_USE, "shard" => s.clone()),
            buffer_exhausted: counter!(BUFFER_EXHAUSTED, "shard" => s.clone()),
            submits: counter!(URING_SUBMITS, "shard" => s.clone()),
            completions: counter!(URING_COMPLETIONS, "shard" => s.clone()),
            throttled: gauge!(THROTTLED, "shard" => s.clone()),
            pauses: counter!(RATE_LIMIT_PAUSES, "shard" => s.clone()),
            accepts_deferred: counter!(ACCEPTS_DEFERRED, "shard" => s.clone()),
            lingering_closes: counter!(LINGERING_CLOSES, "shard" => s.clone()),
            linger_timeouts: counter!(LINGER_TIMEOUTS, "shard" => s.clone()),
            waiting_for_buffer: gauge!(WAITING_FOR_BUFFER, "shard" => s.clone()),
            reserve_pauses: counter!(RESERVE_PAUSES, "shard" => s.clone()),
            parked: gauge!(PARKED, "shard" => s.clone()),
            parks: counter!(PARKS, "shard" => s.clone()),
            output_pauses: counter!(OUTPUT_PAUSES, "shard" => s.clone()),
            http: HttpMetrics::new(&s),
            ws: WsMetrics::new(&s),
        };
        m.flush_ref(&ShardCounters::default());
        m
    }

    /// Copies the shard's counters into the handles (counters with `absolute`, gauges with `set`).
    pub fn flush(&mut self, c: &ShardCounters) {
        self.flush_ref(c);
    }

    fn flush_ref(&self, c: &ShardCounters) {
        self.active_slot.0.store(c.active, Ordering::Relaxed);
        self.active.set(c.active as f64);
        self.accepts.absolute(c.accepts);
        for (h, v) in self.closes.iter().zip(c.closes) {
            h.absolute(v);
        }
        for (h, v) in self.rejected.iter().zip(c.rejected) {
            h.absolute(v);
        }
        self.bytes_received.absolute(c.bytes_received);
        self.bytes_sent.absolute(c.bytes_sent);
        self.buffers_capacity.set(c.buffers_total as f64);
        self.buffers_in_use.set(c.buffers_in_use as f64);
        self.buffer_exhausted.absolute(c.buffer_exhausted);
        self.submits.absolute(c.submits);
        self.completions.absolute(c.completions);
        self.throttled.set(c.throttled as f64);
        self.pauses.absolute(c.pauses);
        self.accepts_deferred.absolute(c.accepts_deferred);
        self.lingering_closes.absolute(c.lingering_closes);
        self.linger_timeouts.absolute(c.linger_timeouts);
        self.waiting_for_buffer.set(c.waiting_for_buffer as f64);
        self.reserve_pauses.absolute(c.reserve_pauses);
        self.parked.set(c.parked as f64);
        self.parks.absolute(c.parks);
        self.output_pauses.absolute(c.output_pauses);
        self.http.flush(&c.proto.http);
        self.ws.flush(&c.proto.ws);
    }
}

impl Drop for ShardMetrics {
    /// A stopped shard holds no connection any more.
    fn drop(&mut self) {
        self.active_slot.0.store(0, Ordering::Relaxed);
        let mut slots = ACTIVE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| !Arc::ptr_eq(s, &self.active_slot));
    }
}
