//! The shard loop: one epoll instance, the shard's own listener in it, every connection registered once,
//! edge-triggered, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`. Each turn: wait (at most a wheel tick, sooner
//! for a throttle or accept pause), expire idle connections, handle edges, resume throttled and
//! buffer-starved connections, flush counters about once a second, watch for shutdown.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ringhold_core::bucket::Bucket;
use ringhold_core::conn::flag;
use ringhold_core::protocol::Protocol;
use ringhold_core::slab::Slots;
use ringhold_core::wheel::{Check, IdleWheel};
use ringhold_core::{
    CloseReason, EngineConfig, Flush, RejectReason, ShardCounters, ShardSpec, Shared,
};
use tracing::{debug, error, info, warn};

use crate::accept::{Acceptor, Step};
use crate::buffers::Buffers;
use crate::conn::{self, Io, Limits, RDHUP};
use crate::sys::{self, Epoll};
use crate::timers::{self, ceil_ms, log_second, Clock, Throttles};

/// epoll data of the listener. Connections use `(gen << 32) | fd` with a 24-bit generation, so their
/// data never equals this.
const LISTENER: u64 = u64::MAX;

/// What every connection is registered for, once, at accept.
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Longest epoll_wait: also how soon a shard notices shutdown.
const MAX_WAIT_MS: u64 = 250;

/// Events taken per epoll_wait.
const EVENTS: usize = 1024;

/// Connections refused from the backlog at shutdown before the listener is closed.
const SHUTDOWN_REFUSE_MAX: usize = 65_536;

/// epoll data of connection `fd` with generation `gen`.
pub fn token(fd: u32, gen: u32) -> u64 {
    ((gen as u64) << 32) | fd as u64
}

/// `(fd, gen)` of an epoll data word made by [`token`].
pub fn untoken(data: u64) -> (u32, u32) {
    (data as u32, (data >> 32) as u32)
}

/// One shard of the epoll engine: `new` on the shard's thread, then `run` until shutdown.
pub struct Shard(Box<ShardLoop>);

impl Shard {
    /// Sets up the shard: epoll instance, listener registration, buffers, spare descriptor.
    pub fn new(spec: ShardSpec) -> io::Result<Shard> {
        ShardLoop::new(spec).map(|s| Shard(Box::new(s)))
    }

    /// Serves until shutdown has drained every connection.
    pub fn run(self) -> io::Result<()> {
        self.0.run()
    }
}

struct ShardLoop {
    id: usize,
    epoll: Epoll,
    /// `None` once shutdown has begun.
    acceptor: Option<Acceptor>,
    slots: Slots,
    io: Io,
    wheel: Option<IdleWheel>,
    expired: Vec<(u32, u32)>,
    /// The `again` list being worked through (swapped with `io.again` each turn).
    again_work: Vec<(u32, u32)>,
    events: Vec<libc::epoll_event>,
    clock: Clock,
    config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    flush: Flush,
    last_flush_ms: u64,
    drain_deadline: Option<u64>,
    base_wait_ms: u64,
}

impl ShardLoop {
    fn new(spec: ShardSpec) -> io::Result<ShardLoop> {
        let ShardSpec {
            id,
            listener,
            config,
            shared,
            flush,
        } = spec;
        let clock = Clock::new();
        let epoll = Epoll::new()?;
        let listener = OwnedFd::from(listener);
        let acceptor = Acceptor::new(id, listener, config.max_conn_rate, clock.now_ms())?;
        epoll.add(
            acceptor.fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            LISTENER,
        )?;
        let buffers = Buffers::new(config.buffers, config.buffer_size)?;
        let wheel = config.idle_timeout.map(IdleWheel::new);
        let base_wait_ms = wheel
            .as_ref()
            .map_or(MAX_WAIT_MS, |w| ceil_ms(w.tick()).min(MAX_WAIT_MS));
        let counters = ShardCounters {
            buffers_total: buffers.total() as u64,
            ..ShardCounters::default()
        };
        let io = Io {
            buffers,
            counters,
            protocol: Protocol::default(),
            limits: Limits::new(&config),
            throttles: Throttles::default(),
            waitq: VecDeque::new(),
            again: Vec::new(),
            now_tick: 0,
            now_ms: clock.now_ms(),
            draining: false,
        };
        debug!(
            "shard {id}: epoll engine, {} buffers of {} B, idle wheel tick {:?}",
            io.buffers.total(),
            io.buffers.size(),
            wheel.as_ref().map(IdleWheel::tick)
        );
        Ok(ShardLoop {
            id,
            epoll,
            acceptor: Some(acceptor),
            slots: Slots::new(),
            io,
            wheel,
            expired: Vec::new(),
            again_work: Vec::new(),
            events: sys::event_buffer(EVENTS),
            clock,
            config,
            shared,
            flush,
            last_flush_ms: 0,
            drain_deadline: None,
            base_wait_ms,
        })
    }

    /// Serves until shutdown has drained every connection. Counters are flushed a last time on the way
    /// out, also when the loop fails.
    fn run(mut self) -> io::Result<()> {
        let res = self.run_loop();
        self.flush_counters();
        match &res {
            Ok(()) => debug!("shard {}: stopped", self.id),
            Err(e) => debug!("shard {}: stopped: {e}", self.id),
        }
        res
    }

    fn run_loop(&mut self) -> io::Result<()> {
        loop {
            self.io.now_ms = self.clock.now_ms();
            if !self.io.draining && self.shared.shutting_down() {
                self.begin_drain();
            }
            if let Some(deadline) = self.drain_deadline {
                if self.slots.live() == 0 {
                    break;
                }
                if self.io.now_ms >= deadline {
                    self.close_all(CloseReason::Shutdown);
                    break;
                }
            }

            let timeout = self.poll_timeout();
            let mut events = std::mem::take(&mut self.events);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    self.events = events;
                    return Err(io::Error::new(e.kind(), format!("epoll_wait failed: {e}")));
                }
            };
            self.io.now_ms = self.clock.now_ms();
            self.expire_idle();
            let mut res = Ok(());
            for ev in &events[..n] {
                let (bits, data) = (ev.events, ev.u64);
                if let Err(e) = self.on_event(bits, data) {
                    res = Err(e);
                    break;
                }
            }
            self.events = events;
            res?;

            self.resume_throttled();
            if self
                .acceptor
                .as_ref()
                .is_some_and(|a| a.can_accept(self.io.now_ms))
            {
                self.accept_all()?;
            }
            self.wake_waiters();
            self.run_again();
            if self.io.now_ms.saturating_sub(self.last_flush_ms) >= 1000 {
                self.flush_counters();
            }
        }
        Ok(())
    }

    fn poll_timeout(&self) -> i32 {
        if !self.io.again.is_empty() {
            return 0;
        }
        timers::poll_timeout(
            self.io.now_ms,
            self.base_wait_ms,
            [
                self.io.throttles.next_due(),
                self.acceptor.as_ref().and_then(Acceptor::deadline),
                self.drain_deadline,
            ],
        )
    }

    fn on_event(&mut self, bits: u32, data: u64) -> io::Result<()> {
        if data == LISTENER {
            if let Some(a) = &mut self.acceptor {
                a.ready = true;
                if a.can_accept(self.io.now_ms) {
                    return self.accept_all();
                }
            }
            return Ok(());
        }
        let (fd, gen) = untoken(data);
        if self.slots.get(fd, gen).is_none() {
            return Ok(()); // The connection this event was for is gone.
        }
        if bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            let err = sys::so_error(fd as RawFd)
                .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO));
            if err != 0 {
                self.close(fd, CloseReason::from_errno(err));
                return Ok(());
            }
        }
        let Some(c) = self.slots.get_mut(fd, gen) else {
            return Ok(());
        };
        if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            c.set(flag::READABLE);
        }
        if bits & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            c.set(RDHUP);
        }
        if bits & (libc::EPOLLOUT | libc::EPOLLHUP) as u32 != 0 {
            c.set(flag::WRITABLE);
        }
        self.drive(fd, gen);
        Ok(())
    }

    fn drive(&mut self, fd: u32, gen: u32) {
        let Some(c) = self.slots.get_mut(fd, gen) else {
            return;
        };
        if let Some(reason) = conn::drive(c, fd, &mut self.io) {
            self.close(fd, reason);
        }
    }

    /// Accepts until the backlog is empty or accepting pauses.
    fn accept_all(&mut self) -> io::Result<()> {
        let Some(mut acc) = self.acceptor.take() else {
            return Ok(());
        };
        let res = loop {
            if !acc.can_accept(self.io.now_ms) {
                break Ok(());
            }
            match acc.next(self.io.now_ms, &mut self.io.counters, &self.shared) {
                Ok(Step::Socket(sock)) => self.admit(sock),
                Ok(Step::Next) => {}
                Ok(Step::Stop) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.acceptor = Some(acc);
        res
    }

    /// Admits (or refuses) a socket the listener handed over.
    fn admit(&mut self, sock: OwnedFd) {
        let counters = &mut self.io.counters;
        if self.shared.shutting_down() {
            counters.reject(RejectReason::Shutdown);
            return;
        }
        if !self.shared.try_admit() {
            counters.reject(RejectReason::MaxConnections);
            if self.shared.log_allowed(log_second()) {
                warn!(
                    "shard {}: --max-connections {} reached, refusing new connections",
                    self.id,
                    self.shared.max_connections()
                );
            }
            return;
        }
        counters.accepts += 1;
        counters.active += 1;
        let raw = sock.as_raw_fd();
        let setup = sys::set_nodelay(raw).and_then(|()| match &self.config.keepalive {
            Some(k) => sys::set_keepalive(raw, k),
            None => Ok(()),
        });
        if let Err(e) = setup {
            debug!(
                "shard {}: setting up an accepted socket failed: {e}",
                self.id
            );
            counters.close(CloseReason::from_errno(e.raw_os_error().unwrap_or(0)));
            self.shared.release();
            return;
        }
        let idx = raw as u32;
        let now_tick = self.io.now_tick;
        let Some(gen) = self.slots.open(idx, now_tick) else {
            error!(
                "shard {}: slot {idx} is still in use by a closed connection (bug)",
                self.id
            );
            counters.close(CloseReason::Error);
            self.shared.release();
            return;
        };
        if let Some(c) = self.slots.get_mut(idx, gen) {
            let now_ms = self.io.now_ms as u32;
            if let Some(spec) = &self.io.limits.rate {
                c.bytes_bucket = Bucket::full(spec, now_ms);
            }
            if let Some(spec) = &self.io.limits.msgs {
                c.msg_bucket = Bucket::full(spec, now_ms);
            }
        }
        if let Err(e) = self.epoll.add(raw, CONN_EVENTS, token(idx, gen)) {
            warn!("shard {}: cannot add a connection to epoll: {e}", self.id);
            self.slots.free(idx);
            counters.close(CloseReason::Error);
            self.shared.release();
            return;
        }
        // From here on the slot owns the descriptor; `close` takes it back.
        let _ = sock.into_raw_fd();
        if let Some(w) = &mut self.wheel {
            w.schedule(idx, gen, now_tick);
        }
    }

    /// Closes live connection `fd`: recycles its buffers, frees the slot, closes the descriptor (which
    /// also removes it from epoll), counts the reason.
    fn close(&mut self, fd: u32, reason: CloseReason) {
        let Some(c) = self.slots.live_mut(fd) else {
            return;
        };
        while let Some(bid) = c.chain.pop(&mut self.io.buffers.links) {
            self.io.buffers.put(bid);
        }
        if c.has(flag::THROTTLED) {
            self.io.counters.throttled -= 1;
        }
        self.slots.free(fd);
        // SAFETY: a live slot owns the descriptor equal to its index (see `admit`); the slot was just
        // freed, so nothing will use or close this descriptor again.
        drop(unsafe { sys::take_owned(fd as RawFd) });
        self.io.counters.close(reason);
        self.shared.release();
    }

    fn close_all(&mut self, reason: CloseReason) {
        let live = self.slots.live_indices();
        if !live.is_empty() {
            info!(
                "shard {}: shutdown timeout ({:?}) reached, closing {} connections with unsent data",
                self.id,
                self.config.shutdown_timeout,
                live.len()
            );
        }
        for fd in live {
            self.close(fd, reason);
        }
    }

    fn expire_idle(&mut self) {
        let Some(wheel) = &mut self.wheel else { return };
        let to = wheel.tick_of(self.clock.elapsed());
        if to > wheel.now() {
            let slots = &self.slots;
            wheel.advance(
                to,
                |idx, gen| match slots.get(idx, gen) {
                    Some(c) => Check::LastActive(c.last_active),
                    None => Check::Gone,
                },
                &mut self.expired,
            );
        }
        self.io.now_tick = wheel.now();
        let mut expired = std::mem::take(&mut self.expired);
        for (fd, gen) in expired.drain(..) {
            if self.slots.get(fd, gen).is_some() {
                self.close(fd, CloseReason::IdleTimeout);
            }
        }
        self.expired = expired;
    }

    fn resume_throttled(&mut self) {
        while let Some((fd, gen)) = self.io.throttles.pop_due(self.io.now_ms) {
            if let Some(c) = self.slots.get_mut(fd, gen) {
                if c.has(flag::THROTTLED) {
                    c.clear(flag::THROTTLED);
                    self.io.counters.throttled -= 1;
                    self.io.again.push((fd, gen));
                }
            }
        }
    }

    /// Hands free buffers to the connections waiting for one, oldest first.
    fn wake_waiters(&mut self) {
        let mut free = self.io.buffers.free();
        while free > 0 {
            let Some((fd, gen)) = self.io.waitq.pop_front() else {
                break;
            };
            if let Some(c) = self.slots.get_mut(fd, gen) {
                if c.has(flag::WAIT_BUFFER) {
                    c.clear(flag::WAIT_BUFFER);
                    self.io.again.push((fd, gen));
                    free -= 1;
                }
            }
        }
    }

    fn run_again(&mut self) {
        let mut work = std::mem::take(&mut self.again_work);
        std::mem::swap(&mut work, &mut self.io.again);
        for (fd, gen) in work.drain(..) {
            self.drive(fd, gen);
        }
        self.again_work = work;
    }

    /// Shutdown: stop accepting (refuse what waits in the backlog, close the listener), stop reading, and
    /// close each connection once what it holds is echoed; `run` closes the rest at the deadline.
    fn begin_drain(&mut self) {
        self.io.draining = true;
        self.drain_deadline =
            Some(self.io.now_ms + self.config.shutdown_timeout.as_millis() as u64);
        if let Some(mut acc) = self.acceptor.take() {
            let _ = self.epoll.delete(acc.fd());
            acc.refuse_backlog(&mut self.io.counters, SHUTDOWN_REFUSE_MAX);
        }
        let live = self.slots.live_indices();
        debug!("shard {}: draining {} connections", self.id, live.len());
        for fd in live {
            if let Some(c) = self.slots.live_mut(fd) {
                self.io.again.push((fd, c.gen));
            }
        }
    }

    fn flush_counters(&mut self) {
        self.last_flush_ms = self.io.now_ms;
        let c = &mut self.io.counters;
        c.buffers_total = self.io.buffers.total() as u64;
        c.buffers_in_use = self.io.buffers.links.in_use() as u64;
        (self.flush)(c);
    }
}

impl Drop for ShardLoop {
    /// Closes what is still open if `run` failed (after a normal return nothing is).
    fn drop(&mut self) {
        for fd in self.slots.live_indices() {
            self.slots.free(fd);
            // SAFETY: as in `close`: the live slot owned this descriptor and has just been freed.
            drop(unsafe { sys::take_owned(fd as RawFd) });
            self.shared.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringhold_core::slab::GEN_MASK;

    #[test]
    fn tokens_round_trip_and_never_hit_the_listener() {
        for (fd, gen) in [(0, 0), (3, 1), (19_999, 77), (u32::MAX, GEN_MASK)] {
            let t = token(fd, gen);
            assert_eq!(untoken(t), (fd, gen));
            assert_ne!(t, LISTENER);
        }
    }
}
