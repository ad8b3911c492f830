//! Carrying out the machine's actions for connections, and turning their completions into events.
//!
//! What only this engine knows lives in the connection's two engine bytes: which receive is armed or
//! being cancelled, whether a send is in flight, whether the machine asked for the close, whether the
//! connection is parked, and how many operations are in flight (`inflight`). Rules of the engine, not
//! of the connection:
//! - Multishot receive with buffer select; with `--rate-limit`/`--message-rate`, single-shot receives
//!   (still buffer select), so that a pause stops reading at once. A receive that ended is re-armed when
//!   the machine still wants to read.
//! - A quiet connection is parked ([`crate::park`]): a readiness poll instead of the armed receive.
//! - One send in flight per connection, of the machine's `front()`; short sends resume.
//! - Close: cancel the receive (or poll) and any send, wait until nothing is in flight, close the
//!   descriptor; the machine releases the slot when that close completes.

use std::io;

use io_uring::{cqueue, opcode, squeue};
use ringhold_core::machine::Front;
use ringhold_core::{Action, Id};
use tracing::debug;

use crate::ring::Io;
use crate::shard::State;
use crate::token::{Op, Token};
use crate::with_fd;

/// Engine bits of `Conn::io`.
pub(crate) mod bit {
    /// A receive-side operation is armed: a receive, or (with `POLL`) a readiness poll.
    pub const RECV_ARMED: u8 = 1 << 0;
    /// A cancel of the armed receive-side operation is in flight.
    pub const CANCELING: u8 = 1 << 1;
    /// A send is in flight.
    pub const SENDING: u8 = 1 << 2;
    /// The machine asked for the close.
    pub const CLOSE_WANTED: u8 = 1 << 3;
    /// The close of the descriptor was submitted.
    pub const CLOSE_ISSUED: u8 = 1 << 4;
    /// The close is an abort: SO_LINGER 0 first (an RST).
    pub const ABORT: u8 = 1 << 5;
    /// SO_LINGER 0 was submitted.
    pub const LINGER_SET: u8 = 1 << 6;
    /// The armed receive-side operation is a readiness poll (`Op::Poll`), not a receive.
    pub const POLL: u8 = 1 << 7;

    // Two bits of open connections only (CLOSE_WANTED clear). They share their bits with ABORT and
    // LINGER_SET, which exist only once CLOSE_WANTED is set; `close` clears them before setting those.
    /// Parked: the connection waits on a poll and reads once per wake-up with a single-shot receive.
    pub const PARKED: u8 = ABORT;
    /// Received (or woke) since the last park sweep.
    pub const HEARD: u8 = LINGER_SET;
}

impl State {
    /// Carries out every action the machine queued.
    pub(crate) fn apply(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::Recv(id) => self.arm_recv(io, id)?,
                Action::StopRecv(id) => self.stop_recv(io, id)?,
                Action::Send(id) => self.start_send(io, id)?,
                Action::ShutdownWrite(id) => self.shutdown_write(io, id)?,
                Action::Close(id) => self.close(io, id, false)?,
                Action::Abort(id) => self.close(io, id, true)?,
                Action::Provide { from, count } => self.bufs.provide(from, count),
            }
        }
        Ok(())
    }

    /// Arms what the connection needs to receive: a receive, or a poll when it is parked.
    fn arm_recv(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        self.arm(io, id, false)
    }

    /// Arms a receive (`read_now`: also when parked, because its poll said it is readable) or, for a
    /// parked connection, its poll.
    pub(crate) fn arm(&mut self, io: &mut Io<'_>, id: Id, read_now: bool) -> io::Result<()> {
        let bgid = self.bufs.bgid();
        let size = self.cfg.buffer_size;
        if !self.machine.wants_read(id.idx, id.gen) {
            return Ok(());
        }
        let multishot = !self.machine.single_reads();
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        if c.io & (bit::RECV_ARMED | bit::CLOSE_WANTED) != 0 {
            return Ok(()); // armed (or being cancelled: re-armed when that completes)
        }
        c.io |= bit::RECV_ARMED;
        c.inflight += 1;
        let parked = c.io & bit::PARKED != 0;
        if parked && !read_now {
            c.io |= bit::POLL;
            return self.arm_poll(io, id);
        }
        if !parked {
            // A fresh receive gets a whole sweep period before it may be parked.
            c.io |= bit::HEARD;
        }
        let e = if parked || !multishot {
            // Single-shot. A parked connection reads once per wake-up, then polls again;
            // MSG_DONTWAIT: should the wake-up find nothing, the receive ends with EAGAIN instead of
            // waiting with its async state, which parking is there to avoid. Otherwise single-shot
            // because a multishot receive keeps filling buffers until its cancel lands, so a pause
            // would take effect only after ~100 more reads (measured: 26 pauses of ~190 KiB each for
            // 5 MiB at 1 MiB/s), --check-every would mean nothing, and with buffers short, peers that
            // never read would take the reserve meant for those that hold none.
            let flags = if parked { libc::MSG_DONTWAIT } else { 0 };
            with_fd!(self.direct, id.idx, |f| opcode::Recv::new(
                f,
                std::ptr::null_mut(),
                size
            )
            .flags(flags)
            .buf_group(bgid)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT))
        } else {
            let e = with_fd!(self.direct, id.idx, |f| opcode::RecvMulti::new(f, bgid)
                .build());
            // Capped at the connection's allowance of buffers' worth of bytes (Linux 6.17+): a fast
            // sender cannot take more buffers than that before the machine sees them and pauses it;
            // the receive then ends and is armed again. Multishot means the allowance is the whole
            // --pending-buffers (`single_reads` is false only then).
            if crate::probe::multishot_recv_cap() {
                let cap = u32::from(self.machine.limits().max_queued).saturating_mul(size);
                crate::probe::with_recv_cap(e, cap)
            } else {
                e
            }
        };
        io.push(e.user_data(Token::new(Op::Recv, id.gen, id.idx).encode()))
    }

    fn stop_recv(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        if c.io & bit::RECV_ARMED == 0 || c.io & bit::CANCELING != 0 {
            return Ok(());
        }
        let op = if c.io & bit::POLL != 0 {
            Op::Poll
        } else {
            Op::Recv
        };
        self.cancel_recv(io, id, op)
    }

    /// Cancels the armed receive-side operation `op` (its completion ends it).
    pub(crate) fn cancel_recv(&mut self, io: &mut Io<'_>, id: Id, op: Op) -> io::Result<()> {
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        c.io |= bit::CANCELING;
        c.inflight += 1;
        let target = Token::new(op, id.gen, id.idx).encode();
        let e = opcode::AsyncCancel::new(target).build();
        io.push(e.user_data(Token::new(Op::Cancel, id.gen, id.idx).encode()))
    }

    pub(crate) fn on_recv(
        &mut self,
        io: &mut Io<'_>,
        t: Token,
        res: i32,
        flags: u32,
    ) -> io::Result<()> {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.machine.conn_mut(t.slot, t.gen) else {
            // Stale: the buffer still goes back to the ring.
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            return Ok(());
        };
        if !more {
            c.io &= !(bit::RECV_ARMED | bit::CANCELING);
            c.inflight -= 1;
        }
        if res > 0 && c.io & bit::CLOSE_WANTED == 0 {
            c.io |= bit::HEARD;
        }
        let now_ms = self.now_ms();
        if res > 0 {
            match bid {
                Some(bid) => {
                    self.machine
                        .received(&mut self.bufs, t.slot, t.gen, bid, res as u32, now_ms)
                }
                None => self.machine.failed(t.slot, t.gen, libc::EIO),
            }
        } else {
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            match -res {
                0 => self.machine.peer_fin(t.slot, t.gen, now_ms),
                libc::ENOBUFS => self.machine.no_buffer(t.slot, t.gen),
                // ECANCELED: stopped or being parked; EAGAIN: a parked connection's wake-up found
                // nothing (it polls again; woken again within the sweep period, it is unparked).
                libc::ECANCELED | libc::EAGAIN => {}
                errno => self.machine.failed(t.slot, t.gen, errno),
            }
        }
        if !more {
            self.after_op(
                io,
                Id {
                    idx: t.slot,
                    gen: t.gen,
                },
            )?;
            self.arm_recv(
                io,
                Id {
                    idx: t.slot,
                    gen: t.gen,
                },
            )?;
        }
        Ok(())
    }

    fn start_send(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        let (ptr, len) = match self.machine.front(id.idx, id.gen) {
            None => return Ok(()),
            Some(Front::Buf { bid, off, len }) => (self.bufs.ptr(bid, off, len), len),
            Some(Front::Bytes(b)) => (b.as_ptr(), b.len() as u32),
        };
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        if c.io & (bit::SENDING | bit::CLOSE_WANTED) != 0 {
            return Ok(());
        }
        c.io |= bit::SENDING;
        c.inflight += 1;
        let e = with_fd!(self.direct, id.idx, |f| opcode::Send::new(f, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build());
        io.push(e.user_data(Token::new(Op::Send, id.gen, id.idx).encode()))
    }

    pub(crate) fn on_send(&mut self, io: &mut Io<'_>, t: Token, res: i32) -> io::Result<()> {
        let id = Id {
            idx: t.slot,
            gen: t.gen,
        };
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        c.io &= !bit::SENDING;
        c.inflight -= 1;
        let now_ms = self.now_ms();
        match res {
            n if n >= 0 => self
                .machine
                .sent(&mut self.bufs, id.idx, id.gen, n as usize, now_ms),
            e if -e == libc::ECANCELED => {}
            e => self.machine.failed(id.idx, id.gen, -e),
        }
        self.after_op(io, id)?;
        self.start_send(io, id)
    }

    fn shutdown_write(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        c.inflight += 1;
        let e = with_fd!(self.direct, id.idx, |f| opcode::Shutdown::new(
            f,
            libc::SHUT_WR
        )
        .build());
        io.push(e.user_data(Token::new(Op::Shutdown, id.gen, id.idx).encode()))
    }

    /// Completion of a cancel, a setsockopt or a shutdown.
    pub(crate) fn on_aux(&mut self, io: &mut Io<'_>, t: Token, res: i32) -> io::Result<()> {
        if res < 0 {
            match t.op {
                Op::SockOpt
                    if matches!(-res, libc::EOPNOTSUPP | libc::EINVAL)
                        && self.sockopt_supported =>
                {
                    self.sockopt_supported = false;
                    self.warn_limited(format_args!(
                        "io_uring setsockopt unsupported here ({}); TCP_NODELAY/keepalive not set",
                        io::Error::from_raw_os_error(-res)
                    ));
                }
                Op::Shutdown if -res != libc::ENOTCONN => {
                    self.machine.failed(t.slot, t.gen, -res);
                }
                _ => debug!(
                    "shard {}: {:?} failed: {}",
                    self.id,
                    t.op,
                    io::Error::from_raw_os_error(-res)
                ),
            }
        }
        let id = Id {
            idx: t.slot,
            gen: t.gen,
        };
        if let Some(c) = self.machine.conn_mut(id.idx, id.gen) {
            c.inflight -= 1;
        }
        self.after_op(io, id)
    }

    /// The machine asked for the close: cancel what may never complete, then close once nothing is in
    /// flight.
    fn close(&mut self, io: &mut Io<'_>, id: Id, abort: bool) -> io::Result<()> {
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        if c.io & bit::CLOSE_WANTED == 0 {
            // PARKED and HEARD share their bits with ABORT and LINGER_SET.
            if c.io & bit::PARKED != 0 {
                self.machine.counters.parked -= 1;
            }
            let c = self.machine.conn_mut(id.idx, id.gen).expect("live");
            c.io &= !(bit::PARKED | bit::HEARD);
        }
        let c = self.machine.conn_mut(id.idx, id.gen).expect("live");
        c.io |= bit::CLOSE_WANTED;
        if abort {
            c.io |= bit::ABORT;
        }
        let sending = c.io & bit::SENDING != 0;
        self.stop_recv(io, id)?;
        if sending {
            // A peer that stopped reading would keep this send pending forever.
            if let Some(c) = self.machine.conn_mut(id.idx, id.gen) {
                c.inflight += 1;
            }
            let target = Token::new(Op::Send, id.gen, id.idx).encode();
            let e = opcode::AsyncCancel::new(target).build();
            io.push(e.user_data(Token::new(Op::Cancel, id.gen, id.idx).encode()))?;
        }
        self.after_op(io, id)
    }

    /// After an operation of a connection ended: a connection to close with nothing in flight closes
    /// its descriptor.
    pub(crate) fn after_op(&mut self, io: &mut Io<'_>, id: Id) -> io::Result<()> {
        let Some(c) = self.machine.conn_mut(id.idx, id.gen) else {
            return Ok(());
        };
        if c.io & bit::CLOSE_WANTED == 0 || c.io & bit::CLOSE_ISSUED != 0 || c.inflight > 0 {
            return Ok(());
        }
        if c.io & (bit::ABORT | bit::LINGER_SET) == bit::ABORT && self.sockopt_supported {
            // SO_LINGER 0 first, so the close sends an RST; the close follows when it completes.
            c.io |= bit::LINGER_SET;
            c.inflight += 1;
            let ptr = (&*self.linger_zero as *const libc::linger).cast::<libc::c_void>();
            let len = std::mem::size_of::<libc::linger>() as u32;
            let e = with_fd!(self.direct, id.idx, |f| opcode::SetSockOpt::new(
                f,
                libc::SOL_SOCKET as u32,
                libc::SO_LINGER as u32,
                ptr,
                len
            )
            .build());
            return io.push(e.user_data(Token::new(Op::SockOpt, id.gen, id.idx).encode()));
        }
        c.io |= bit::CLOSE_ISSUED;
        c.inflight = 1; // the close itself; the slot is released when it completes
        let e = with_fd!(self.direct, id.idx, |f| opcode::Close::new(f).build());
        io.push(e.user_data(Token::new(Op::Close, id.gen, id.idx).encode()))
    }

    pub(crate) fn on_close(&mut self, t: Token, res: i32) {
        if res < 0 {
            debug!(
                "shard {}: close failed: {}",
                self.id,
                io::Error::from_raw_os_error(-res)
            );
        }
        self.machine.released(&mut self.bufs, t.slot, t.gen);
    }
}
