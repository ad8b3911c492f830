//! Parking quiet connections (`--park-after`): a readiness poll instead of an armed receive.
//!
//! Why: a receive that waits for data — multishot or single-shot, with buffer select — keeps its
//! `io_kiocb` plus the receive's async state in the kernel (the internal poll, `async_poll`, ~96 B, and
//! `io_async_msghdr`, a 512 B kmalloc object): ~870 B per connection, against ~190 B for the epoll
//! engine's `epitem` + `eppoll_entry`. A `POLL_ADD` keeps only its `io_kiocb` (256 B; the poll entry
//! lives inside it). Measured at 15,000 idle connections: kernel slab per connection pair 8,096 B
//! parked, 8,843 B not parked, 8,029 B on epoll (bench/results/2026-11-29-vm-park). Netty's io_uring
//! transport arms POLLIN before reading for the same reason.
//!
//! How:
//! - **When.** A sweep over the shard's slots runs once per `--park-after` (spread over loop turns, a
//!   bounded number of slots and parks per turn). A connection that received nothing since the sweep
//!   before (its `HEARD` bit is clear) and has a receive armed is parked: `PARKED` is set and the
//!   receive is cancelled. So a connection parks after being quiet between 1× and 2× `--park-after`,
//!   and a busy one (ping-pong, a stream) never does: each receive sets `HEARD` again, and the sweep
//!   only clears it. Nothing per message but setting a bit.
//! - **The cancel race.** A receive only takes bytes out of the socket in a completion that carries
//!   them, so data that raced the cancel either came in a completion before the final `ECANCELED` one
//!   (handed to the machine as usual) or is still in the socket, where the poll armed after that final
//!   completion sees it at once. Nothing is lost or reordered: only one receive-side operation is ever
//!   armed per connection. Stale completions are dropped by the generation in `user_data`.
//! - **Waking.** A parked connection's poll (POLLIN | POLLRDHUP; the kernel adds POLLERR | POLLHUP)
//!   completes when bytes, a FIN or an error arrive; the engine then reads once with a single-shot
//!   receive (`MSG_DONTWAIT`: it finds the bytes at once, or ends with EAGAIN, and never waits with
//!   async state) and polls again. A connection woken twice within one sweep period is busy again: it
//!   is unparked, and its multishot receive is re-armed. Measured against unparking on every wake-up
//!   (re-arm the multishot receive, park again when quiet): with 15,000 connections sending one
//!   message every 5 s, 3 SQEs + 3 CQEs per message instead of 5 + 5, server CPU per message 1.04×
//!   that of never parking instead of 1.63×, and almost no receive state held between messages
//!   instead of 22–40 % of the connections' (bench/results/2026-11-29-vm-park).
//! - **The machine's actions** are unchanged: `Recv` arms the poll of a parked connection, `StopRecv`
//!   and `Close` cancel whichever operation is armed (`POLL` says which); a closing connection may
//!   stay parked while it lingers (its peer's FIN wakes it), and drain, idle timeout and lingering
//!   close work as for any other connection.

use std::io;
use std::time::Duration;

use io_uring::opcode;
use ringhold_core::Id;

use crate::conn::bit;
use crate::ring::Io;
use crate::shard::State;
use crate::token::{Op, Token};
use crate::with_fd;

/// Slots one loop turn looks at; a sweep over more continues on the next turns.
const VISIT_PER_TURN: u32 = 16 * 1024;
/// Connections one loop turn parks (each costs a cancel, its two completions and a poll).
const PARK_PER_TURN: u32 = 512;

/// Where the park sweep is.
#[derive(Debug)]
pub(crate) struct Sweep {
    /// `--park-after` in shard milliseconds.
    every_ms: u64,
    /// Shard time the next sweep starts at.
    next_ms: u64,
    /// The next slot to look at, while a sweep is under way.
    cursor: Option<u32>,
}

impl Sweep {
    pub(crate) fn new(park_after: Option<Duration>) -> Option<Sweep> {
        let every_ms = park_after?.as_millis().max(1) as u64;
        Some(Sweep {
            every_ms,
            next_ms: every_ms,
            cursor: None,
        })
    }

    /// Shard time the loop must wake at, at the latest, for the sweep.
    pub(crate) fn due_ms(&self) -> u64 {
        if self.cursor.is_some() {
            0
        } else {
            self.next_ms
        }
    }
}

impl State {
    /// Arms the poll of a parked connection (RECV_ARMED and POLL are set by the caller).
    pub(crate) fn arm_poll(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let e = with_fd!(self.direct, id.idx, |f| opcode::PollAdd::new(f, mask)
            .build());
        io.push(e.user_data(Token::new(Op::Poll, id.gen, id.idx).encode()))
    }

    /// A parked connection's poll completed: readable (or a FIN, an error), or cancelled.
    pub(crate) fn on_poll(&mut self, io: &mut Io<'_>, t: Token, res: i32) -> io::Result<()> {
        let id = Id {
            idx: t.slot,
            gen: t.gen,
        };
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        c.io &= !(bit::RECV_ARMED | bit::CANCELING | bit::POLL);
        c.inflight -= 1;
        if c.io & bit::CLOSE_WANTED != 0 {
            return self.after_op(io, id);
        }
        if res == -libc::ECANCELED {
            // Stopped (the machine stopped reading): re-armed when it reads again.
            return self.arm(io, id, false);
        }
        // Readable (bytes, a FIN, an error: the receive reports which). A poll that failed unparks
        // the connection, so that a poll the kernel refuses cannot turn into a loop of wake-ups.
        let parked = c.io & bit::PARKED != 0;
        let busy = c.io & bit::HEARD != 0 || res < 0;
        let mut read_now = true;
        if parked && busy {
            // Woken twice within one sweep period: busy again.
            c.io &= !bit::PARKED;
            self.machine.counters.parked -= 1;
            read_now = false;
        } else if parked {
            c.io |= bit::HEARD;
        }
        self.arm(io, id, read_now)
    }

    /// Runs the park sweep when it is due (a bounded share of it per loop turn).
    pub(crate) fn park_sweep(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        let now_ms = self.now_ms();
        let Some(sw) = self.sweep.as_mut() else {
            return Ok(());
        };
        let start = match sw.cursor {
            Some(c) => c,
            None if now_ms >= sw.next_ms => {
                sw.next_ms = now_ms + sw.every_ms;
                0
            }
            None => return Ok(()),
        };
        let end = self.machine.slot_count();
        let stop = end.min(start.saturating_add(VISIT_PER_TURN));
        let mut parks = 0;
        let mut idx = start;
        while idx < stop && parks < PARK_PER_TURN {
            if let Some(c) = self.machine.live_conn_mut(idx) {
                let gen = c.gen;
                if c.io & bit::CLOSE_WANTED != 0 {
                    // Closing: nothing to park.
                } else if c.io & bit::HEARD != 0 {
                    c.io &= !bit::HEARD;
                } else if c.io & (bit::RECV_ARMED | bit::CANCELING | bit::POLL | bit::PARKED)
                    == bit::RECV_ARMED
                {
                    // Quiet for a whole sweep period with a receive armed: park it. Its receive's
                    // final completion arms the poll (`arm` sees PARKED).
                    c.io |= bit::PARKED;
                    self.machine.counters.parked += 1;
                    self.machine.counters.parks += 1;
                    parks += 1;
                    self.cancel_recv(io, Id { idx, gen }, Op::Recv)?;
                }
            }
            idx += 1;
        }
        if let Some(sw) = self.sweep.as_mut() {
            sw.cursor = (idx < end).then_some(idx);
        }
        Ok(())
    }
}
