//! The shard loop: one io_uring, one listener, one buffer ring, one slot table, one idle wheel.
//!
//! Operation rules (see ringhold-core's README for the contract both engines follow):
//! - Multishot accept; without `IORING_CQE_F_MORE` it is re-armed (after 100 ms for resource errors, so a
//!   full table never makes the shard spin). With `--max-conn-rate`, single-shot accepts gated by a
//!   token bucket, so that connections wait in the backlog instead of being accepted and closed.
//! - Multishot receive with buffer select; without `F_MORE` it is re-armed unless reading is blocked
//!   (backpressure, throttle, no buffers, FIN, closing). ENOBUFS is counted and the connection waits for
//!   a buffer to come back: no spinning. With `--rate-limit`/`--message-rate`, single-shot receives
//!   (still buffer select), so that a pause stops reading at once, as on epoll.
//! - One send in flight per connection, from the head of its chain; short sends resume.
//! - Close: cancel the receive, wait until nothing is in flight, give the chain's buffers back, close
//!   the descriptor; the slot is freed when that close completes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::squeue::{self, Entry};
use io_uring::types::{DestinationSlot, Fd, Fixed};
use io_uring::{cqueue, opcode, IoUring, SubmissionQueue, Submitter};
use ringhold_core::bucket::Bucket;
use ringhold_core::conn::flag;
use ringhold_core::pool::Links;
use ringhold_core::protocol::{Protocol, Verdict};
use ringhold_core::slab::Slots;
use ringhold_core::wheel::{Check, IdleWheel};
use ringhold_core::{
    CloseReason, EngineConfig, Flush, RejectReason, ShardCounters, ShardSpec, Shared,
};
use tracing::{debug, info, warn};

use crate::bufring::BufRing;
use crate::ring;
use crate::token::{Op, Token};

/// Loop wake-up when there is no idle timeout (metrics flush, shutdown check).
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Re-arm delay after an accept failed for lack of a resource (fds, table slots, memory).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const DRAIN_SCAN_EVERY: Duration = Duration::from_millis(20);

pub struct Shard {
    // Field order matters: the ring (which holds the registered buffer ring) drops before `st.bufs`.
    ring: IoUring,
    st: State,
}

struct State {
    id: usize,
    listener: TcpListener,
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    flush: Flush,
    protocol: Protocol,
    bufs: BufRing,
    links: Links,
    slots: Slots,
    wheel: Option<IdleWheel>,
    counters: ShardCounters,
    direct: bool,
    start: Instant,
    /// setsockopt values; their addresses are handed to the kernel, so they live in a Box.
    sockopt_vals: Box<[libc::c_int; 4]>,
    sockopt_supported: bool,
    accept_armed: bool,
    accept_resume_at: Option<Instant>,
    accept_bucket: Option<Bucket>,
    refused_in_flight: u32,
    buffer_waiters: VecDeque<(u32, u32)>,
    throttled: BinaryHeap<Reverse<(u64, u32, u32)>>,
    expired: Vec<(u32, u32)>,
    drain_deadline: Option<Instant>,
    last_drain_scan: Instant,
    last_flush: Instant,
}

/// The submission side: SQ plus submitter, with "SQ full ⇒ submit and retry".
struct Io<'a> {
    sq: SubmissionQueue<'a>,
    sub: Submitter<'a>,
    submits: u64,
}

impl Io<'_> {
    fn push(&mut self, e: Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE this shard builds points only at memory that outlives the operation:
            // the buffer ring's memory (owned by the shard, dropped after the ring), the boxed setsockopt
            // values, or nothing.
            if unsafe { self.sq.push(&e) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        self.sq.sync();
        self.submits += self.sq.len() as u64;
        match self.sub.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        self.sq.sync();
        Ok(())
    }
}

macro_rules! with_fd {
    ($direct:expr, $idx:expr, |$f:ident| $body:expr) => {
        if $direct {
            let $f = Fixed($idx);
            $body
        } else {
            let $f = Fd($idx as i32);
            $body
        }
    };
}

impl Shard {
    pub fn new(spec: ShardSpec) -> io::Result<Shard> {
        let ShardSpec {
            id,
            listener,
            config: cfg,
            shared,
            flush,
        } = spec;
        let (ring, _setup) = ring::build(id)?;
        let bufs = BufRing::new(cfg.buffers, cfg.buffer_size, 0)?;
        bufs.register(&ring.submitter())?;
        let mut direct = cfg.direct_descriptors;
        if direct {
            if let Err(e) = ring.submitter().register_files_sparse(cfg.fixed_files) {
                match e.raw_os_error() {
                    Some(libc::EINVAL) => {
                        warn!("shard {id}: this kernel has no sparse fixed-file tables ({e}); using plain fds");
                        direct = false;
                    }
                    _ => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "cannot register {} fixed-file slots: {e} (each table is capped by the \
                                 RLIMIT_NOFILE soft limit: lower --fixed-files or raise the limit)",
                                cfg.fixed_files
                            ),
                        ))
                    }
                }
            }
        }
        let now = Instant::now();
        let ka = cfg.keepalive.unwrap_or(ringhold_core::Keepalive {
            idle: Duration::ZERO,
            interval: Duration::ZERO,
            count: 0,
        });
        let st = State {
            id,
            listener,
            wheel: cfg.idle_timeout.map(IdleWheel::new),
            accept_bucket: cfg.max_conn_rate.as_ref().map(|s| Bucket::full(s, 0)),
            links: Links::new(cfg.buffers),
            counters: ShardCounters {
                buffers_total: cfg.buffers as u64,
                ..Default::default()
            },
            sockopt_vals: Box::new([
                1,
                ka.idle.as_secs() as libc::c_int,
                ka.interval.as_secs() as libc::c_int,
                ka.count as libc::c_int,
            ]),
            cfg,
            shared,
            flush,
            protocol: Protocol::Echo,
            bufs,
            slots: Slots::new(),
            direct,
            start: now,
            sockopt_supported: true,
            accept_armed: false,
            accept_resume_at: None,
            refused_in_flight: 0,
            buffer_waiters: VecDeque::new(),
            throttled: BinaryHeap::new(),
            expired: Vec::new(),
            drain_deadline: None,
            last_drain_scan: now,
            last_flush: now,
        };
        Ok(Shard { ring, st })
    }

    pub fn run(mut self) -> io::Result<()> {
        let Shard { ring, st } = &mut self;
        let (sub, sq, mut cq) = ring.split();
        let mut io = Io {
            sq,
            sub,
            submits: 0,
        };
        st.arm_accept(&mut io)?;
        let mut batch: Vec<cqueue::Entry> = Vec::with_capacity(ring::CQ_ENTRIES as usize);
        let mut overflow_seen = 0;
        loop {
            io.sq.sync();
            io.submits += io.sq.len() as u64;
            ring::submit_and_wait(&io.sub, st.next_wakeup())?;
            io.sq.sync();
            cq.sync();
            let overflow = cq.overflow();
            if overflow != overflow_seen {
                warn!(
                    "shard {}: completion queue overflowed {} times (kernel kept them)",
                    st.id, overflow
                );
                overflow_seen = overflow;
            }
            batch.extend(&mut cq);
            st.counters.completions += batch.len() as u64;
            for cqe in batch.drain(..) {
                st.complete(&mut io, &cqe)?;
            }
            st.bufs.publish();
            st.counters.submits = io.submits;
            st.tick(&mut io)?;
            if st.finished() {
                break;
            }
        }
        st.publish_counters();
        (st.flush)(&st.counters);
        debug!("shard {} stopped", st.id);
        Ok(())
    }
}

impl State {
    fn now_ms(&self) -> u32 {
        self.start.elapsed().as_millis() as u32
    }

    fn wheel_now(&self) -> u32 {
        self.wheel.as_ref().map_or(0, IdleWheel::now)
    }

    fn next_wakeup(&self) -> Duration {
        let mut d = self
            .wheel
            .as_ref()
            .map_or(IDLE_TICK, |w| w.tick().min(IDLE_TICK));
        let now = Instant::now();
        if let Some(Reverse((ms, _, _))) = self.throttled.peek() {
            let at = self.start + Duration::from_millis(*ms);
            d = d.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.accept_resume_at {
            d = d.min(at.saturating_duration_since(now));
        }
        if self.drain_deadline.is_some() {
            d = d.min(DRAIN_SCAN_EVERY);
        }
        d.max(Duration::from_millis(1))
    }

    fn finished(&self) -> bool {
        self.drain_deadline.is_some()
            && self.slots.live() == 0
            && !self.accept_armed
            && self.refused_in_flight == 0
    }

    // ---------------------------------------------------------------- accept

    fn arm_accept(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if self.accept_armed || self.drain_deadline.is_some() {
            return Ok(());
        }
        let lfd = Fd(self.listener.as_raw_fd());
        let ud = Token::new(Op::Accept, 0, 0).encode();
        let e = if self.cfg.max_conn_rate.is_some() {
            let mut a = opcode::Accept::new(lfd, std::ptr::null_mut(), std::ptr::null_mut());
            if self.direct {
                a = a.file_index(Some(DestinationSlot::auto_target()));
            } else {
                a = a.flags(libc::SOCK_CLOEXEC);
            }
            a.build()
        } else {
            let a = opcode::AcceptMulti::new(lfd).allocate_file_index(self.direct);
            if self.direct {
                a.build()
            } else {
                a.flags(libc::SOCK_CLOEXEC).build()
            }
        };
        io.push(e.user_data(ud))?;
        self.accept_armed = true;
        self.accept_resume_at = None;
        Ok(())
    }

    fn on_accept(&mut self, io: &mut Io<'_>, res: i32, flags: u32) -> io::Result<()> {
        let single_shot = self.cfg.max_conn_rate.is_some();
        if single_shot || !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            let errno = -res;
            let retry_later = match errno {
                libc::ECANCELED => return Ok(()),
                libc::ENFILE if self.direct => {
                    self.counters.reject(RejectReason::TableFull);
                    self.warn_limited(format_args!(
                        "fixed-file table full ({} slots per shard): connection refused; raise \
                         --fixed-files (≤ RLIMIT_NOFILE) or --shards",
                        self.cfg.fixed_files
                    ));
                    true
                }
                libc::EMFILE | libc::ENFILE => {
                    self.counters.reject(RejectReason::FdLimit);
                    self.warn_limited(format_args!(
                        "out of file descriptors (RLIMIT_NOFILE): connection left in the backlog; raise \
                         the limit or use direct descriptors"
                    ));
                    true
                }
                libc::ENOMEM | libc::ENOBUFS => true,
                _ => {
                    debug!(
                        "shard {}: accept failed: {}",
                        self.id,
                        io::Error::from_raw_os_error(errno)
                    );
                    false
                }
            };
            if !self.accept_armed && self.drain_deadline.is_none() {
                if retry_later {
                    self.accept_resume_at = Some(Instant::now() + ACCEPT_RETRY);
                } else {
                    self.arm_accept(io)?;
                }
            }
            return Ok(());
        }
        let idx = res as u32;
        if let (Some(spec), Some(bucket)) = (self.cfg.max_conn_rate, self.accept_bucket.as_mut()) {
            bucket.take(&spec, self.start.elapsed().as_millis() as u32, 1.0);
        }
        self.admit(io, idx)?;
        if !self.accept_armed && self.drain_deadline.is_none() {
            self.rearm_accept_rate_limited(io)?;
        }
        Ok(())
    }

    /// Re-arms the accept now, or later when `--max-conn-rate`'s bucket is empty. The token is checked
    /// here and paid when a connection arrives (`on_accept`), so none is held while nobody connects.
    fn rearm_accept_rate_limited(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if let (Some(spec), Some(bucket)) = (self.cfg.max_conn_rate, self.accept_bucket.as_mut()) {
            let now_ms = self.start.elapsed().as_millis() as u32;
            if let Err(wait) = bucket.has_one(&spec, now_ms) {
                self.counters.accepts_deferred += 1;
                self.accept_resume_at = Some(Instant::now() + wait);
                return Ok(());
            }
        }
        self.arm_accept(io)
    }

    fn admit(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let reason = if self.drain_deadline.is_some() || self.shared.shutting_down() {
            Some(RejectReason::Shutdown)
        } else if !self.shared.try_admit() {
            self.warn_limited(format_args!(
                "--max-connections {} reached: connection refused",
                self.shared.max_connections()
            ));
            Some(RejectReason::MaxConnections)
        } else {
            None
        };
        let gen = match reason {
            None => match self.slots.open(idx, self.wheel_now()) {
                Some(gen) => Some(gen),
                None => {
                    // The kernel handed out a descriptor we still hold: a bug, but never fatal.
                    warn!(
                        "shard {}: descriptor {idx} accepted while its slot is live; refusing",
                        self.id
                    );
                    self.shared.release();
                    None
                }
            },
            Some(r) => {
                self.counters.reject(r);
                None
            }
        };
        let Some(gen) = gen else {
            let e = with_fd!(self.direct, idx, |f| opcode::Close::new(f).build());
            io.push(e.user_data(Token::new(Op::CloseRefused, 0, idx).encode()))?;
            self.refused_in_flight += 1;
            return Ok(());
        };
        self.counters.accepts += 1;
        self.counters.active += 1;
        let now_ms = self.now_ms();
        let c = self.slots.get_mut(idx, gen).expect("slot just opened");
        if let Some(s) = &self.cfg.rate_limit {
            c.bytes_bucket = Bucket::full(s, now_ms);
        }
        if let Some(s) = &self.cfg.message_rate {
            c.msg_bucket = Bucket::full(s, now_ms);
        }
        if let Some(w) = self.wheel.as_mut() {
            w.schedule(idx, gen, w.now());
        }
        if self.sockopt_supported {
            self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_NODELAY, 0)?;
            if self.cfg.keepalive.is_some() {
                self.sockopt(io, idx, gen, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
            }
        }
        self.arm_recv(io, idx)
    }

    fn sockopt(
        &mut self,
        io: &mut Io<'_>,
        idx: u32,
        gen: u32,
        level: i32,
        name: i32,
        val: usize,
    ) -> io::Result<()> {
        let ptr = &self.sockopt_vals[val] as *const libc::c_int as *const libc::c_void;
        let len = std::mem::size_of::<libc::c_int>() as u32;
        let e = with_fd!(self.direct, idx, |f| opcode::SetSockOpt::new(
            f,
            level as u32,
            name as u32,
            ptr,
            len
        )
        .build());
        io.push(e.user_data(Token::new(Op::SockOpt, gen, idx).encode()))?;
        if let Some(c) = self.slots.get_mut(idx, gen) {
            c.inflight += 1;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- receive

    fn arm_recv(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let bgid = self.bufs.bgid();
        let Some(c) = self.slots.live_mut(idx) else {
            return Ok(());
        };
        if c.has(flag::RECV_ARMED) || c.read_blocked() {
            return Ok(());
        }
        let ud = Token::new(Op::Recv, c.gen, idx).encode();
        c.set(flag::RECV_ARMED);
        c.inflight += 1;
        let e = if self.cfg.rate_limit.is_some() || self.cfg.message_rate.is_some() {
            // Rate limits need a single-shot receive: a multishot one keeps filling buffers until its
            // cancel lands, so a pause would take effect only after ~100 more reads (measured: 26
            // pauses of ~190 KiB each for 5 MiB at 1 MiB/s) and --check-every would mean nothing.
            let len = self.cfg.buffer_size;
            with_fd!(self.direct, idx, |f| opcode::Recv::new(
                f,
                std::ptr::null_mut(),
                len
            )
            .buf_group(bgid)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT))
        } else {
            with_fd!(self.direct, idx, |f| opcode::RecvMulti::new(f, bgid)
                .build())
        };
        io.push(e.user_data(ud))
    }

    /// Cancels the multishot receive (backpressure, throttle, close).
    fn stop_recv(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let Some(c) = self.slots.live_mut(idx) else {
            return Ok(());
        };
        if !c.has(flag::RECV_ARMED) || c.has(flag::CANCELING) {
            return Ok(());
        }
        c.set(flag::CANCELING);
        c.inflight += 1;
        let target = Token::new(Op::Recv, c.gen, idx).encode();
        let e = opcode::AsyncCancel::new(target).build();
        io.push(e.user_data(Token::new(Op::Cancel, c.gen, idx).encode()))
    }

    fn on_recv(&mut self, io: &mut Io<'_>, t: Token, res: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.slots.get_mut(t.slot, t.gen) else {
            // Stale: the buffer still goes back to the ring.
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            return Ok(());
        };
        if !more {
            c.clear(flag::RECV_ARMED | flag::CANCELING);
            c.inflight -= 1;
        }
        if res > 0 {
            let n = res as u32;
            let Some(bid) = bid else {
                return self.close(io, t.slot, CloseReason::Error);
            };
            self.counters.bytes_received += n as u64;
            if c.has(flag::CLOSING) {
                self.bufs.recycle(bid);
            } else {
                c.last_active = self.wheel.as_ref().map_or(0, IdleWheel::now);
                match self.protocol.on_input(self.bufs.bytes(bid, n)) {
                    Verdict::Echo => {
                        c.chain.push(&mut self.links, bid, n);
                        c.queued += 1;
                    }
                    Verdict::Close => {
                        self.bufs.recycle(bid);
                        return self.close(io, t.slot, CloseReason::Error);
                    }
                }
                let mut stop = false;
                if c.queued >= self.cfg.max_queued_buffers {
                    c.set(flag::BACKPRESSURE);
                    stop = true;
                }
                if self.cfg.rate_limit.is_some() || self.cfg.message_rate.is_some() {
                    let now_ms = self.start.elapsed().as_millis() as u32;
                    let p1 = self
                        .cfg
                        .rate_limit
                        .as_ref()
                        .and_then(|s| c.bytes_bucket.take(s, now_ms, n as f64));
                    let p2 = self
                        .cfg
                        .message_rate
                        .as_ref()
                        .and_then(|s| c.msg_bucket.take(s, now_ms, 1.0));
                    c.reads_since_check += 1;
                    if c.reads_since_check >= self.cfg.check_every {
                        c.reads_since_check = 0;
                        if let Some(p) = p1.max(p2) {
                            if !c.has(flag::THROTTLED) {
                                c.set(flag::THROTTLED);
                                self.counters.pauses += 1;
                                self.counters.throttled += 1;
                                let at = now_ms as u64 + p.as_millis() as u64 + 1;
                                self.throttled.push(Reverse((at, t.slot, t.gen)));
                            }
                            stop = true;
                        }
                    }
                }
                if stop {
                    self.stop_recv(io, t.slot)?;
                }
                self.start_send(io, t.slot)?;
            }
        } else if res == 0 {
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            c.set(flag::PEER_FIN);
            if c.done_after_fin() {
                return self.close(io, t.slot, CloseReason::PeerClosed);
            }
        } else {
            match -res {
                libc::ENOBUFS => {
                    self.counters.buffer_exhausted += 1;
                    if !c.has(flag::WAIT_BUFFER) {
                        c.set(flag::WAIT_BUFFER);
                        self.buffer_waiters.push_back((t.slot, t.gen));
                    }
                }
                libc::ECANCELED => {}
                errno => return self.close(io, t.slot, CloseReason::from_errno(errno)),
            }
        }
        if !more {
            self.after_op(io, t.slot, t.gen)?;
            self.arm_recv(io, t.slot)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- send

    fn start_send(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let Some(c) = self.slots.live_mut(idx) else {
            return Ok(());
        };
        if c.has(flag::SEND_PENDING | flag::CLOSING) {
            return Ok(());
        }
        let Some((bid, off, len)) = c.chain.front(&self.links) else {
            return Ok(());
        };
        c.set(flag::SEND_PENDING);
        c.inflight += 1;
        let ud = Token::new(Op::Send, c.gen, idx).encode();
        let ptr = self.bufs.ptr(bid, off, len);
        let e = with_fd!(self.direct, idx, |f| opcode::Send::new(f, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build());
        io.push(e.user_data(ud))
    }

    fn on_send(&mut self, io: &mut Io<'_>, t: Token, res: i32) -> io::Result<()> {
        let Some(c) = self.slots.get_mut(t.slot, t.gen) else {
            return Ok(());
        };
        c.clear(flag::SEND_PENDING);
        c.inflight -= 1;
        if c.has(flag::CLOSING) {
            return self.after_op(io, t.slot, t.gen);
        }
        if res <= 0 {
            let reason = if res == 0 {
                CloseReason::Error
            } else {
                CloseReason::from_errno(-res)
            };
            return self.close(io, t.slot, reason);
        }
        let n = res as u32;
        self.counters.bytes_sent += n as u64;
        if let Some(bid) = c.chain.consume(&mut self.links, n) {
            self.bufs.recycle(bid);
            c.queued -= 1;
        }
        if !c.chain.is_empty() {
            return self.start_send(io, t.slot);
        }
        if c.has(flag::PEER_FIN) {
            return self.close(io, t.slot, CloseReason::PeerClosed);
        }
        if c.has(flag::BACKPRESSURE) && c.queued < self.cfg.max_queued_buffers {
            c.clear(flag::BACKPRESSURE);
            self.arm_recv(io, t.slot)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- close

    fn close(&mut self, io: &mut Io<'_>, idx: u32, reason: CloseReason) -> io::Result<()> {
        let Some(c) = self.slots.live_mut(idx) else {
            return Ok(());
        };
        if c.has(flag::CLOSING) {
            return Ok(());
        }
        c.set(flag::CLOSING);
        let gen = c.gen;
        if c.has(flag::THROTTLED) {
            self.counters.throttled -= 1;
        }
        self.counters.close(reason);
        self.shared.release();
        self.stop_recv(io, idx)?;
        self.cancel_send(io, idx)?;
        self.after_op(io, idx, gen)
    }

    /// Cancels a send that may never complete (a peer that stopped reading), so a close can proceed.
    fn cancel_send(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let Some(c) = self.slots.live_mut(idx) else {
            return Ok(());
        };
        if !c.has(flag::SEND_PENDING) {
            return Ok(());
        }
        c.inflight += 1;
        let target = Token::new(Op::Send, c.gen, idx).encode();
        let e = opcode::AsyncCancel::new(target).build();
        io.push(e.user_data(Token::new(Op::Cancel, c.gen, idx).encode()))
    }

    /// Called after an operation of a connection ended: a closing connection with nothing in flight
    /// gives its buffers back and closes its descriptor.
    fn after_op(&mut self, io: &mut Io<'_>, idx: u32, gen: u32) -> io::Result<()> {
        let Some(c) = self.slots.get_mut(idx, gen) else {
            return Ok(());
        };
        if !c.has(flag::CLOSING) || c.inflight > 0 {
            return Ok(());
        }
        while let Some(bid) = c.chain.pop(&mut self.links) {
            self.bufs.recycle(bid);
        }
        c.queued = 0;
        c.inflight = 1; // the close itself; the slot is freed when it completes
        let e = with_fd!(self.direct, idx, |f| opcode::Close::new(f).build());
        io.push(e.user_data(Token::new(Op::Close, gen, idx).encode()))
    }

    // ---------------------------------------------------------------- completions

    fn complete(&mut self, io: &mut Io<'_>, cqe: &cqueue::Entry) -> io::Result<()> {
        let Some(t) = Token::decode(cqe.user_data()) else {
            return Ok(());
        };
        let res = cqe.result();
        match t.op {
            Op::Accept => self.on_accept(io, res, cqe.flags()),
            Op::Recv => self.on_recv(io, t, res, cqe.flags()),
            Op::Send => self.on_send(io, t, res),
            Op::SockOpt | Op::Cancel => {
                if t.op == Op::SockOpt && res < 0 {
                    if matches!(-res, libc::EOPNOTSUPP | libc::EINVAL) && self.sockopt_supported {
                        self.sockopt_supported = false;
                        warn!("shard {}: io_uring setsockopt unsupported here ({}); TCP_NODELAY/keepalive not set", self.id, io::Error::from_raw_os_error(-res));
                    } else {
                        debug!(
                            "shard {}: setsockopt failed: {}",
                            self.id,
                            io::Error::from_raw_os_error(-res)
                        );
                    }
                }
                if let Some(c) = self.slots.get_mut(t.slot, t.gen) {
                    c.inflight -= 1;
                }
                self.after_op(io, t.slot, t.gen)
            }
            Op::Close => {
                if res < 0 {
                    debug!(
                        "shard {}: close failed: {}",
                        self.id,
                        io::Error::from_raw_os_error(-res)
                    );
                }
                if self.slots.get(t.slot, t.gen).is_some() {
                    self.slots.free(t.slot);
                }
                Ok(())
            }
            Op::CloseRefused => {
                self.refused_in_flight -= 1;
                Ok(())
            }
            Op::CancelAccept => Ok(()),
        }
    }

    // ---------------------------------------------------------------- timers

    fn tick(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        let now = Instant::now();
        // Flush before the timers below run: the loop mostly wakes because a throttled connection's
        // pause is over, so a flush after resuming it would almost always report it as not throttled
        // (its next read, which pauses it again, completes only in the next round).
        if now - self.last_flush >= FLUSH_EVERY {
            self.last_flush = now;
            self.publish_counters();
            (self.flush)(&self.counters);
        }
        // Idle timeout.
        if let Some(w) = self.wheel.as_mut() {
            let to = w.tick_of(now - self.start);
            if to > w.now() {
                let slots = &self.slots;
                w.advance(
                    to,
                    |i, g| match slots.get(i, g) {
                        // Paused by a rate limit: we are the ones not reading, so not idle.
                        Some(c) if c.has(flag::THROTTLED) && !c.has(flag::CLOSING) => {
                            Check::LastActive(to)
                        }
                        Some(c) if !c.has(flag::CLOSING) => Check::LastActive(c.last_active),
                        _ => Check::Gone,
                    },
                    &mut self.expired,
                );
                let expired = std::mem::take(&mut self.expired);
                for &(i, g) in &expired {
                    if self.slots.get(i, g).is_some() {
                        self.close(io, i, CloseReason::IdleTimeout)?;
                    }
                }
                self.expired = expired;
                self.expired.clear();
            }
        }
        // Throttled connections whose pause is over (the idle clock restarts: the pause was ours).
        let now_ms = (now - self.start).as_millis() as u64;
        let tick = self.wheel_now();
        while let Some(&Reverse((at, i, g))) = self.throttled.peek() {
            if at > now_ms {
                break;
            }
            self.throttled.pop();
            if let Some(c) = self.slots.get_mut(i, g) {
                if c.has(flag::THROTTLED) {
                    c.clear(flag::THROTTLED);
                    c.last_active = tick;
                    self.counters.throttled -= 1;
                    self.arm_recv(io, i)?;
                }
            }
        }
        // Deferred accept.
        if self.accept_resume_at.is_some_and(|at| at <= now) {
            self.accept_resume_at = None;
            self.rearm_accept_rate_limited(io)?;
        }
        // Connections waiting for a buffer: one per buffer the kernel has free.
        let mut free = self.bufs.entries() as u32 - self.links.in_use();
        while free > 0 {
            let Some((i, g)) = self.buffer_waiters.pop_front() else {
                break;
            };
            if let Some(c) = self.slots.get_mut(i, g) {
                if c.has(flag::WAIT_BUFFER) {
                    c.clear(flag::WAIT_BUFFER);
                    self.arm_recv(io, i)?;
                    free -= 1;
                }
            }
        }
        // Shutdown drain.
        if self.drain_deadline.is_none() && self.shared.shutting_down() {
            self.begin_drain(io, now)?;
        }
        if let Some(deadline) = self.drain_deadline {
            if now - self.last_drain_scan >= DRAIN_SCAN_EVERY || now >= deadline {
                self.last_drain_scan = now;
                let force = now >= deadline;
                for i in self.slots.live_indices() {
                    let Some(c) = self.slots.live_mut(i) else {
                        continue;
                    };
                    if force || (c.chain.is_empty() && !c.has(flag::SEND_PENDING)) {
                        self.close(io, i, CloseReason::Shutdown)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn begin_drain(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        info!(
            "shard {}: draining {} connections",
            self.id,
            self.slots.live()
        );
        self.drain_deadline = Some(now + self.cfg.shutdown_timeout);
        self.accept_resume_at = None;
        if self.accept_armed {
            let target = Token::new(Op::Accept, 0, 0).encode();
            let e = opcode::AsyncCancel::new(target).build();
            io.push(e.user_data(Token::new(Op::CancelAccept, 0, 0).encode()))?;
        }
        Ok(())
    }

    fn publish_counters(&mut self) {
        self.counters.buffers_total = self.bufs.entries() as u64;
        self.counters.buffers_in_use = self.links.in_use() as u64;
    }

    fn warn_limited(&self, msg: std::fmt::Arguments<'_>) {
        let now_sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.shared.log_allowed(now_sec) {
            warn!("shard {}: {msg}", self.id);
        }
    }
}
