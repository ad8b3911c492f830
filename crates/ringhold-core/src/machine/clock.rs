//! The three clocks (idle, stalled, lingering) and the keep-alive probe, on the shard's timer wheel:
//! one live entry per connection, moved when its clock moves, superseded when a clock that ends sooner
//! starts.

use std::time::Duration;

use super::input::{Budget, Recorder};
use super::Machine;
use crate::conn::{flag, Conn};
use crate::wheel::Check;
use crate::CloseReason;

/// Wheel ticks of the three clocks (0 = that clock is off), and of the keep-alive probe (half the
/// idle timeout, for protocols that have one; 0 = none).
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticks {
    pub(super) idle: u32,
    pub(super) send: u32,
    pub(super) linger: u32,
    pub(super) probe: u32,
    /// How long a peer must have read nothing before buffer pressure may close it.
    pub(super) pressure: u32,
}

/// Lingering ends at the latest this many linger times after the write side was shut down.
pub(super) const LINGER_TOTAL: u32 = 10;

/// A deadline that is not one: the wheel parks the entry at its far end and looks again then.
pub(super) const PARK: u32 = u32::MAX;

impl Machine {
    /// When the engine must call [`Machine::tick`] next at the latest (shard milliseconds).
    pub fn next_deadline(&self) -> Option<u64> {
        // The next tick boundary, rounded up to a whole millisecond (a tick need not be a whole
        // number of them): calling `tick` then always moves the wheel.
        let tick_ns = self.wheel.tick().as_nanos();
        let mut d = (!self.wheel.is_empty())
            .then(|| ((self.wheel.now() as u128 + 1) * tick_ns).div_ceil(1_000_000) as u64);
        let drain = self.drain_deadline.filter(|_| !self.drain_forced);
        for t in [self.throttles.next_due(), drain].into_iter().flatten() {
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        if !self.waiters.is_empty() && self.free_buffers() > self.promised {
            d = Some(self.now_ms);
        } else if self.under_pressure() {
            let t = self.next_relief_ms.max(self.now_ms);
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        d
    }

    /// The tick of shard time `ms` on the wheel.
    pub(super) fn tick_of(&self, ms: u64) -> u32 {
        self.wheel.tick_of(Duration::from_millis(ms))
    }

    /// The wheel tick of the last time an event told (clocks start from it; the wheel itself moves
    /// only in `tick` and may lag while no deadline asked for one).
    pub(super) fn now_tick(&self) -> u32 {
        self.tick_of(self.now_ms)
    }

    /// Asks the protocol to probe a quiet peer (it may have nothing to send yet, e.g. before a
    /// WebSocket handshake), and puts the connection back on the wheel for the rest of its idle time.
    pub(super) fn probe(&mut self, idx: u32, gen: u32) {
        let c = self.slots.get_mut(idx, gen).expect("live");
        c.set(flag::PROBED);
        let mut rec = Recorder {
            said: &mut self.said,
            generated: &mut self.generated,
            budget: Budget::NONE,
        };
        if !c.proto.on_quiet(&mut self.counters.proto, &mut rec) {
            // Nothing went out (so no send moves the clock): the rest of the idle time runs from
            // the probe's time all the same.
            c.stamp = c.stamp.wrapping_add(self.ticks.probe);
        }
        let before = c.queued;
        self.replay_copies(idx, gen, &[]);
        let after = self.slots.get(idx, gen).map_or(0, |c| c.queued);
        self.note_holding(before, after);
        self.sync(idx, gen);
        self.schedule(idx, gen);
    }

    /// Puts the connection's one live entry on the wheel at its deadline.
    pub(super) fn schedule(&mut self, idx: u32, gen: u32) {
        let now = self.now_tick();
        let Some(c) = self.slots.get_mut(idx, gen) else {
            return;
        };
        if let Some(d) = deadline(c, now, self.ticks) {
            c.due = self.wheel.schedule(idx, gen, d);
        }
    }

    /// A clock started that may end before the one the wheel entry is for (stalled before idle,
    /// lingering before stalled): a new entry supersedes the old one, which is dropped when it comes up.
    pub(super) fn reschedule_if_earlier(&mut self, idx: u32, gen: u32) {
        let now = self.now_tick();
        let Some(c) = self.slots.get(idx, gen) else {
            return;
        };
        if deadline(c, now, self.ticks).is_some_and(|d| d < c.due) {
            self.schedule(idx, gen);
        }
    }

    pub(super) fn expire(&mut self, now_ms: u64) {
        let to = self.tick_of(now_ms);
        if to <= self.wheel.now() {
            return;
        }
        let mut expired = std::mem::take(&mut self.expired);
        let (slots, ticks) = (&mut self.slots, self.ticks);
        self.wheel.advance(
            to,
            |i, g, tick, place| {
                let Some(c) = slots.get_mut(i, g) else {
                    return Check::Gone;
                };
                if c.due != tick {
                    return Check::Gone; // superseded by an earlier entry
                }
                match deadline(c, tick, ticks) {
                    None => Check::Gone,
                    Some(d) => {
                        // Moved on, or expired: then the connection has no entry until the next
                        // clock starts (`u32::MAX` is later than any deadline).
                        c.due = if d > tick { place(d) } else { u32::MAX };
                        Check::Due(d)
                    }
                }
            },
            &mut expired,
        );
        for &(idx, gen) in &expired {
            let Some(c) = self.slots.get(idx, gen) else {
                continue;
            };
            if c.has(flag::CLOSED) {
                continue; // a second entry of the same connection
            }
            if c.has(flag::LINGER) {
                self.counters.linger_timeouts += 1;
                self.close_now(idx, gen, CloseReason::Shutdown);
            } else if c.output_pending() {
                self.close_now(idx, gen, CloseReason::SendTimeout);
            } else if self.ticks.probe > 0 && !c.has(flag::PROBED) {
                // Quiet for half the idle timeout: probe (a WebSocket ping); a pong, or any byte,
                // counts as activity. The idle timeout itself still ends it.
                self.probe(idx, gen);
            } else {
                self.close_gracefully(idx, gen, CloseReason::IdleTimeout);
            }
        }
        expired.clear();
        self.expired = expired;
    }
}

/// The tick at which `c`'s running clock runs out (`now`: the wheel's tick), if one runs.
pub(super) fn deadline(c: &Conn, now: u32, t: Ticks) -> Option<u32> {
    if c.has(flag::CLOSED) {
        return None;
    }
    if c.has(flag::LINGER) {
        // Quiet for the linger time, or lingering LINGER_TOTAL times that long in all (a peer that
        // trickles bytes does not keep a closing connection forever; nginx lingering_time).
        let quiet = c.stamp.wrapping_add(t.linger);
        let total = c
            .linger_start
            .wrapping_add(t.linger.saturating_mul(LINGER_TOTAL));
        return Some(quiet.min(total));
    }
    if c.output_pending() {
        return Some(if t.send > 0 {
            c.stamp.wrapping_add(t.send)
        } else {
            PARK
        });
    }
    if t.idle == 0 {
        return Some(PARK);
    }
    if c.has(flag::THROTTLED | flag::WAIT_BUFFER | flag::FLUSH_CLOSE | flag::PAUSED) {
        // We are the ones not reading: not idle. Looked at again one timeout from now.
        return Some(now.saturating_add(t.idle));
    }
    if t.probe > 0 {
        // Half the idle time to the probe; the probe's send moves the stamp, then the other half.
        return Some(c.stamp.wrapping_add(if c.has(flag::PROBED) {
            t.idle.saturating_sub(t.probe).max(1)
        } else {
            t.probe
        }));
    }
    Some(c.stamp.wrapping_add(t.idle))
}
