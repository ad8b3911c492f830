//! Driving one connection: send what its chain holds, then read while it may, as the engine contract in
//! `ringhold-core` says. Edge-triggered, so the connection's `READABLE` / `WRITABLE` flags remember what
//! the last edges said until a read or send comes back with EAGAIN (or short).
//!
//! Everything here works on the connection's `Conn` and the shard's [`Io`]; closing (which frees the
//! slot and the descriptor) is left to the caller, who gets the reason back.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use ringhold_core::bucket::BucketSpec;
use ringhold_core::conn::flag;
use ringhold_core::protocol::{Protocol, Verdict};
use ringhold_core::{CloseReason, Conn, EngineConfig, ShardCounters};

use crate::buffers::Buffers;
use crate::sys;
use crate::timers::{ceil_ms, Throttles};

/// Engine-private flag bit: the peer shut down its side (EPOLLRDHUP/EPOLLHUP seen), so a short read no
/// longer means "drained": keep reading until the end of stream shows up.
pub const RDHUP: u16 = 1 << 15;
const _: () = assert!(RDHUP > flag::WRITABLE && RDHUP > flag::CANCELING);

/// Reads one connection may do per turn before others get theirs (the rest waits in `Io::again`).
const READ_BUDGET: u32 = 32;

/// The per-connection limits, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_queued: u16,
    pub rate: Option<BucketSpec>,
    pub msgs: Option<BucketSpec>,
    pub check_every: u16,
}

impl Limits {
    pub fn new(c: &EngineConfig) -> Limits {
        Limits {
            max_queued: c.max_queued_buffers.max(1),
            rate: c.rate_limit,
            msgs: c.message_rate,
            check_every: c.check_every.max(1),
        }
    }
}

/// What the shard lends a connection while driving it.
pub struct Io {
    pub buffers: Buffers,
    pub counters: ShardCounters,
    pub protocol: Protocol,
    pub limits: Limits,
    pub throttles: Throttles,
    /// Connections waiting for a free buffer, oldest first (`(fd, gen)`; stale entries are skipped).
    pub waitq: VecDeque<(u32, u32)>,
    /// Connections to drive again without waiting for an edge (resumed, or out of read budget).
    pub again: Vec<(u32, u32)>,
    /// Idle-wheel tick now.
    pub now_tick: u32,
    /// Shard clock now.
    pub now_ms: u64,
    /// Shutting down: no more reads; close each connection once its chain is flushed.
    pub draining: bool,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Sends and reads for connection `fd` until it must wait for an edge, a buffer or a timer. Returns
/// the reason to close it, if it must be closed now.
pub fn drive(c: &mut Conn, fd: u32, io: &mut Io) -> Option<CloseReason> {
    let raw = fd as RawFd;
    let mut budget = READ_BUDGET;
    loop {
        // Send from the front of the chain; recycle each buffer the moment it is fully sent.
        while let Some((bid, off, len)) = c.chain.front(&io.buffers.links) {
            if !c.has(flag::WRITABLE) {
                c.set(flag::SEND_PENDING);
                break;
            }
            match sys::send(raw, io.buffers.bytes(bid, off, len)) {
                Ok(n) => {
                    io.counters.bytes_sent += n as u64;
                    if let Some(done) = c.chain.consume(&mut io.buffers.links, n as u32) {
                        io.buffers.put(done);
                        c.queued -= 1;
                    }
                    if (n as u32) < len {
                        // The socket's send buffer is full: wait for EPOLLOUT.
                        c.clear(flag::WRITABLE);
                        c.set(flag::SEND_PENDING);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.clear(flag::WRITABLE);
                    c.set(flag::SEND_PENDING);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(CloseReason::from_errno(errno(&e))),
            }
        }
        if c.chain.is_empty() {
            c.clear(flag::SEND_PENDING | flag::BACKPRESSURE);
            if c.has(flag::PEER_FIN) {
                return Some(CloseReason::PeerClosed);
            }
            if io.draining {
                return Some(CloseReason::Shutdown);
            }
        }

        if !c.has(flag::READABLE) || c.read_blocked() || io.draining {
            return None;
        }
        if budget == 0 {
            io.again.push((fd, c.gen));
            return None;
        }
        budget -= 1;
        let Some(bid) = io.buffers.take() else {
            io.counters.buffer_exhausted += 1;
            c.set(flag::WAIT_BUFFER);
            io.waitq.push_back((fd, c.gen));
            return None;
        };
        match sys::recv(raw, io.buffers.buf_mut(bid)) {
            Ok(0) => {
                io.buffers.put(bid);
                c.clear(flag::READABLE);
                c.set(flag::PEER_FIN);
            }
            Ok(n) => {
                if let Some(reason) = received(c, fd, bid, n, io) {
                    return Some(reason);
                }
            }
            Err(e) => {
                io.buffers.put(bid);
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        c.clear(flag::READABLE);
                        return None;
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => return Some(CloseReason::from_errno(errno(&e))),
                }
            }
        }
    }
}

/// `n > 0` bytes arrived in buffer `bid`: queue them for the echo, apply backpressure and rate limits.
fn received(c: &mut Conn, fd: u32, bid: u16, n: usize, io: &mut Io) -> Option<CloseReason> {
    io.counters.bytes_received += n as u64;
    c.last_active = io.now_tick;
    if n < io.buffers.size() && !c.has(RDHUP) {
        // A short read emptied the socket; the next byte to arrive raises a new edge.
        c.clear(flag::READABLE);
    }
    match io.protocol.on_input(io.buffers.bytes(bid, 0, n as u32)) {
        Verdict::Echo => {}
        Verdict::Close => {
            io.buffers.put(bid);
            return Some(CloseReason::Error);
        }
    }
    c.chain.push(&mut io.buffers.links, bid, n as u32);
    c.queued += 1;
    if c.queued >= io.limits.max_queued {
        c.set(flag::BACKPRESSURE);
    }
    if let Some(pause) = rate_check(c, n, &io.limits, io.now_ms as u32) {
        c.set(flag::THROTTLED);
        io.counters.pauses += 1;
        io.counters.throttled += 1;
        io.throttles.push(io.now_ms + ceil_ms(pause), fd, c.gen);
    }
    None
}

/// Takes `n` bytes and one read from the connection's buckets; every `check_every` reads, returns the
/// pause the buckets ask for (the longer of the two), if any.
pub fn rate_check(c: &mut Conn, n: usize, limits: &Limits, now_ms: u32) -> Option<Duration> {
    if limits.rate.is_none() && limits.msgs.is_none() {
        return None;
    }
    let mut pause = None;
    if let Some(spec) = &limits.rate {
        pause = pause.max(c.bytes_bucket.take(spec, now_ms, n as f64));
    }
    if let Some(spec) = &limits.msgs {
        pause = pause.max(c.msg_bucket.take(spec, now_ms, 1.0));
    }
    c.reads_since_check += 1;
    if c.reads_since_check < limits.check_every {
        return None;
    }
    c.reads_since_check = 0;
    pause
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringhold_core::bucket::Bucket;

    fn limits(rate: Option<BucketSpec>, msgs: Option<BucketSpec>, check_every: u16) -> Limits {
        Limits {
            max_queued: 8,
            rate,
            msgs,
            check_every,
        }
    }

    #[test]
    fn no_limits_no_pause() {
        let mut c = Conn::default();
        let l = limits(None, None, 1);
        for _ in 0..1000 {
            assert_eq!(rate_check(&mut c, 1 << 20, &l, 0), None);
        }
    }

    #[test]
    fn byte_limit_pauses_by_debt() {
        let spec = BucketSpec {
            rate: 1000.0,
            burst: 1000.0,
        };
        let mut c = Conn {
            bytes_bucket: Bucket::full(&spec, 0),
            ..Conn::default()
        };
        let l = limits(Some(spec), None, 1);
        assert_eq!(rate_check(&mut c, 600, &l, 0), None);
        // 400 left, 900 taken: 500 in debt = 500 ms at 1000 B/s.
        assert_eq!(
            rate_check(&mut c, 900, &l, 0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(rate_check(&mut c, 0, &l, 500), None);
    }

    #[test]
    fn checks_only_every_n_reads_and_takes_the_longer_pause() {
        let bytes = BucketSpec {
            rate: 1000.0,
            burst: 100.0,
        };
        let msgs = BucketSpec {
            rate: 1.0,
            burst: 2.0,
        };
        let mut c = Conn {
            bytes_bucket: Bucket::full(&bytes, 0),
            msg_bucket: Bucket::full(&msgs, 0),
            ..Conn::default()
        };
        let l = limits(Some(bytes), Some(msgs), 3);
        // Reads 1 and 2 go into debt but are not acted on.
        assert_eq!(rate_check(&mut c, 100, &l, 0), None);
        assert_eq!(rate_check(&mut c, 100, &l, 0), None);
        // Read 3: bytes debt 200 → 200 ms; messages debt 1 → 1 s. The longer wins.
        assert_eq!(rate_check(&mut c, 100, &l, 0), Some(Duration::from_secs(1)));
        assert_eq!(c.reads_since_check, 0);
    }

    #[test]
    fn limits_are_clamped() {
        let cfg = EngineConfig {
            max_queued_buffers: 0,
            check_every: 0,
            ..EngineConfig::default()
        };
        let l = Limits::new(&cfg);
        assert_eq!((l.max_queued, l.check_every), (1, 1));
    }
}
