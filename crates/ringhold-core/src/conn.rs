//! Per-connection state: what a shard keeps for one connection, and nothing else. No buffers, no heap:
//! at most 64 bytes including the protocol's state (asserted below), plus 8 bytes in the timer wheel.
//!
//! The policy part (flags, clocks, queues, protocol state) belongs to the connection machine
//! ([`crate::machine`]) and is private to this crate. Engines get two bytes of their own
//! ([`Conn::io`], [`Conn::inflight`]) for what only they know: which operations are armed or in flight,
//! which edges epoll reported.

use crate::machine::out::Queue;
use crate::protocol::ProtoState;

/// Policy flag bits (private to the machine).
pub(crate) mod flag {
    /// The slot holds a connection.
    pub const LIVE: u16 = 1 << 0;
    /// The machine told the engine to receive (a `Recv` not yet followed by `StopRecv`).
    pub const READING: u16 = 1 << 1;
    /// A send cycle is on: the engine sends `front()` until the queue is empty.
    pub const SENDING: u16 = 1 << 2;
    /// The peer sent FIN.
    pub const PEER_FIN: u16 = 1 << 3;
    /// Closing gracefully: input is discarded, the queue is flushed, then the write side is shut down.
    pub const FLUSH_CLOSE: u16 = 1 << 4;
    /// Lingering: the write side is shut down; input is read and discarded until FIN or the linger time.
    pub const LINGER: u16 = 1 << 5;
    /// `Close` was issued; the slot waits for the engine's `released`.
    pub const CLOSED: u16 = 1 << 6;
    /// Reading is paused: the connection holds as many buffers as it may.
    pub const BACKPRESSURE: u16 = 1 << 7;
    /// Reading is paused by a rate limit until its throttle entry comes due.
    pub const THROTTLED: u16 = 1 << 8;
    /// Waiting for a free receive buffer.
    pub const WAIT_BUFFER: u16 = 1 << 9;
    /// The protocol was asked for a keep-alive probe (WebSocket ping) in this quiet spell.
    pub const PROBED: u16 = 1 << 10;
    /// Woken from the buffer queue: one free buffer is spoken for until its receive completes (or
    /// finds none again, or stops).
    pub const PROMISED: u16 = 1 << 12;
    /// The protocol paused (`Step::Pause`): `hold` keeps input not handled yet; reading stops until
    /// the output has drained and the held input has been handed in again.
    pub const PAUSED: u16 = 1 << 11;
}

/// One connection. `Copy` so that the slot table is a plain array.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn {
    /// Generation of the slot (24 bits used); stale completions carry an older one.
    pub gen: u32,
    /// Timer-wheel tick the running clock started at: last byte received while the queue was empty
    /// (idle), last send progress (stalled), write side shut down (lingering).
    pub(crate) stamp: u32,
    /// Timer-wheel tick the write side was shut down at (lingering has a total bound from here).
    pub(crate) linger_start: u32,
    /// Timer-wheel tick of this connection's live wheel entry (an entry found at another tick was
    /// superseded by an earlier deadline and is dropped).
    pub(crate) due: u32,
    /// What is waiting to be sent.
    pub(crate) out: Queue,
    /// Received bytes the protocol asked to keep: an incomplete unit (`Step::Hold`, a request head),
    /// or input not handled yet while paused (`Step::Pause`, then also buffers that arrived after).
    pub(crate) hold: Queue,
    /// Policy flags (`flag`).
    pub(crate) flags: u16,
    /// Receive buffers and generated slots this connection holds.
    pub(crate) queued: u16,
    /// Engine-private flag bits.
    pub io: u8,
    /// Engine-private: operations in flight (io_uring).
    pub inflight: u8,
    /// The protocol's per-connection state.
    pub(crate) proto: ProtoState,
}

const _: () = assert!(std::mem::size_of::<Conn>() <= 64);

impl Conn {
    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub(crate) fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub(crate) fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub fn is_live(&self) -> bool {
        self.has(flag::LIVE)
    }

    /// The close was counted (graceful close under way, lingering or closed).
    pub(crate) fn closing(&self) -> bool {
        self.has(flag::FLUSH_CLOSE | flag::LINGER | flag::CLOSED)
    }

    /// Something is waiting to be sent or being sent.
    pub(crate) fn output_pending(&self) -> bool {
        !self.out.is_empty() || self.has(flag::SENDING)
    }

    /// Whether the engine should receive for this connection now.
    pub(crate) fn wants_read(&self) -> bool {
        if self.has(flag::CLOSED | flag::PEER_FIN | flag::WAIT_BUFFER) {
            return false;
        }
        if self.has(flag::FLUSH_CLOSE | flag::LINGER) {
            return true; // read and discard, so that the close ends in FIN, not RST
        }
        !self.has(flag::BACKPRESSURE | flag::THROTTLED | flag::PAUSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small() {
        assert!(std::mem::size_of::<Conn>() <= 64);
    }

    #[test]
    fn reading_rules() {
        let mut c = Conn {
            flags: flag::LIVE,
            ..Conn::default()
        };
        assert!(c.is_live() && c.wants_read());
        c.set(flag::THROTTLED);
        assert!(!c.wants_read());
        c.clear(flag::THROTTLED);
        c.set(flag::PAUSED);
        assert!(!c.wants_read(), "a paused connection does not read");
        c.set(flag::THROTTLED);
        c.set(flag::FLUSH_CLOSE);
        assert!(c.wants_read(), "a closing connection reads to discard");
        c.set(flag::PEER_FIN);
        assert!(!c.wants_read());
    }
}
