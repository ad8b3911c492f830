//! The shard loop: one epoll instance, the shard's own listener in it, every connection registered once,
//! edge-triggered, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`. Each turn: wait (at most until the connection
//! machine's next deadline or the acceptor's pause), hand edges to the connections, carry out the
//! machine's actions, let its clocks run, accept, flush counters about once a second, watch for
//! shutdown. Policy lives in the machine; this crate only makes syscalls and reports what they did.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ringhold_core::shared::log_second;
use ringhold_core::{Action, EngineConfig, Flush, Id, Machine, RejectReason, ShardSpec, Shared};
use tracing::{debug, warn};

use crate::accept::{Acceptor, Step};
use crate::buffers::Buffers;
use crate::conn::{self, bit};
use crate::sys::{self, Epoll};
use crate::timers::{self, Clock};

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
    machine: Machine,
    bufs: Buffers,
    /// Connections to drive again without waiting for an edge (out of read budget).
    again: Vec<Id>,
    /// The `again` list being worked through (swapped with `again` each turn).
    again_work: Vec<Id>,
    events: Vec<libc::epoll_event>,
    clock: Clock,
    now_ms: u64,
    config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    flush: Flush,
    last_flush_ms: u64,
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
        let acceptor = Acceptor::new(id, listener)?;
        epoll.add(
            acceptor.fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            LISTENER,
        )?;
        let mut machine = Machine::new(&config, shared.clone());
        machine.set_wall_clock(sys::wall_second());
        let bufs = Buffers::new(
            config.buffers,
            config.buffer_size,
            machine.initial_buffers(),
        )?;
        debug!(
            "shard {id}: epoll engine, {} buffers of {} B",
            bufs.total(),
            bufs.size(),
        );
        Ok(ShardLoop {
            id,
            epoll,
            acceptor: Some(acceptor),
            machine,
            bufs,
            again: Vec::new(),
            again_work: Vec::new(),
            events: sys::event_buffer(EVENTS),
            now_ms: clock.now_ms(),
            clock,
            config,
            shared,
            flush,
            last_flush_ms: 0,
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
            self.now_ms = self.clock.now_ms();
            if !self.machine.draining() && self.shared.shutting_down() {
                self.begin_drain();
            }
            if self.machine.finished() {
                break;
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
            self.now_ms = self.clock.now_ms();
            // Before anything this turn answers: `Date` shows the current second.
            self.machine.set_wall_clock(sys::wall_second());
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

            self.machine.tick(self.now_ms);
            self.apply();
            if self
                .acceptor
                .as_ref()
                .is_some_and(|a| a.can_accept(self.now_ms))
            {
                self.accept_all()?;
            }
            self.run_again();
            if self.now_ms.saturating_sub(self.last_flush_ms) >= 1000 {
                self.flush_counters();
            }
        }
        Ok(())
    }

    fn poll_timeout(&self) -> i32 {
        if !self.again.is_empty() {
            return 0;
        }
        timers::poll_timeout(
            self.now_ms,
            MAX_WAIT_MS,
            [
                self.machine.next_deadline(),
                self.acceptor.as_ref().and_then(Acceptor::deadline),
            ],
        )
    }

    fn on_event(&mut self, bits: u32, data: u64) -> io::Result<()> {
        if data == LISTENER {
            if let Some(a) = &mut self.acceptor {
                a.ready = true;
                if a.can_accept(self.now_ms) {
                    return self.accept_all();
                }
            }
            return Ok(());
        }
        let (fd, gen) = untoken(data);
        let id = Id { idx: fd, gen };
        if self.machine.conn_mut(fd, gen).is_none() {
            return Ok(()); // The connection this event was for is gone.
        }
        if bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            let err = sys::so_error(fd as RawFd)
                .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO));
            if err != 0 {
                self.machine.failed(fd, gen, err);
                self.apply();
                return Ok(());
            }
        }
        let Some(c) = self.machine.conn_mut(fd, gen) else {
            return Ok(());
        };
        if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            c.io |= bit::READABLE;
        }
        if bits & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            c.io |= bit::RDHUP;
        }
        if bits & (libc::EPOLLOUT | libc::EPOLLHUP) as u32 != 0 {
            c.io |= bit::WRITABLE;
        }
        self.drive(id);
        self.apply();
        Ok(())
    }

    fn drive(&mut self, id: Id) {
        conn::drive(
            &mut self.machine,
            &mut self.bufs,
            &mut self.again,
            id,
            self.now_ms,
        );
    }

    /// Carries out every action the machine queued (driving a connection may queue more).
    fn apply(&mut self) {
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::Recv(id) => self.drive(id),
                Action::StopRecv(_) => {} // reads check `wants_read` before each recv
                Action::Send(id) => {
                    if let Some(c) = self.machine.conn_mut(id.idx, id.gen) {
                        c.io |= bit::SEND_WANTED;
                    }
                    self.drive(id);
                }
                Action::ShutdownWrite(id) => {
                    if let Err(e) = sys::shutdown_write(id.idx as RawFd) {
                        if e.raw_os_error() != Some(libc::ENOTCONN) {
                            self.machine.failed(
                                id.idx,
                                id.gen,
                                e.raw_os_error().unwrap_or(libc::EIO),
                            );
                        }
                    }
                }
                Action::Provide { from, count } => self.bufs.provide(from, count),
                Action::Abort(id) => {
                    // An RST: the kernel drops what the peer will never read.
                    let _ = sys::set_linger_zero(id.idx as RawFd);
                    // SAFETY: as for `Close` below.
                    drop(unsafe { sys::take_owned(id.idx as RawFd) });
                    self.machine.released(&mut self.bufs, id.idx, id.gen);
                }
                Action::Close(id) => {
                    // SAFETY: a live slot owns the descriptor equal to its index (see `admit`); the
                    // machine asks for its close once, and the slot is released right after, so
                    // nothing uses or closes this descriptor again.
                    drop(unsafe { sys::take_owned(id.idx as RawFd) });
                    self.machine.released(&mut self.bufs, id.idx, id.gen);
                }
            }
        }
    }

    /// Accepts until the backlog is empty or accepting pauses.
    fn accept_all(&mut self) -> io::Result<()> {
        let Some(mut acc) = self.acceptor.take() else {
            return Ok(());
        };
        let res = loop {
            if !acc.can_accept(self.now_ms) {
                break Ok(());
            }
            match acc.next(self.now_ms, &mut self.machine.counters, &self.shared) {
                Ok(Step::Socket(sock)) => self.admit(sock),
                Ok(Step::Next) => {}
                Ok(Step::Stop) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.acceptor = Some(acc);
        res
    }

    /// Admits (or refuses) a socket the listener handed over: the machine decides.
    fn admit(&mut self, sock: OwnedFd) {
        let idx = sock.as_raw_fd() as u32;
        let gen = match self.machine.accept(idx, self.now_ms) {
            Ok(gen) => gen,
            Err(reason) => {
                if reason == RejectReason::MaxConnections && self.shared.log_allowed(log_second()) {
                    warn!(
                        "shard {}: --max-connections {} reached, refusing new connections",
                        self.id,
                        self.shared.max_connections()
                    );
                }
                return; // `sock` is closed here
            }
        };
        // From here on the slot owns the descriptor; the machine's `Close` takes it back.
        let raw = sock.into_raw_fd();
        let setup = sys::set_nodelay(raw)
            .and_then(|()| match &self.config.keepalive {
                Some(k) => sys::set_keepalive(raw, k),
                None => Ok(()),
            })
            .and_then(|()| self.epoll.add(raw, CONN_EVENTS, token(idx, gen)));
        if let Err(e) = setup {
            debug!(
                "shard {}: setting up an accepted socket failed: {e}",
                self.id
            );
            self.machine
                .failed(idx, gen, e.raw_os_error().unwrap_or(libc::EIO));
        }
        self.apply();
    }

    fn run_again(&mut self) {
        let mut work = std::mem::take(&mut self.again_work);
        std::mem::swap(&mut work, &mut self.again);
        for id in work.drain(..) {
            self.drive(id);
            self.apply();
        }
        self.again_work = work;
    }

    /// Shutdown: stop accepting (refuse what waits in the backlog, close the listener); the machine
    /// closes every connection gracefully and the rest at the deadline.
    fn begin_drain(&mut self) {
        if let Some(mut acc) = self.acceptor.take() {
            let _ = self.epoll.delete(acc.fd());
            acc.refuse_backlog(&mut self.machine.counters, SHUTDOWN_REFUSE_MAX);
        }
        debug!(
            "shard {}: draining {} connections",
            self.id,
            self.machine.live()
        );
        self.machine.shutdown(self.now_ms);
        self.apply();
    }

    /// Flushes the counters (about once a second).
    fn flush_counters(&mut self) {
        self.last_flush_ms = self.now_ms;
        let c = self.machine.counters();
        (self.flush)(c);
    }
}

impl Drop for ShardLoop {
    /// Closes what is still open if `run` failed (after a normal return nothing is).
    fn drop(&mut self) {
        for id in self.machine.live_ids() {
            // SAFETY: as in `apply`: the live slot owned this descriptor and is released right after.
            drop(unsafe { sys::take_owned(id.idx as RawFd) });
            self.machine.released(&mut self.bufs, id.idx, id.gen);
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
