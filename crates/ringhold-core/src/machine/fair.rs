//! Buffer fairness: how many buffers a connection may hold, when the pool grows, and who gets a buffer
//! that comes free.

use super::{Action, Id, Machine};
use crate::conn::flag;
use crate::CloseReason;

/// Under buffer pressure, a connection whose peer has read nothing for this long may lose its buffers
/// (and its connection) to a connection waiting for one.
pub(super) const PRESSURE_STALL_MS: u64 = 1_000;
/// How often, at most, the machine looks for such connections while receives wait.
pub(super) const PRESSURE_SCAN_MS: u64 = 100;

impl Machine {
    /// Buffers in the engine's pool now.
    pub(super) fn free_buffers(&self) -> u32 {
        self.capacity.saturating_sub(self.out.buffers_held())
    }

    /// Grows the pool (doubling, up to `--buffers`) until more than a quarter of it is free besides
    /// a buffer for every receive that waits for one, in one `Provide`.
    ///
    /// Why the waiters count: a receive that found the ring empty (ENOBUFS) is the kernel's word that
    /// the pool is spent, although the machine, which has not yet seen the completions of the buffers
    /// it lent, may count a quarter free. Growing one doubling per received buffer then lagged a
    /// burst: 20,000 writers connecting at once queued ~10,000 receives for a buffer while the pool
    /// was still 2,048–8,192 (bench/results/2026-12-06-vm-adversarial), and a ping-pong client queued
    /// behind them waited 3.5 s. Growing to cover the waiters lets the next tick wake them all.
    pub(super) fn maybe_grow(&mut self) {
        let max = self.lim.buffers as u32;
        let held = self.out.buffers_held();
        let wanted = self.waiting + self.promised;
        let mut target = self.capacity;
        while target < max && target.saturating_sub(held) <= target / 4 + wanted {
            target = (target * 2).min(max);
        }
        if target == self.capacity {
            return;
        }
        self.actions.push_back(Action::Provide {
            from: self.capacity as u16,
            count: (target - self.capacity) as u16,
        });
        self.capacity = target;
    }

    /// Keeps `holders` right when a connection's holding goes from `before` to `after`.
    pub(super) fn note_holding(&mut self, before: u16, after: u16) {
        match (before, after) {
            (0, a) if a > 0 => self.holders += 1,
            (b, 0) if b > 0 => self.holders -= 1,
            _ => {}
        }
    }

    /// How many buffers a connection may hold before it stops reading. The pool (up to `--buffers`,
    /// counting what it can still grow by) keeps a reserve of 1/8 for connections that hold none, and
    /// owes every other connection that holds none one buffer; what is left is shared among the
    /// connections holding buffers, each getting 1 plus its share, at most `--pending-buffers`. Once
    /// only the reserve is free, 0: a connection holding any buffer stops reading, so that a
    /// well-behaved client among thousands of peers that never read what they are sent is still served.
    /// When a shard holds more connections than buffers, each connection echoes one buffer at a time.
    pub fn allowance(&self) -> u16 {
        let max = self.lim.buffers as u32;
        let free = max.saturating_sub(self.out.buffers_held());
        let reserve = max / 8;
        if free <= reserve {
            return 0;
        }
        let owed = (self.slots.live() as u32).saturating_sub(self.holders);
        let spare = free.saturating_sub(reserve + owed);
        (1 + spare / (self.holders + 1)).min(self.lim.max_queued as u32) as u16
    }

    /// Whether receives should take one buffer at a time (a rate limit is set, buffers are short, or
    /// the shard holds more than an eighth as many connections as it may have buffers, so that a
    /// burst of multishot receives could take the reserve before the allowance bites): then a decision to stop reading takes
    /// effect at once.
    pub fn single_reads(&self) -> bool {
        self.lim.rate_limited()
            || self.allowance() < self.lim.max_queued
            || self.slots.live() as u32 * 8 > self.lim.buffers as u32
    }

    /// Sets or clears backpressure after a connection's holding (or the pool) changed.
    pub(super) fn check_allowance(&mut self, idx: u32, gen: u32) {
        let allowance = self.allowance();
        let Some(c) = self.slots.get_mut(idx, gen) else {
            return;
        };
        // Only a connection with answers queued waits for its queue to drain: one that holds nothing
        // but an incomplete unit (a request head split across reads, held in its buffer) must read
        // on to complete it, or it would wait forever (the held unit is bounded by the protocol).
        let over = c.output_pending() && c.queued >= allowance.max(1);
        if over && !c.has(flag::BACKPRESSURE) {
            c.set(flag::BACKPRESSURE);
            if c.queued < self.lim.max_queued {
                self.counters.reserve_pauses += 1;
            }
        } else if !over && c.has(flag::BACKPRESSURE) {
            c.clear(flag::BACKPRESSURE);
        }
    }

    /// Wakes as many waiters as there are free buffers not yet spoken for, oldest first.
    pub(super) fn wake_waiters(&mut self) {
        let mut free = self.free_buffers().saturating_sub(self.promised);
        let tick = self.now_tick();
        while free > 0 {
            let Some(Id { idx, gen }) = self.waiters.pop_front() else {
                break;
            };
            if let Some(c) = self.slots.get_mut(idx, gen) {
                if c.has(flag::WAIT_BUFFER) {
                    c.clear(flag::WAIT_BUFFER);
                    c.set(flag::PROMISED);
                    c.stamp = tick;
                    self.waiting -= 1;
                    self.promised += 1;
                    free -= 1;
                    self.sync(idx, gen);
                }
            }
        }
    }

    /// A woken waiter's receive came (with a buffer, or finding none again), or it stopped receiving
    /// or closed: the buffer it was promised is no longer spoken for. Returns whether it had one.
    pub(super) fn unpromise(&mut self, idx: u32, gen: u32) -> bool {
        let Some(c) = self.slots.get_mut(idx, gen) else {
            return false;
        };
        if !c.has(flag::PROMISED) {
            return false;
        }
        c.clear(flag::PROMISED);
        self.promised -= 1;
        true
    }

    /// Receives wait for a buffer that no free buffer will serve, and the pool cannot grow.
    pub(super) fn under_pressure(&self) -> bool {
        self.waiting > 0
            && self.capacity >= self.lim.buffers as u32
            && self.free_buffers() <= self.promised
    }

    /// Buffer pressure: when every buffer of a full-grown pool is held and receives wait for one,
    /// the buffers of peers that read nothing are what is left to give. The connections whose peer
    /// has read nothing for longest — at least [`PRESSURE_STALL_MS`], so that a momentary stall of a
    /// healthy peer is not one — are closed at once (RST: what we owed them cannot be delivered),
    /// one for each waiter, and their buffers go to the waiters in turn. Without this, peers that
    /// never read and outnumber the pool would hold every buffer until `--send-timeout` (or forever
    /// with `--send-timeout 0`), and a well-behaved client would get no echo at all. Looked at every
    /// [`PRESSURE_SCAN_MS`] at most while the pressure lasts; a scan is one pass over the shard's
    /// connections.
    pub(super) fn relieve_pressure(&mut self) {
        if !self.under_pressure() || self.now_ms < self.next_relief_ms {
            return;
        }
        self.next_relief_ms = self.now_ms + PRESSURE_SCAN_MS;
        let unserved = self.waiting
            - self
                .free_buffers()
                .saturating_sub(self.promised)
                .min(self.waiting);
        let now = self.now_tick();
        let stall = self.ticks.pressure;
        let mut stalled: Vec<(u32, Id)> = self
            .slots
            .live_indices()
            .into_iter()
            .filter_map(|idx| {
                let c = self.slots.get_live(idx)?;
                let age = now.wrapping_sub(c.stamp);
                (!c.closing()
                    && c.output_pending()
                    && c.queued > 0
                    && age >= stall
                    && age < 1 << 31)
                    .then_some((age, Id { idx, gen: c.gen }))
            })
            .collect();
        let k = (unserved as usize).min(stalled.len());
        if k == 0 {
            return;
        }
        if k < stalled.len() {
            stalled.select_nth_unstable_by(k - 1, |a, b| b.0.cmp(&a.0));
        }
        for &(_, Id { idx, gen }) in &stalled[..k] {
            self.close_now(idx, gen, CloseReason::BufferPressure);
        }
    }
}
