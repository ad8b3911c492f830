//! Failure causes (with the limit behind each), per-worker counters and the latency histogram that
//! workers publish to the main thread about ten times a second.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;

/// Why a connection failed. Every failure is counted under exactly one cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Refused,
    Reset,
    TimedOut,
    AddrNotAvail,
    FdLimit,
    Mismatch,
    BadStatus,
    Closed,
    NoMemory,
    Handshake,
    Other,
}

pub const CAUSES: [Cause; 11] = [
    Cause::Refused,
    Cause::Reset,
    Cause::TimedOut,
    Cause::AddrNotAvail,
    Cause::FdLimit,
    Cause::Mismatch,
    Cause::BadStatus,
    Cause::Closed,
    Cause::NoMemory,
    Cause::Handshake,
    Cause::Other,
];

impl Cause {
    /// Maps a positive errno from a failed operation to its cause.
    pub fn from_errno(e: i32) -> Cause {
        match e {
            libc::ECONNREFUSED => Cause::Refused,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Cause::Reset,
            libc::ETIMEDOUT | libc::ETIME | libc::ECANCELED | libc::EHOSTUNREACH => Cause::TimedOut,
            libc::EADDRNOTAVAIL | libc::EADDRINUSE => Cause::AddrNotAvail,
            libc::EMFILE | libc::ENFILE => Cause::FdLimit,
            libc::ENOMEM | libc::ENOBUFS => Cause::NoMemory,
            _ => Cause::Other,
        }
    }

    pub fn index(self) -> usize {
        CAUSES
            .iter()
            .position(|c| *c == self)
            .unwrap_or(CAUSES.len() - 1)
    }

    /// Key in `--json` output.
    pub fn key(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Reset => "reset",
            Cause::TimedOut => "timed_out",
            Cause::AddrNotAvail => "addr_not_available",
            Cause::FdLimit => "fd_limit",
            Cause::Mismatch => "mismatch",
            Cause::BadStatus => "bad_status",
            Cause::Closed => "closed_by_server",
            Cause::NoMemory => "no_memory",
            Cause::Handshake => "handshake",
            Cause::Other => "other",
        }
    }

    /// Short label for progress lines and the summary.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Reset => "reset",
            Cause::TimedOut => "timed out",
            Cause::AddrNotAvail => "no address",
            Cause::FdLimit => "fd limit",
            Cause::Mismatch => "mismatch",
            Cause::BadStatus => "bad status",
            Cause::Closed => "closed by server",
            Cause::NoMemory => "no memory",
            Cause::Handshake => "handshake",
            Cause::Other => "other",
        }
    }

    /// The limit behind the cause and what to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            Cause::Refused => "nothing listens on --target (is the server running, on that port?)",
            Cause::Reset => {
                "the server reset connections: check its connection limit (--max-connections), its fd \
                 limit (ulimit -n) and its log"
            }
            Cause::TimedOut => {
                "no SYN-ACK or echo in time: the server is overloaded or its accept backlog is full \
                 (net.core.somaxconn, net.ipv4.tcp_max_syn_backlog); lower --connect-rate or raise \
                 --connect-timeout / --echo-timeout"
            }
            Cause::AddrNotAvail => {
                "ephemeral ports exhausted for this source: add --sources or widen \
                 net.ipv4.ip_local_port_range"
            }
            Cause::FdLimit => {
                "fd limit or fixed-file table full: RLIMIT_NOFILE (ulimit -n) bounds each ring's table and \
                 fs.file-max / fs.nr_open the system; use more --workers"
            }
            Cause::Mismatch => {
                "the echo differed from what was sent, or an HTTP answer was malformed or had the wrong \
                 length: a server bug, or the target does not speak --protocol"
            }
            Cause::BadStatus => {
                "the server answered with a status other than 200 (the last one is in the summary): \
                 check --http-path and the server's limits"
            }
            Cause::Closed => {
                "the server closed connections: check its idle timeout (--idle-timeout) and connection limit"
            }
            Cause::NoMemory => "the kernel ran out of socket memory: check net.ipv4.tcp_mem and free memory",
            Cause::Handshake => {
                "the WebSocket upgrade was refused or wrong (no 101, a wrong Sec-WebSocket-Accept, an \
                 extension or subprotocol nobody asked for): is --target a WebSocket server?"
            }
            Cause::Other => "unexpected error (see the errno in the summary)",
        }
    }
}

/// One worker's counters. Gauges (`alive`, `pending`, `outstanding`) are current values, the rest
/// only grow.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Connects started.
    pub attempted: u64,
    /// Connects that succeeded.
    pub connected: u64,
    /// Connections open now.
    pub alive: u64,
    /// Connects in flight.
    pub pending: u64,
    /// Failures by cause (index: `Cause::index`).
    pub failed: [u64; CAUSES.len()],
    /// Heartbeats sent / fully echoed and verified.
    pub sent: u64,
    pub echoed: u64,
    /// Heartbeats waiting for their echo now.
    pub outstanding: u64,
    /// Heartbeats not sent because the previous one's echo had not arrived yet (counted in latency
    /// through the coordinated-omission correction).
    pub late: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Multishot receives ended by an empty buffer ring (re-armed at once).
    pub recv_nobufs: u64,
    /// `--protocol websocket`: upgrades answered with a valid 101.
    pub ws_upgrades: u64,
    /// `--protocol websocket`: pings received from the server / pongs sent back.
    pub ws_pings: u64,
    pub ws_pongs: u64,
    /// Microseconds from start until this worker had an outcome for all its connections (0: not yet).
    pub ramp_done_us: u64,
    /// The last errno counted as `Cause::Other` (0: none).
    pub other_errno: i32,
    /// The last HTTP status counted as `Cause::BadStatus` (0: none).
    pub last_status: u16,
}

impl Counts {
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    pub fn add(&mut self, o: &Counts) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.alive += o.alive;
        self.pending += o.pending;
        for (a, b) in self.failed.iter_mut().zip(o.failed.iter()) {
            *a += b;
        }
        self.sent += o.sent;
        self.echoed += o.echoed;
        self.outstanding += o.outstanding;
        self.late += o.late;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.recv_nobufs += o.recv_nobufs;
        self.ws_upgrades += o.ws_upgrades;
        self.ws_pings += o.ws_pings;
        self.ws_pongs += o.ws_pongs;
        self.ramp_done_us = self.ramp_done_us.max(o.ramp_done_us);
        if o.other_errno != 0 {
            self.other_errno = o.other_errno;
        }
        if o.last_status != 0 {
            self.last_status = o.last_status;
        }
    }
}

/// Latency histogram in microseconds, up to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid histogram bounds")
}

pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What a worker shares with the main thread.
pub struct Published {
    pub counts: Counts,
    /// Latencies recorded since the main thread last took them.
    pub hist: Histogram<u64>,
    /// The worker left its loop.
    pub finished: bool,
}

pub type Shared = Arc<Mutex<Published>>;

pub fn new_shared() -> Shared {
    Arc::new(Mutex::new(Published {
        counts: Counts::default(),
        hist: new_histogram(),
        finished: false,
    }))
}

/// Locks, ignoring poisoning (a panicked worker's last numbers are still worth reporting).
pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Published> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}
