//! The per-connection state machine of a worker: connect chain, heartbeats, echo checks, failures
//! and teardown. Every failure is counted once, under one cause, when the connection leaves `ST_OPEN`
//! (or its connect fails); its slot is closed once no operation is in flight for it.

use io_uring::types::{DestinationSlot, Fixed};
use io_uring::{cqueue, opcode, squeue};

use super::*;
use crate::pattern;
use crate::setup::{self, ONE};
use crate::stats::Cause;

impl Worker {
    pub(super) fn start_connect(&mut self, slot: u32) {
        let src = self.plan.source_index(self.id, slot);
        let domain = self.target.domain();
        let link_skip = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let mut chain: Vec<squeue::Entry> = Vec::with_capacity(5);
        if self.setup_in_ring {
            let Ok(dest) = DestinationSlot::try_from_slot_target(slot) else {
                self.conns[slot as usize].state = ST_CLOSED;
                self.count_fail(Cause::FdLimit, 0);
                return;
            };
            chain.push(
                opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
                    .file_index(Some(dest))
                    .build()
                    .flags(link_skip)
                    .user_data(ud(OP_SOCKET, slot)),
            );
            if let Some(i) = src {
                chain.push(
                    opcode::SetSockOpt::new(
                        Fixed(slot),
                        libc::IPPROTO_IP as u32,
                        libc::IP_BIND_ADDRESS_NO_PORT as u32,
                        std::ptr::addr_of!(ONE).cast(),
                        std::mem::size_of::<libc::c_int>() as u32,
                    )
                    .build()
                    .flags(link_skip)
                    .user_data(ud(OP_SETSOCKOPT, slot)),
                );
                let a = &self.sources[i];
                chain.push(
                    opcode::Bind::new(Fixed(slot), a.as_ptr(), a.len)
                        .build()
                        .flags(link_skip)
                        .user_data(ud(OP_BIND, slot)),
                );
            }
        } else if let Err(e) =
            setup::socket_into_slot(&self.ring, slot, domain, src.map(|i| &self.sources[i]))
        {
            self.conns[slot as usize].state = ST_CLOSED;
            let errno = e.raw_os_error().unwrap_or(0);
            self.count_fail(Cause::from_errno(errno), errno);
            return;
        }
        chain.push(
            opcode::Connect::new(Fixed(slot), self.target.as_ptr(), self.target.len)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(ud(OP_CONNECT, slot)),
        );
        chain.push(
            opcode::LinkTimeout::new(&self.connect_ts)
                .build()
                .user_data(ud(OP_LINK_TIMEOUT, slot)),
        );
        self.conns[slot as usize].state = ST_CONNECTING;
        self.c.pending += 1;
        self.push(&chain);
    }

    pub(super) fn count_fail(&mut self, cause: Cause, errno: i32) {
        self.c.failed[cause.index()] += 1;
        if cause == Cause::Other {
            self.c.other_errno = errno;
        }
    }

    pub(super) fn check_ramp(&mut self, now: u64) {
        if self.c.ramp_done_us == 0 && self.next == self.quota && self.c.pending == 0 {
            self.c.ramp_done_us = now.max(1);
        }
    }

    pub(super) fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let (op, idx) = ud_split(u);
        if op == OP_SEND {
            self.on_send(idx, res);
            return;
        }
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        match op {
            // Only failures post a completion (CQE_SKIP_SUCCESS); the connect then ends with ECANCELED.
            OP_SOCKET | OP_SETSOCKOPT | OP_BIND if res < 0 && conn.flags & F_SETUP_FAILED == 0 => {
                conn.flags |= F_SETUP_FAILED;
                self.count_fail(Cause::from_errno(-res), -res);
            }
            OP_CONNECT => self.on_connect(idx, res),
            OP_RECV => self.on_recv(idx, res, flags),
            OP_CANCEL => {
                conn.flags &= !F_CANCEL;
                self.maybe_close(idx);
            }
            OP_CLOSE => {
                conn.flags &= !F_CLOSING;
                conn.state = ST_CLOSED;
            }
            _ => {} // OP_LINK_TIMEOUT: the connect's own completion says what happened.
        }
    }

    pub(super) fn on_connect(&mut self, slot: u32, res: i32) {
        self.c.pending = self.c.pending.saturating_sub(1);
        let setup_failed = self.conns[slot as usize].flags & F_SETUP_FAILED != 0;
        if res < 0 || setup_failed {
            if !setup_failed {
                // ECANCELED here means the linked timeout fired.
                self.count_fail(Cause::from_errno(-res), -res);
            }
            self.conns[slot as usize].state = ST_DEAD;
            self.maybe_close(slot);
            return;
        }
        self.conns[slot as usize].state = ST_OPEN;
        self.c.connected += 1;
        self.c.alive += 1;
        self.arm_recv(slot);
        if self.websocket() {
            self.ws_start(slot);
        } else {
            self.start_heartbeats(slot);
        }
    }

    /// The first heartbeat (or request) now, then one every period (http-kit: after each answer).
    pub(super) fn start_heartbeats(&mut self, slot: u32) {
        if self.period_us > 0 || self.kit.is_some() {
            let now = self.now_us();
            self.send_heartbeat(slot, now, now);
        }
        if self.period_us > 0 {
            let now = self.now_us();
            self.sched.push(Reverse(Due {
                at_us: now + self.period_us,
                slot,
            }));
        }
    }

    pub(super) fn arm_recv(&mut self, slot: u32) {
        self.conns[slot as usize].flags |= F_RECV;
        let e = opcode::RecvMulti::new(Fixed(slot), self.bufs.bgid)
            .build()
            .user_data(ud(OP_RECV, slot));
        self.push(&[e]);
    }

    pub(super) fn send_due(&mut self, now: u64) {
        while let Some(&Reverse(Due { at_us, slot })) = self.sched.peek() {
            if at_us > now {
                break;
            }
            self.sched.pop();
            let conn = self.conns[slot as usize];
            if conn.state != ST_OPEN {
                continue;
            }
            if self.kit.is_some() {
                // Closed loop: the next one is scheduled when this one is answered.
                if conn.flags & (F_AWAIT | F_SEND) == 0 {
                    self.send_heartbeat(slot, now, now);
                }
                continue;
            }
            if conn.flags & (F_AWAIT | F_SEND) != 0 || conn.ws & W_CTRL_SEND != 0 {
                self.c.late += 1;
            } else {
                self.send_heartbeat(slot, at_us, now);
            }
            self.sched.push(Reverse(Due {
                at_us: at_us + self.period_us,
                slot,
            }));
        }
    }

    pub(super) fn send_heartbeat(&mut self, slot: u32, intended_us: u64, now: u64) {
        let id = self.conn_id(slot);
        let conn = &mut self.conns[slot as usize];
        conn.seq = conn.seq.wrapping_add(1);
        conn.got = 0;
        conn.intended_us = intended_us;
        conn.flags = (conn.flags | F_AWAIT | F_SEND) & !F_BODY;
        let seq = conn.seq;
        let want = match self.kit {
            Some(kit) => http::draw(
                &mut self.rng,
                u64::from(kit.length.0),
                u64::from(kit.length.1),
            ) as u32,
            None => self.plan.message_size as u32,
        };
        self.conns[slot as usize].want = want;
        let size = self.plan.message_size;
        let mask = self.websocket().then(|| self.next_mask());
        let b = self.alloc_send(slot, false);
        let sb = &mut self.sends[b as usize];
        sb.len = match (&self.plan.http, mask) {
            (Some(h), _) => http::write_request(&mut sb.data, h, want) as u32,
            (None, Some(mask)) => ws::heartbeat_frame(&mut sb.data, size, id, seq, mask) as u32,
            (None, None) => {
                pattern::fill(&mut sb.data[..size], id, seq);
                size as u32
            }
        };
        let e = opcode::Send::new(Fixed(slot), sb.data.as_ptr(), sb.len)
            .build()
            .user_data(ud(OP_SEND, b));
        self.c.sent += 1;
        self.c.outstanding += 1;
        self.deadlines.push_back(Deadline {
            at_us: now + self.plan.echo_timeout.as_micros() as u64,
            slot,
            seq,
        });
        self.push(&[e]);
    }

    /// A send buffer for `slot` (from the pool, or a new one), marked in flight.
    pub(super) fn alloc_send(&mut self, slot: u32, ctrl: bool) -> u32 {
        let b = match self.free_sends.pop() {
            Some(b) => b,
            None => {
                self.sends.push(SendBuf {
                    data: vec![0u8; self.send_cap].into_boxed_slice(),
                    len: 0,
                    slot: 0,
                    off: 0,
                    ctrl: false,
                });
                (self.sends.len() - 1) as u32
            }
        };
        let sb = &mut self.sends[b as usize];
        sb.slot = slot;
        sb.off = 0;
        sb.ctrl = ctrl;
        b
    }

    pub(super) fn on_send(&mut self, b: u32, res: i32) {
        let Some(sb) = self.sends.get_mut(b as usize) else {
            return;
        };
        let slot = sb.slot;
        let open = self.conns[slot as usize].state == ST_OPEN;
        if res > 0 {
            self.c.bytes_sent += res as u64;
            sb.off += res as u32;
            if sb.off < sb.len && open {
                let rest = &sb.data[sb.off as usize..sb.len as usize];
                let e = opcode::Send::new(Fixed(slot), rest.as_ptr(), rest.len() as u32)
                    .build()
                    .user_data(ud(OP_SEND, b));
                self.push(&[e]);
                return;
            }
        }
        let ctrl = sb.ctrl;
        self.free_sends.push(b);
        if ctrl {
            self.conns[slot as usize].ws &= !W_CTRL_SEND;
        } else {
            self.conns[slot as usize].flags &= !F_SEND;
        }
        if res > 0 && open {
            self.ws_send_waiting_pong(slot);
        }
        if res < 0 {
            self.fail(slot, Cause::from_errno(-res), -res);
        } else if res == 0 && open {
            self.fail(slot, Cause::Closed, 0);
        }
        self.maybe_close(slot);
    }

    pub(super) fn on_recv(&mut self, slot: u32, res: i32, flags: u32) {
        if res > 0 {
            let n = res as usize;
            self.c.bytes_received += n as u64;
            if let Some(bid) = cqueue::buffer_select(flags) {
                if self.conns[slot as usize].state != ST_OPEN {
                } else if self.websocket() {
                    let mut data = std::mem::take(&mut self.scratch);
                    data.clear();
                    data.extend_from_slice(self.bufs.data(bid, n));
                    if let Err(cause) = self.ws_input(slot, &data) {
                        self.fail(slot, cause, 0);
                    }
                    self.scratch = data;
                } else {
                    let checked = if self.plan.http.is_some() {
                        self.check_http(slot, bid, n)
                    } else if self.check_echo(slot, bid, n) {
                        Ok(())
                    } else {
                        Err(Cause::Mismatch)
                    };
                    if let Err(cause) = checked {
                        self.fail(slot, cause, 0);
                    }
                }
                self.bufs.push(bid);
                self.bufs_dirty = true;
            }
        }
        if !cqueue::more(flags) {
            self.conns[slot as usize].flags &= !F_RECV;
        }
        if res == 0 {
            self.fail(slot, Cause::Closed, 0);
        } else if res < 0 {
            if -res == libc::ENOBUFS {
                self.c.recv_nobufs += 1;
            } else {
                self.fail(slot, Cause::from_errno(-res), -res);
            }
        }
        let conn = self.conns[slot as usize];
        if conn.state == ST_OPEN && conn.flags & F_RECV == 0 {
            self.arm_recv(slot);
        }
        self.maybe_close(slot);
    }

    /// Verifies `n` received bytes in buffer `bid` against the heartbeat being echoed.
    pub(super) fn check_echo(&mut self, slot: u32, bid: u16, n: usize) -> bool {
        let id = self.conn_id(slot);
        let size = self.plan.message_size;
        let conn = self.conns[slot as usize];
        if conn.flags & F_AWAIT == 0 {
            return false; // bytes nobody asked for
        }
        let got = conn.got as usize;
        if n > size - got || !pattern::verify(self.bufs.data(bid, n), id, conn.seq, got) {
            return false;
        }
        self.conns[slot as usize].got += n as u32;
        if got + n == size {
            self.answered(slot);
        }
        true
    }

    /// The heartbeat (request) being awaited on `slot` came back whole and intact.
    pub(super) fn answered(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.flags &= !(F_AWAIT | F_BODY);
        let intended = conn.intended_us;
        self.c.echoed += 1;
        self.c.outstanding = self.c.outstanding.saturating_sub(1);
        let now = self.now_us();
        self.lat.push(now.saturating_sub(intended).max(1));
        if let Some(kit) = self.kit {
            let pause = http::draw(&mut self.rng, kit.pause_us.0, kit.pause_us.1);
            self.sched.push(Reverse(Due {
                at_us: now + pause,
                slot,
            }));
        }
    }

    pub(super) fn expire_echoes(&mut self, now: u64) {
        while let Some(&Deadline { at_us, slot, seq }) = self.deadlines.front() {
            if at_us > now {
                break;
            }
            self.deadlines.pop_front();
            let conn = self.conns[slot as usize];
            if conn.state == ST_OPEN && conn.flags & F_AWAIT != 0 && conn.seq == seq {
                self.fail(slot, Cause::TimedOut, 0);
                self.maybe_close(slot);
            }
        }
    }

    /// Counts an open connection's failure once and starts tearing it down.
    pub(super) fn fail(&mut self, slot: u32, cause: Cause, errno: i32) {
        let conn = &mut self.conns[slot as usize];
        if conn.state != ST_OPEN {
            return;
        }
        conn.state = ST_DEAD;
        if self.plan.http.is_some() {
            self.partial.remove(&slot);
        }
        let conn = &mut self.conns[slot as usize];
        let awaiting = conn.flags & F_AWAIT != 0;
        conn.flags &= !F_AWAIT;
        let cancel = conn.flags & (F_RECV | F_CANCEL) == F_RECV;
        if cancel {
            conn.flags |= F_CANCEL;
        }
        if conn.ws & W_KEPT != 0 {
            self.ws_kept.remove(&slot);
        }
        if conn.ws & W_PONG_WAITS != 0 {
            self.ws_pongs.remove(&slot);
        }
        conn.ws &= !(W_KEPT | W_PONG_WAITS);
        self.c.alive = self.c.alive.saturating_sub(1);
        if awaiting {
            self.c.outstanding = self.c.outstanding.saturating_sub(1);
        }
        self.count_fail(cause, errno);
        if cancel {
            // Ends the armed multishot receive (it completes with ECANCELED). Cancelling runs inline;
            // IORING_OP_SHUTDOWN would always go to an io-wq thread.
            let e = opcode::AsyncCancel::new(ud(OP_RECV, slot))
                .build()
                .user_data(ud(OP_CANCEL, slot));
            self.push(&[e]);
        }
    }

    /// Closes a dead connection's slot once nothing is in flight for it.
    pub(super) fn maybe_close(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if conn.state == ST_DEAD
            && conn.flags & (F_RECV | F_SEND | F_CANCEL | F_CLOSING) == 0
            && conn.ws & W_CTRL_SEND == 0
        {
            conn.flags |= F_CLOSING;
            let e = opcode::Close::new(Fixed(slot))
                .build()
                .user_data(ud(OP_CLOSE, slot));
            self.push(&[e]);
        }
    }
}
