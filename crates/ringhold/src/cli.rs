//! Command-line interface (clap derive). Every flag also reads a `RINGHOLD_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ringhold_core::bucket::BucketSpec;
use ringhold_core::protocol::Protocol;
use ringhold_core::units::{parse_duration, parse_size};
use ringhold_core::Keepalive;

#[derive(Parser, Debug)]
#[command(
    name = "ringhold",
    version,
    about = "A TCP echo / keep-alive server on io_uring that holds a million mostly idle connections",
    long_about = "ringhold is a thread-per-core TCP echo server. Each shard is a thread pinned to a core with \
its own SO_REUSEPORT listener and its own io_uring (or epoll) loop. Per-connection state is a few dozen \
bytes; bytes live only in small shared buffers while in flight.\n\nStart with `ringhold doctor` to see \
which limit stops your host first."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the echo server.
    Serve(Box<ServeArgs>),
    /// Open and hold many connections against a server, verifying every echoed byte.
    Load(Box<ringhold_load::LoadArgs>),
    /// Check the kernel and process limits that stop N connections, and print the fixes.
    Doctor(crate::doctor::DoctorArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// io_uring: multishot accept and recv, provided buffer ring, direct descriptors.
    Uring,
    /// Edge-triggered epoll with the same connection core (to compare engines).
    Epoll,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Clone, Debug)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    ringhold_metrics::parse_listen(s).map(MetricsListen)
}

fn parse_buffer_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !(64..=65536).contains(&n) {
        return Err(format!("{n} bytes is outside 64 B ..= 64 KiB"));
    }
    Ok(n as u32)
}

fn parse_buffers(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if !(2..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{n} must be a power of two from 2 to 32768 (an io_uring buffer ring)"
        ));
    }
    Ok(n as u16)
}

/// `--completion-batch`: `(completions, microseconds)`, or `None` for `off`.
#[derive(Clone, Copy, Debug)]
pub struct CompletionBatch(pub Option<(u32, u32)>);

fn parse_completion_batch(s: &str) -> Result<CompletionBatch, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(CompletionBatch(None));
    }
    let (n, t) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}' is not N,T (e.g. 64,100us) or off"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{n}' is not a whole number of completions"))?;
    let t = parse_duration(t.trim())?;
    if n == 0 || n > 4096 || t.is_zero() || t > Duration::from_secs(1) {
        return Err(format!(
            "'{s}': N must be 1 to 4096 and T more than 0 and at most 1s"
        ));
    }
    Ok(CompletionBatch(Some((n, t.as_micros() as u32))))
}

/// `--park-after`: `0` (never) or at least 10 ms (a shorter sweep would cost more than it saves).
fn parse_park_after(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < Duration::from_millis(10) {
        return Err(format!("'{s}' must be 0 (never park) or at least 10ms"));
    }
    Ok(d)
}

/// `--protocol`.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolArg(pub Protocol);

fn parse_protocol(s: &str) -> Result<ProtocolArg, String> {
    Protocol::ALL
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
        .map(ProtocolArg)
        .ok_or_else(|| {
            let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
            format!(
                "'{s}' is not a protocol ringhold speaks ({})",
                names.join(", ")
            )
        })
}

fn parse_header_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(256..=1 << 20).contains(&n) {
        return Err(format!("{s} must be from 256 B to 1 MiB"));
    }
    Ok(n)
}

/// `--tcp-keepalive`: probes, or `off`.
#[derive(Clone, Debug)]
pub struct KeepaliveArg(pub Option<Keepalive>);

fn parse_keepalive(s: &str) -> Result<KeepaliveArg, String> {
    Keepalive::parse(s).map(KeepaliveArg)
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (every shard binds it with SO_REUSEPORT). Port 0 picks a free port.
    #[arg(long, env = "RINGHOLD_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// What the connections speak: `echo` (raw TCP echo), `http` (HTTP/1.1 keep-alive: GET/HEAD
    /// answer 200 with a `?length=N` body, POST/PUT echo the body; pipelining, 100-continue,
    /// chunked; errors get 400/413/431/501/505 and a clean close) or `websocket` (RFC 6455 echo of
    /// every message, streamed frame by frame; text checked before it is echoed, in fragments of at
    /// most 4 KiB; a ping at half the idle timeout; close codes 1002/1007/1009; a non-upgrade request
    /// gets 426).
    #[arg(long, env = "RINGHOLD_PROTOCOL", default_value = "echo", value_parser = parse_protocol)]
    pub protocol: ProtocolArg,

    /// http, websocket: most bytes of a request head (request line and headers); more gets 431.
    #[arg(long, env = "RINGHOLD_MAX_HEADER_SIZE", default_value = "8KiB", value_parser = parse_header_size)]
    pub max_header_size: u64,

    /// websocket: most bytes of one message (all its frames); more closes with 1009.
    #[arg(long, env = "RINGHOLD_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_size: u64,

    /// http: most bytes of a request body; more gets 413.
    #[arg(long, env = "RINGHOLD_MAX_BODY_SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Event engine.
    #[arg(long, env = "RINGHOLD_ENGINE", value_enum, default_value_t = Engine::Uring)]
    pub engine: Engine,

    /// Number of shards, each with its own listener, loop and (io_uring) ring with its fixed-file
    /// table. Default: number of cores. More than the cores is how io_uring holds more connections
    /// than RLIMIT_NOFILE allows one table (shards × --fixed-files); --threads says how many threads
    /// drive them.
    #[arg(long, env = "RINGHOLD_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// io_uring: threads that drive the shards, each thread several shards' rings (one epoll wait on
    /// their eventfds). Default: the shards, up to the number of cores, so `--shards 64` on 8 cores
    /// runs 8 threads of 8 rings each. A thread with one shard waits in its own ring, with
    /// --completion-batch. epoll runs one thread per shard and ignores this.
    #[arg(long, env = "RINGHOLD_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Do not pin shard threads to cores. Pinning suits a dedicated server; use this when clients (a
    /// load generator) share the host's cores, or a pinned shard competes with them.
    #[arg(long, env = "RINGHOLD_NO_PIN")]
    pub no_pin: bool,

    /// Size of one receive buffer (64 B ..= 64 KiB).
    #[arg(long, env = "RINGHOLD_BUFFER_SIZE", default_value = "2KiB", value_parser = parse_buffer_size)]
    pub buffer_size: u32,

    /// Most receive buffers per shard (power of two, ≤ 32768). Bytes live only here while in flight.
    /// The pool starts at 1024 buffers and doubles when it runs low, up to this; memory is reserved up
    /// front but committed only as buffers are used (so idle connections cost none of it).
    #[arg(long, env = "RINGHOLD_BUFFERS", default_value = "16384", value_parser = parse_buffers)]
    pub buffers: u16,

    /// Most buffers one connection may hold while its echo waits for the peer to read (backpressure).
    /// Also its output budget: `--protocol http` answers pipelined requests at most this many 2 KiB
    /// slots ahead of what the peer has read (the rest waits, unread, until it reads).
    #[arg(long, env = "RINGHOLD_PENDING_BUFFERS", default_value_t = 8,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub pending_buffers: u8,

    /// Close connections whose peer sent nothing for this long while the server was ready to read and
    /// had nothing left to send (`0` = never). A connection the server stopped reading (backpressure,
    /// a rate limit, no free buffer) is never idle. Closed gracefully: FIN, then linger.
    #[arg(long, env = "RINGHOLD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close connections whose peer read nothing for this long while the server had bytes for it
    /// (nginx send_timeout; `0` = never). Counted as closes{reason="send_timeout"}.
    #[arg(long, env = "RINGHOLD_SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// After a close the server starts (idle, drain, protocol end), it shuts its write side down, then
    /// reads and discards input until the peer's FIN, or until the peer has sent nothing for this long
    /// (nginx lingering_timeout); then it closes. The peer sees every byte it was owed, then EOF, not a
    /// reset.
    #[arg(long, env = "RINGHOLD_LINGER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub linger_timeout: Duration,

    /// TCP keepalive on accepted sockets: `idle,interval,count` (e.g. 60s,10s,5) or `off`.
    #[arg(long, env = "RINGHOLD_TCP_KEEPALIVE", default_value = "off", value_parser = parse_keepalive)]
    pub tcp_keepalive: KeepaliveArg,

    /// Most open connections in total (`0` = no limit); the excess is closed at once and counted.
    #[arg(long, env = "RINGHOLD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// listen(2) backlog per shard (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "RINGHOLD_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// On SIGINT/SIGTERM, time allowed to finish in-flight echoes before closing everything.
    #[arg(long, env = "RINGHOLD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Address of the Prometheus /metrics endpoint, or `off`.
    #[arg(long, env = "RINGHOLD_METRICS_LISTEN", default_value = "127.0.0.1:9100",
          value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// io_uring: wait for up to N completions, for at most T after the first one arrived, before the
    /// shard wakes (`N,T`, e.g. `64,100us`; `off` wakes on every completion). Fewer wake-ups under load
    /// (measured: 5× fewer io_uring_enter calls and half the context switches at 500 ping-pong
    /// clients), at most T more latency. Needs kernel 6.12+ (min-wait); ignored where missing.
    #[arg(long, env = "RINGHOLD_COMPLETION_BATCH", default_value = "64,100us",
          value_parser = parse_completion_batch)]
    pub completion_batch: CompletionBatch,

    /// io_uring: keep accepted sockets as plain fds instead of direct descriptors (fixed-file table).
    #[arg(long, env = "RINGHOLD_NO_DIRECT_DESCRIPTORS")]
    pub no_direct_descriptors: bool,

    /// io_uring: fixed-file table slots per shard (0 = the RLIMIT_NOFILE soft limit, the kernel's cap).
    #[arg(long, env = "RINGHOLD_FIXED_FILES", default_value_t = 0)]
    pub fixed_files: u32,

    /// io_uring: park a connection that received nothing for this long (it parks after 1× to 2× this):
    /// it then waits on a readiness poll instead of an armed receive, which holds ~600 B less kernel
    /// memory per connection, and reads once per wake-up; woken twice within this time, it is busy
    /// again and gets its receive back. `0` = never park; otherwise at least 10ms. Busy connections
    /// never park.
    #[arg(long, env = "RINGHOLD_PARK_AFTER", default_value = "1s", value_parser = parse_park_after)]
    pub park_after: Duration,

    // The four limit flags take `allow_hyphen_values` so that a negative value (`--max-conn-rate -3`)
    // reaches its parser and the error names the flag, instead of clap's "unexpected argument '-3'".
    /// Accepts per second for the listen address as a whole, whatever --shards is (one token bucket
    /// shared by the shards, burst = N). When empty, accepting pauses and the backlog holds the rest
    /// (EMQX's max_conn_rate, per listener).
    #[arg(long, env = "RINGHOLD_MAX_CONN_RATE", value_parser = BucketSpec::parse_per_second,
          allow_hyphen_values = true)]
    pub max_conn_rate: Option<BucketSpec>,

    /// Inbound bytes per connection: `<bytes/s>,<burst>` (e.g. 1MiB/s,256KiB). When the bucket is empty,
    /// reading that connection pauses until it refills; nothing is dropped. Recommended burst: largest
    /// message × check-every / 2 (EMQX's bytes_rate).
    #[arg(long, env = "RINGHOLD_RATE_LIMIT", value_parser = BucketSpec::parse_bytes,
          allow_hyphen_values = true)]
    pub rate_limit: Option<BucketSpec>,

    /// Reads per connection: `<count>,<period>` (e.g. 10,1m), same pause rule (EMQX's messages_rate).
    #[arg(long, env = "RINGHOLD_MESSAGE_RATE", value_parser = BucketSpec::parse_count_period,
          allow_hyphen_values = true)]
    pub message_rate: Option<BucketSpec>,

    /// Check the rate-limit buckets every N reads (EMQX's active_n).
    #[arg(long, env = "RINGHOLD_CHECK_EVERY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..), allow_hyphen_values = true)]
    pub check_every: u16,
}
