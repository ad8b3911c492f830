//! Command-line interface (clap derive). Every flag also reads a `RINGHOLD_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ringhold_core::bucket::BucketSpec;
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
    Load(ringhold_load::LoadArgs),
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

    /// Event engine.
    #[arg(long, env = "RINGHOLD_ENGINE", value_enum, default_value_t = Engine::Uring)]
    pub engine: Engine,

    /// Number of shards (threads, each with its own listener and loop). Default: number of cores.
    /// More than the cores is allowed (each io_uring shard brings its own fixed-file table).
    #[arg(long, env = "RINGHOLD_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// Do not pin shard threads to cores. Pinning suits a dedicated server; use this when clients (a
    /// load generator) share the host's cores, or a pinned shard competes with them.
    #[arg(long, env = "RINGHOLD_NO_PIN")]
    pub no_pin: bool,

    /// Size of one receive buffer (64 B ..= 64 KiB).
    #[arg(long, env = "RINGHOLD_BUFFER_SIZE", default_value = "2KiB", value_parser = parse_buffer_size)]
    pub buffer_size: u32,

    /// Receive buffers per shard (power of two, ≤ 32768). Bytes live only here while in flight.
    #[arg(long, env = "RINGHOLD_BUFFERS", default_value = "4096", value_parser = parse_buffers)]
    pub buffers: u16,

    /// Most buffers one connection may hold while its echo waits for the peer to read (backpressure).
    #[arg(long, env = "RINGHOLD_PENDING_BUFFERS", default_value_t = 8,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub pending_buffers: u8,

    /// Close connections that received nothing for this long (`0` = never).
    #[arg(long, env = "RINGHOLD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

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

    /// io_uring: keep accepted sockets as plain fds instead of direct descriptors (fixed-file table).
    #[arg(long, env = "RINGHOLD_NO_DIRECT_DESCRIPTORS")]
    pub no_direct_descriptors: bool,

    /// io_uring: fixed-file table slots per shard (0 = the RLIMIT_NOFILE soft limit, the kernel's cap).
    #[arg(long, env = "RINGHOLD_FIXED_FILES", default_value_t = 0)]
    pub fixed_files: u32,

    // The four limit flags take `allow_hyphen_values` so that a negative value (`--max-conn-rate -3`)
    // reaches its parser and the error names the flag, instead of clap's "unexpected argument '-3'".
    /// Accepts per second per listener, i.e. per shard (token bucket, burst = N). When empty, accepting
    /// pauses and the backlog holds the rest (EMQX's max_conn_rate).
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
