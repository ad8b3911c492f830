//! Input: a received buffer goes to the connection's protocol, and what the protocol says through its
//! sink is queued for sending (in place, copied, or static); rate limits are charged per read.
//!
//! # The output budget and pauses
//! What one protocol call may generate is bounded ([`Budget`]): a connection's queue may hold
//! `--pending-buffers` receive buffers and generated slots (`Conn::queued`); what is left of that
//! is the call's room, in 2 KiB slots. The recorder keeps an upper bound of what the output said so
//! far takes (a new slot for every copy run, a node per segment; [`Budget`]), and the protocol, once
//! it answered something and the bound passed the room, stops between units ([`Step::Pause`]). The
//! rest of the input is kept in the hold — in place, as a range of its receive buffer, unless it
//! begins inside bytes that were held already, which are copied — reading stops, and once the queue
//! has been sent ([`Machine::sent`]) the held input is handed in again alone
//! ([`Machine::resume`]), a buffer range at a time. Receives that complete while paused (in flight
//! when reading stopped) are queued behind it in the hold, unread by the protocol until their turn.
//! So a peer that pipelines requests and reads nothing gets its queue filled to the budget, plus
//! one answer, and no more, whatever the buffer size or the pipelining depth; a peer that reads
//! gets the same bytes as without the budget, in the same order.
//!
//! Choices: the budget is the existing per-connection bound (`--pending-buffers`, counted in the
//! same `queued` as receive buffers), so one flag says what a connection may hold whichever way it
//! got there, with no new state in `Conn` (one flag bit); it is a count of slots because slots, not
//! bytes, are what memory is taken in (a 150-byte head before a static body takes a whole slot).
//! The held input is handed in again once the queue is empty, not half empty: the kernel's send
//! buffer still holds what was sent, so the wire stays busy while the next answers are made, and
//! "empty" cannot be missed (a hold that itself takes slots could keep "half" from ever coming).
//! Generated slots are not counted in the shard's buffer fairness: they are not receive buffers,
//! and a connection's share of them is bounded here.

use std::time::Duration;

use super::out::{Front, Out, Queue, Seg, GEN_SLOT, INLINE, NODE_BYTES};
use super::{Machine, Pool};
use crate::conn::{flag, Conn};
use crate::protocol::{Ctx, Sink, Step, MAX_GENERATED};

/// Static bytes up to this size are copied into the connection's generated slot rather than sent as a
/// segment of their own, so that pipelined small responses go out in one send.
const COPY_STATIC_MAX: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub(super) enum Said {
    Input { off: usize, len: usize },
    Static(&'static [u8]),
    Generated { off: usize, len: usize },
}

/// What the output said in one protocol call will take, at most, against the room the connection
/// has left (see the module doc). Mirrors how [`Out::push_copy`] and [`push_static`] queue bytes,
/// except that the first copy is counted into a new slot even when the queue's last slot has room (an
/// upper bound by at most one slot).
#[derive(Clone, Copy, Debug)]
pub(super) struct Budget {
    room: usize,
    cost: usize,
    /// Bytes left in the slot the last copy went into (0: the next copy takes a new one).
    open: usize,
    /// Input ranges are copied (the slice handed in is not one receive buffer).
    copies_input: bool,
}

impl Budget {
    /// No bound (a goodbye, a probe, an answer to FIN: a few bytes, whatever is queued).
    pub(super) const NONE: Budget = Budget {
        room: usize::MAX,
        cost: 0,
        open: 0,
        copies_input: true,
    };

    pub(super) fn new(room: usize, copies_input: bool) -> Budget {
        Budget {
            room,
            copies_input,
            ..Budget::NONE
        }
    }

    /// A segment of its own (in place, static, inline): one node, and the copy run ends.
    fn segment(&mut self) {
        self.cost += NODE_BYTES;
        self.open = 0;
    }

    fn copy(&mut self, len: usize) {
        if len <= INLINE && self.open < len {
            return self.segment();
        }
        if len <= self.open {
            self.open -= len;
            return;
        }
        let rest = len - self.open;
        let slots = rest.div_ceil(GEN_SLOT);
        self.cost += slots * (GEN_SLOT + NODE_BYTES);
        self.open = slots * GEN_SLOT - rest;
    }

    fn over(&self) -> bool {
        self.cost >= self.room
    }
}

/// Records what a protocol says (it holds the input mutably, so the bytes are resolved afterwards).
pub(super) struct Recorder<'a> {
    pub(super) said: &'a mut Vec<Said>,
    pub(super) generated: &'a mut Vec<u8>,
    pub(super) budget: Budget,
}

impl Sink for Recorder<'_> {
    fn input(&mut self, off: usize, len: usize) {
        if len > 0 {
            self.said.push(Said::Input { off, len });
            if self.budget.copies_input {
                self.budget.copy(len);
            } else {
                self.budget.segment();
            }
        }
    }

    fn bytes_static(&mut self, bytes: &'static [u8]) {
        if !bytes.is_empty() {
            self.said.push(Said::Static(bytes));
            if bytes.len() <= COPY_STATIC_MAX {
                self.budget.copy(bytes.len());
            } else {
                self.budget.segment();
            }
        }
    }

    fn generated(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= MAX_GENERATED);
        if !bytes.is_empty() {
            let off = self.generated.len();
            self.generated.extend_from_slice(bytes);
            self.said.push(Said::Generated {
                off,
                len: bytes.len(),
            });
            self.budget.copy(bytes.len());
        }
    }

    fn over_budget(&self) -> bool {
        self.budget.over()
    }
}

/// The input of one protocol call, after the bytes gathered from the hold.
#[derive(Clone, Copy, Debug)]
pub(super) enum Feed {
    /// A receive: every held byte (an incomplete unit) is gathered, then buffer `bid`'s `n` bytes.
    Received { bid: u16, n: u32 },
    /// A paused connection's held input: the copied bytes at the front of the hold are gathered,
    /// then its first buffer range.
    Held,
}

impl Machine {
    /// Hands one slice of input to the connection's protocol and queues what it answered. The slice
    /// is the bytes gathered from the hold ([`Feed`]) followed by a buffer range; without gathered
    /// bytes it is the buffer range itself, in place (its output points into the buffer), else a
    /// copy (its output is copied). What the protocol keeps (`Hold`, `Pause`) goes back to the front
    /// of the hold: a `Pause` in place when it lies in the buffer range, a `Hold` (an incomplete unit)
    /// always copied. Returns the step and whether more held input follows what was handed in.
    pub(super) fn feed(
        &mut self,
        pool: &mut impl Pool,
        idx: u32,
        gen: u32,
        what: Feed,
    ) -> (Step, bool) {
        let date = self.date;
        let ctx = Ctx { date: &date };
        let c = self.slots.get_mut(idx, gen).expect("live");
        let gather_all = matches!(what, Feed::Received { .. });
        // Held bytes first: gathered into one slice with the buffer range.
        self.scratch.clear();
        let mut hold = c.hold;
        while let Some(f) = self.out.front(&hold) {
            match f {
                Front::Buf { .. } if !gather_all => break,
                Front::Buf { bid: b, off, len } => self
                    .scratch
                    .extend_from_slice(&pool.bytes_mut(b)[off as usize..(off + len) as usize]),
                Front::Bytes(b) => self.scratch.extend_from_slice(b),
            }
            let r = self.out.pop(&mut hold);
            if let Some(b) = r.buffer {
                pool.recycle(b);
            }
            if r.buffer.is_some() || r.slot {
                c.queued -= 1;
            }
        }
        // The buffer range: no segment of this call points into it yet. Taken off the hold, it
        // keeps its buffer (recycled below once nothing points into it).
        let buf = match what {
            Feed::Received { bid, n } => Some((bid, 0u32, n)),
            Feed::Held => match self.out.front(&hold) {
                Some(Front::Buf { bid, off, len }) => {
                    if self.out.pop(&mut hold).buffer.is_some() {
                        c.queued -= 1;
                    }
                    Some((bid, off, len))
                }
                _ => None,
            },
        };
        c.hold = hold;
        let more = !c.hold.is_empty();
        let held_len = self.scratch.len();
        let room = self.lim.max_queued.saturating_sub(c.queued) as usize * GEN_SLOT;
        let mut rec = Recorder {
            said: &mut self.said,
            generated: &mut self.generated,
            budget: Budget::new(room, held_len > 0),
        };
        let mut rest = Queue::default();
        let mut took = false;
        let step;
        if let (0, Some((bid, off, len))) = (held_len, buf) {
            let input = &mut pool.bytes_mut(bid)[off as usize..(off + len) as usize];
            step = c.proto.on_input(
                &self.lim.proto,
                &ctx,
                &mut self.counters.proto,
                input,
                &mut rec,
            );
            // Replay: input ranges point into the buffer in place.
            let said = std::mem::take(&mut self.said);
            for s in &said {
                match *s {
                    Said::Input { off: o, len: l } => {
                        took |= self.out.ref_buffer(bid);
                        self.out.push(
                            &mut c.out,
                            Seg::Buf {
                                bid,
                                off: off + o as u32,
                                len: l as u32,
                            },
                        );
                    }
                    Said::Static(b) => push_static(&mut self.out, c, b),
                    Said::Generated { off, len } => {
                        c.queued += self
                            .out
                            .push_copy(&mut c.out, &self.generated[off..off + len]);
                    }
                }
            }
            self.said = said;
            self.said.clear();
            self.generated.clear();
            if let Step::Hold { from } | Step::Pause { from } = step {
                let from = from.min(len as usize) as u32;
                if from < len {
                    if matches!(step, Step::Hold { .. }) {
                        // An incomplete unit is copied out (bounded by the protocol's limit): kept
                        // in place, it would pin a receive buffer until the peer completes it, and
                        // peers that never do (a slow or stalled request head) could hold every
                        // buffer of the pool with nothing to send, so that no receive is served.
                        let b = &pool.bytes_mut(bid)[(off + from) as usize..(off + len) as usize];
                        c.queued += self.out.push_copy(&mut rest, b);
                    } else {
                        took |= self.out.ref_buffer(bid);
                        self.out.push(
                            &mut rest,
                            Seg::Buf {
                                bid,
                                off: off + from,
                                len: len - from,
                            },
                        );
                    }
                }
            }
        } else {
            if let Some((bid, off, len)) = buf {
                self.scratch
                    .extend_from_slice(&pool.bytes_mut(bid)[off as usize..(off + len) as usize]);
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            step = c.proto.on_input(
                &self.lim.proto,
                &ctx,
                &mut self.counters.proto,
                &mut scratch,
                &mut rec,
            );
            self.replay_copies(idx, gen, &scratch);
            let c = self.slots.get_mut(idx, gen).expect("live");
            if let Step::Hold { from } | Step::Pause { from } = step {
                let from = from.min(scratch.len());
                match (step, buf) {
                    (Step::Pause { .. }, Some((bid, off, len))) if from >= held_len => {
                        // Paused inside the buffer range: kept in place.
                        let from = (from - held_len) as u32;
                        if from < len {
                            took |= self.out.ref_buffer(bid);
                            self.out.push(
                                &mut rest,
                                Seg::Buf {
                                    bid,
                                    off: off + from,
                                    len: len - from,
                                },
                            );
                        }
                    }
                    // Kept as generated bytes: a held unit is bounded by the protocol's limit (a
                    // head), and a pause comes after an answer, past the held bytes.
                    _ => c.queued += self.out.push_copy(&mut rest, &scratch[from..]),
                }
            }
            self.scratch = scratch;
        }
        let c = self.slots.get_mut(idx, gen).expect("live");
        self.out.prepend(&mut c.hold, &mut rest);
        if let Some((bid, _, _)) = buf {
            if self.out.refs(bid) == 0 {
                pool.recycle(bid);
            } else if took {
                c.queued += 1;
            }
        }
        (step, more)
    }

    /// A receive that completed while the connection is paused (it was in flight when reading
    /// stopped): kept behind the held input, in order, for [`Machine::resume`].
    pub(super) fn hold_received(&mut self, idx: u32, gen: u32, bid: u16, n: u32) {
        let c = self.slots.get_mut(idx, gen).expect("live");
        if self.out.ref_buffer(bid) {
            c.queued += 1;
        }
        self.out.push(
            &mut c.hold,
            Seg::Buf {
                bid,
                off: 0,
                len: n,
            },
        );
    }

    /// A paused connection's queue was sent (called within the send cycle, which goes on with what
    /// this queues): its held input is handed in again, a buffer range at a time, until the protocol pauses again (its answers wait to be sent) or everything held was
    /// handled (reading resumes; a FIN that came meanwhile is handed to the protocol now). No new
    /// input is needed: the peer may have sent everything already and be waiting for the answers.
    pub(super) fn resume(&mut self, pool: &mut impl Pool, idx: u32, gen: u32) {
        loop {
            let Some(c) = self.slots.get(idx, gen) else {
                return;
            };
            if !c.has(flag::PAUSED) || c.closing() || !c.out.is_empty() {
                break;
            }
            let (step, more) = if c.hold.is_empty() {
                (Step::Continue, false)
            } else {
                self.feed(pool, idx, gen, Feed::Held)
            };
            if !self.after_step(idx, gen, step) {
                return;
            }
            let c = self.slots.get_mut(idx, gen).expect("live");
            match step {
                Step::Pause { .. } => {}
                _ if more => c.set(flag::PAUSED), // on to the next held buffer range
                _ => {}
            }
        }
        let Some(c) = self.slots.get(idx, gen) else {
            return;
        };
        if c.has(flag::PEER_FIN) && !c.has(flag::PAUSED) && !c.closing() {
            self.fin_protocol(idx, gen);
        }
    }

    /// Queues what the recorder holds, copying input ranges out of `input` (bytes that are not in a
    /// receive buffer of their own).
    pub(super) fn replay_copies(&mut self, idx: u32, gen: u32, input: &[u8]) {
        let Some(c) = self.slots.get_mut(idx, gen) else {
            self.said.clear();
            self.generated.clear();
            return;
        };
        for s in &self.said {
            // Input ranges can be longer than a slot (a WebSocket text chunk held across reads):
            // every slot taken is counted.
            c.queued += match *s {
                Said::Input { off, len } => match input.get(off..off + len) {
                    Some(b) => self.out.push_copy(&mut c.out, b),
                    None => 0,
                },
                Said::Static(b) => {
                    push_static(&mut self.out, c, b);
                    0
                }
                Said::Generated { off, len } => self
                    .out
                    .push_copy(&mut c.out, &self.generated[off..off + len]),
            };
        }
        self.said.clear();
        self.generated.clear();
    }

    /// `--rate-limit` / `--message-rate`: takes `n` bytes and one read; every `--check-every` reads,
    /// the pause the buckets ask for (the longer of the two), if any.
    pub(super) fn rate_check(&mut self, idx: u32, n: u32) -> Option<Duration> {
        if !self.lim.rate_limited() {
            return None;
        }
        let now = self.now_ms as u32;
        let l = &mut self.limiters[idx as usize];
        let mut pause = None;
        if let Some(spec) = &self.lim.rate {
            pause = pause.max(l.bytes.take(spec, now, n as f64));
        }
        if let Some(spec) = &self.lim.msgs {
            pause = pause.max(l.msgs.take(spec, now, 1.0));
        }
        l.reads_since_check += 1;
        if l.reads_since_check < self.lim.check_every {
            return None;
        }
        l.reads_since_check = 0;
        pause
    }
}

/// Queues static bytes: small ones are copied into the connection's generated slot (one send for a
/// pipelined batch of small responses), large ones go out from where they are.
fn push_static(out: &mut Out, c: &mut Conn, b: &'static [u8]) {
    if b.len() <= COPY_STATIC_MAX {
        c.queued += out.push_copy(&mut c.out, b);
    } else {
        out.push(&mut c.out, Seg::Static(b));
    }
}
