//! WebSocket counters: plain `u64`s a shard passes to every call and adds into its metrics.

/// Counters of one shard (or one test). Every [`super::WsConn`] call adds to the ones it touches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsStats {
    /// Handshakes answered with `101`.
    pub upgrades: u64,
    /// Handshakes refused with `400` (bad handshake).
    pub rejected_400: u64,
    /// Handshakes refused with `426` (not an upgrade, or another WebSocket version).
    pub rejected_426: u64,
    /// Handshakes refused with `431` (head over `max_header_bytes`, or too many header fields).
    pub rejected_431: u64,
    /// Frames whose header was received whole (every opcode).
    pub frames_in: u64,
    /// Frames sent: echoes, pongs, pings, closes.
    pub frames_out: u64,
    /// Data messages received whole (their final frame ended).
    pub messages_in: u64,
    /// Data messages echoed whole.
    pub messages_out: u64,
    /// Pings received.
    pub pings_in: u64,
    /// Pongs sent (one per ping received).
    pub pongs_out: u64,
    /// Pings sent by [`super::WsConn::on_quiet`].
    pub pings_out: u64,
    /// Pongs received.
    pub pongs_in: u64,
    /// Close frames received.
    pub closes_received: u64,
    /// Close frames sent, by code ([`CloseCode`] as index).
    pub closes_sent: [u64; CloseCode::COUNT],
}

/// The code of a close frame the server sent (the `code` label of its metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000, answering the peer's normal close.
    Normal = 0,
    /// 1001: the server goes away (idle timeout, shutdown), or answering the peer's 1001.
    GoingAway,
    /// 1002: protocol error.
    ProtocolError,
    /// 1007: invalid UTF-8.
    InvalidPayload,
    /// 1009: message too big.
    TooBig,
    /// Answering the peer's close with another valid code.
    Other,
    /// Answering the peer's close that had no code.
    Empty,
}

impl CloseCode {
    pub const COUNT: usize = 7;
    pub const ALL: [CloseCode; Self::COUNT] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::TooBig,
        CloseCode::Other,
        CloseCode::Empty,
    ];

    /// Metric label: the code, `other` or `none`.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "1000",
            CloseCode::GoingAway => "1001",
            CloseCode::ProtocolError => "1002",
            CloseCode::InvalidPayload => "1007",
            CloseCode::TooBig => "1009",
            CloseCode::Other => "other",
            CloseCode::Empty => "none",
        }
    }

    /// The label bucket of a sent code.
    pub fn of(code: u16) -> CloseCode {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1007 => CloseCode::InvalidPayload,
            1009 => CloseCode::TooBig,
            _ => CloseCode::Other,
        }
    }
}

impl WsStats {
    /// Add `other` into `self` (a shard folding a batch into its totals).
    pub fn add(&mut self, o: &WsStats) {
        self.upgrades += o.upgrades;
        self.rejected_400 += o.rejected_400;
        self.rejected_426 += o.rejected_426;
        self.rejected_431 += o.rejected_431;
        self.frames_in += o.frames_in;
        self.frames_out += o.frames_out;
        self.messages_in += o.messages_in;
        self.messages_out += o.messages_out;
        self.pings_in += o.pings_in;
        self.pongs_out += o.pongs_out;
        self.pings_out += o.pings_out;
        self.pongs_in += o.pongs_in;
        self.closes_received += o.closes_received;
        for (a, b) in self.closes_sent.iter_mut().zip(o.closes_sent) {
            *a += b;
        }
    }

    /// Close frames sent with `code`'s label.
    pub fn closes(&self, code: CloseCode) -> u64 {
        self.closes_sent[code as usize]
    }
}
