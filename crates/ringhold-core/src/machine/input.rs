//! Input: a received buffer goes to the connection's protocol, and what the protocol says through its
//! sink is queued for sending (in place, copied, or static); rate limits are charged per read.

use std::time::Duration;

use super::out::{Front, Out, Queue, Seg};
use super::{Machine, Pool};
use crate::conn::Conn;
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

/// Records what a protocol says (it holds the input mutably, so the bytes are resolved afterwards).
pub(super) struct Recorder<'a> {
    pub(super) said: &'a mut Vec<Said>,
    pub(super) generated: &'a mut Vec<u8>,
}

impl Sink for Recorder<'_> {
    fn input(&mut self, off: usize, len: usize) {
        if len > 0 {
            self.said.push(Said::Input { off, len });
        }
    }

    fn bytes_static(&mut self, bytes: &'static [u8]) {
        if !bytes.is_empty() {
            self.said.push(Said::Static(bytes));
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
        }
    }
}

impl Machine {
    /// Hands the received buffer (after any held bytes) to the protocol and queues what it answered.
    pub(super) fn run_protocol(
        &mut self,
        pool: &mut impl Pool,
        idx: u32,
        gen: u32,
        bid: u16,
        n: u32,
    ) -> Step {
        let date = self.date;
        let ctx = Ctx { date: &date };
        let c = self.slots.get_mut(idx, gen).expect("live");
        let mut rec = Recorder {
            said: &mut self.said,
            generated: &mut self.generated,
        };
        if c.hold.is_empty() {
            let input = &mut pool.bytes_mut(bid)[..n as usize];
            let step = c.proto.on_input(
                &self.lim.proto,
                &ctx,
                &mut self.counters.proto,
                input,
                &mut rec,
            );
            let mut took = false;
            let mut hold_from = None;
            if let Step::Hold { from } = step {
                hold_from = Some(from.min(n as usize));
            }
            // Replay: input ranges point into the buffer in place.
            let said = std::mem::take(&mut self.said);
            for s in &said {
                match *s {
                    Said::Input { off, len } => {
                        took |= self.out.ref_buffer(bid);
                        self.out.push(
                            &mut c.out,
                            Seg::Buf {
                                bid,
                                off: off as u32,
                                len: len as u32,
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
            if let Some(from) = hold_from {
                if from < n as usize {
                    took |= self.out.ref_buffer(bid);
                    self.out.push(
                        &mut c.hold,
                        Seg::Buf {
                            bid,
                            off: from as u32,
                            len: n - from as u32,
                        },
                    );
                }
            }
            if self.out.refs(bid) == 0 {
                pool.recycle(bid);
            } else if took {
                c.queued += 1;
            }
            return step;
        }
        // Held bytes first: gather them and the new bytes into one slice.
        self.scratch.clear();
        let mut hold = c.hold;
        while let Some(f) = self.out.front(&hold) {
            match f {
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
        c.hold = hold;
        self.scratch
            .extend_from_slice(&pool.bytes_mut(bid)[..n as usize]);
        pool.recycle(bid);
        let mut scratch = std::mem::take(&mut self.scratch);
        let step = c.proto.on_input(
            &self.lim.proto,
            &ctx,
            &mut self.counters.proto,
            &mut scratch,
            &mut rec,
        );
        self.replay_copies(idx, gen, &scratch);
        if let Step::Hold { from } = step {
            let rest = &scratch[from.min(scratch.len())..];
            let c = self.slots.get_mut(idx, gen).expect("live");
            // Kept as generated bytes: a held head is bounded by the protocol's header limit.
            let mut q = Queue::default();
            std::mem::swap(&mut q, &mut c.hold);
            c.queued += self.out.push_copy(&mut q, rest);
            c.hold = q;
        }
        self.scratch = scratch;
        step
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
