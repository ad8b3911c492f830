//! Per-connection state: what a shard keeps for one idle connection, and nothing else. No buffers, no
//! heap: 40 bytes (asserted below), plus 8 bytes in the idle wheel.

use crate::bucket::Bucket;
use crate::pool::Chain;

/// Flag bits of [`Conn::flags`].
pub mod flag {
    /// The slot holds a connection.
    pub const LIVE: u16 = 1 << 0;
    /// A (multishot) receive is armed (io_uring) / the socket may have unread bytes (epoll).
    pub const RECV_ARMED: u16 = 1 << 1;
    /// A send is in flight (io_uring) / waiting for EPOLLOUT (epoll).
    pub const SEND_PENDING: u16 = 1 << 2;
    /// The peer sent FIN.
    pub const PEER_FIN: u16 = 1 << 3;
    /// Closing: no new operations; the slot is freed when `inflight` reaches 0.
    pub const CLOSING: u16 = 1 << 4;
    /// Reading is paused by backpressure (too many buffers queued).
    pub const BACKPRESSURE: u16 = 1 << 5;
    /// Reading is paused by a rate limit until the shard's throttle timer resumes it.
    pub const THROTTLED: u16 = 1 << 6;
    /// Waiting for a free buffer (ENOBUFS / empty pool).
    pub const WAIT_BUFFER: u16 = 1 << 7;
    /// A cancel of the multishot receive is in flight (io_uring).
    pub const CANCELING: u16 = 1 << 8;
    /// epoll: the socket is readable and was not drained (edge-triggered bookkeeping).
    pub const READABLE: u16 = 1 << 9;
    /// epoll: the socket is writable.
    pub const WRITABLE: u16 = 1 << 10;
}

/// One connection. `Copy` so that the slot table is a plain array.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn {
    /// Generation of the slot (24 bits used); stale completions carry an older one.
    pub gen: u32,
    /// Idle-wheel tick of the last received byte.
    pub last_active: u32,
    /// Buffers holding bytes received and not yet echoed.
    pub chain: Chain,
    /// See [`flag`].
    pub flags: u16,
    /// Buffers in `chain`.
    pub queued: u16,
    /// Reads since the last rate-limit check (`--check-every`).
    pub reads_since_check: u16,
    /// io_uring operations in flight for this connection.
    pub inflight: u8,
    /// `--rate-limit` bucket (bytes).
    pub bytes_bucket: Bucket,
    /// `--message-rate` bucket (reads).
    pub msg_bucket: Bucket,
}

const _: () = assert!(std::mem::size_of::<Conn>() <= 40);

impl Conn {
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub fn is_live(&self) -> bool {
        self.has(flag::LIVE)
    }

    /// Reading must wait: backpressure, throttle, buffer shortage, closing or FIN seen.
    pub fn read_blocked(&self) -> bool {
        self.has(
            flag::BACKPRESSURE
                | flag::THROTTLED
                | flag::WAIT_BUFFER
                | flag::CLOSING
                | flag::PEER_FIN,
        )
    }

    /// Echo finished and the peer is gone: time to close with `PeerClosed`.
    pub fn done_after_fin(&self) -> bool {
        self.has(flag::PEER_FIN) && self.chain.is_empty() && !self.has(flag::SEND_PENDING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small() {
        assert!(std::mem::size_of::<Conn>() <= 40);
    }

    #[test]
    fn flags() {
        let mut c = Conn::default();
        assert!(!c.is_live());
        c.set(flag::LIVE | flag::RECV_ARMED);
        assert!(c.is_live() && !c.read_blocked());
        c.set(flag::THROTTLED);
        assert!(c.read_blocked());
        c.clear(flag::THROTTLED);
        c.set(flag::PEER_FIN);
        assert!(c.done_after_fin());
    }
}
