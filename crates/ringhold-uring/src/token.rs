//! The `user_data` codec: `op:8 | generation:24 | slot:32`.
//!
//! - `slot` is the connection's descriptor (fixed-file index or fd), or 0 for shard-level operations;
//! - `generation` is the slot's generation when the operation was submitted (24 bits, wraps);
//! - `op` says which operation completed.
//!
//! A completion whose generation no longer matches its slot is dropped, never applied to the wrong
//! connection.

/// What a completion is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot (or single-shot, when `--max-conn-rate` is set) accept on the shard's listener.
    Accept = 1,
    /// Multishot receive with buffer select.
    Recv = 2,
    /// An echo send.
    Send = 3,
    /// Close of a connection's descriptor; frees its slot.
    Close = 4,
    /// Cancel of a connection's multishot receive or pending send.
    Cancel = 5,
    /// setsockopt (TCP_NODELAY, keepalive) through IORING_OP_URING_CMD.
    SockOpt = 6,
    /// Close of a connection refused at accept (no slot was opened for it).
    CloseRefused = 7,
    /// Cancel of the shard's accept (shutdown or `--max-conn-rate`).
    CancelAccept = 8,
    /// Shutdown of a connection's write side (lingering close).
    Shutdown = 9,
    /// A parked connection's readiness poll (POLLIN | POLLRDHUP), armed instead of a receive.
    Poll = 10,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Close,
            5 => Op::Cancel,
            6 => Op::SockOpt,
            7 => Op::CloseRefused,
            8 => Op::CancelAccept,
            9 => Op::Shutdown,
            10 => Op::Poll,
            _ => return None,
        })
    }
}

/// A decoded `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub gen: u32,
    pub slot: u32,
}

impl Token {
    pub fn new(op: Op, gen: u32, slot: u32) -> Token {
        Token {
            op,
            gen: gen & ringhold_core::slab::GEN_MASK,
            slot,
        }
    }

    pub fn encode(self) -> u64 {
        ((self.op as u64) << 56) | ((self.gen as u64 & 0x00FF_FFFF) << 32) | self.slot as u64
    }

    pub fn decode(v: u64) -> Option<Token> {
        Some(Token {
            op: Op::from_u8((v >> 56) as u8)?,
            gen: ((v >> 32) & 0x00FF_FFFF) as u32,
            slot: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Close,
            Op::Cancel,
            Op::SockOpt,
            Op::CloseRefused,
            Op::CancelAccept,
            Op::Shutdown,
            Op::Poll,
        ] {
            let t = Token::new(op, 0x00AB_CDEF, u32::MAX - 1);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::new(Op::Send, 0x1FF_FFFF, 3).gen, 0x00FF_FFFF);
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(0xFF << 56), None);
    }
}
