//! Per-shard counters: plain integers owned by one shard thread, flushed into `metrics` handles about
//! once a second by the shard itself (see `ringhold-metrics`). Nothing on the per-message path touches
//! anything shared.

/// Why a connection was closed. The label is the `reason` label of `ringhold_closes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer sent FIN and everything pending was echoed.
    PeerClosed,
    /// ECONNRESET / EPIPE.
    Reset,
    /// Nothing received for `--idle-timeout`.
    IdleTimeout,
    /// Any other socket error.
    Error,
    /// Closed by the graceful drain at shutdown.
    Shutdown,
    /// Closed because a per-connection limit was broken.
    Limit,
    /// The peer read nothing for `--send-timeout` while the server had bytes for it.
    SendTimeout,
    /// The peer broke the protocol (the protocol answered with its own error first).
    ProtocolError,
    /// Every buffer was held, connections waited for one, and this connection's peer had read
    /// nothing for longest (at least a second): its buffers went to the waiters.
    BufferPressure,
}

impl CloseReason {
    pub const COUNT: usize = 9;
    pub const ALL: [CloseReason; Self::COUNT] = [
        CloseReason::PeerClosed,
        CloseReason::Reset,
        CloseReason::IdleTimeout,
        CloseReason::Error,
        CloseReason::Shutdown,
        CloseReason::Limit,
        CloseReason::SendTimeout,
        CloseReason::ProtocolError,
        CloseReason::BufferPressure,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Reset => "reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Limit => "limit",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BufferPressure => "buffer_pressure",
        }
    }

    /// Maps a negative errno from a failed socket operation to a close reason.
    pub fn from_errno(errno: i32) -> CloseReason {
        const ECONNRESET: i32 = 104;
        const EPIPE: i32 = 32;
        const ETIMEDOUT: i32 = 110;
        const ECONNABORTED: i32 = 103;
        match errno {
            ECONNRESET | EPIPE | ECONNABORTED | ETIMEDOUT => CloseReason::Reset,
            _ => CloseReason::Error,
        }
    }
}

/// Why a connection was refused right after the kernel handed it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// `--max-connections` reached.
    MaxConnections,
    /// EMFILE / ENFILE: the process or system fd limit.
    FdLimit,
    /// io_uring fixed-file table full (ENFILE from a direct accept).
    TableFull,
    /// Arrived while draining for shutdown.
    Shutdown,
}

impl RejectReason {
    pub const COUNT: usize = 4;
    pub const ALL: [RejectReason; Self::COUNT] = [
        RejectReason::MaxConnections,
        RejectReason::FdLimit,
        RejectReason::TableFull,
        RejectReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max_connections",
            RejectReason::FdLimit => "fd_limit",
            RejectReason::TableFull => "fixed_file_table_full",
            RejectReason::Shutdown => "shutdown",
        }
    }
}

/// Everything a shard counts. Gauges are set, counters only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Gauge: open connections on this shard.
    pub active: u64,
    pub accepts: u64,
    pub closes: [u64; CloseReason::COUNT],
    pub rejected: [u64; RejectReason::COUNT],
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Gauge: receive buffers of this shard.
    pub buffers_total: u64,
    /// Gauge: buffers holding bytes not yet echoed (or lent to the kernel for a receive in epoll's case:
    /// never; epoll's buffers are in use only while they hold bytes).
    pub buffers_in_use: u64,
    /// Times a receive found no free buffer (ENOBUFS on io_uring, an empty pool on epoll).
    pub buffer_exhausted: u64,
    /// io_uring only: SQEs submitted and CQEs reaped.
    pub submits: u64,
    pub completions: u64,
    /// Gauge: connections currently paused by `--rate-limit` / `--message-rate`.
    pub throttled: u64,
    /// Times a connection was paused by a rate limit.
    pub pauses: u64,
    /// Times accepting was deferred by `--max-conn-rate`.
    pub accepts_deferred: u64,
    /// Closes the server started that shut the write side down and waited for the peer's FIN
    /// (lingering close), and those of them that ended on the linger timeout instead.
    pub lingering_closes: u64,
    pub linger_timeouts: u64,
    /// Gauge: connections waiting for a free receive buffer.
    pub waiting_for_buffer: u64,
    /// Times a connection holding buffers was paused because the pool ran low (the reserve is kept for
    /// connections that hold none).
    pub reserve_pauses: u64,
    /// io_uring only. Gauge: connections parked (waiting on a readiness poll instead of an armed
    /// receive, see `--park-after`).
    pub parked: u64,
    /// io_uring only: times a quiet connection was parked.
    pub parks: u64,
    /// Times a connection's protocol stopped between requests because the answers queued for the
    /// peer reached the output budget (`Step::Pause`; HTTP pipelining faster than the peer reads).
    pub output_pauses: u64,
    /// The protocols' own counters (requests, responses, protocol errors).
    pub proto: crate::protocol::ProtoStats,
}

impl ShardCounters {
    pub fn close(&mut self, reason: CloseReason) {
        self.closes[reason as usize] += 1;
        self.active -= 1;
    }

    pub fn reject(&mut self, reason: RejectReason) {
        self.rejected[reason as usize] += 1;
    }
}
