//! Engine configuration: what the CLI parsed, in the form the shards use. Both engines read the same
//! struct, so `--engine` changes the engine and nothing else.

use std::time::Duration;

use crate::bucket::BucketSpec;

/// TCP keepalive probes (SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// Parses `idle,interval,count` (e.g. `60s,10s,5`) or `off`.
    pub fn parse(s: &str) -> Result<Option<Keepalive>, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() != 3 {
            return Err(format!(
                "'{s}' is not idle,interval,count (e.g. 60s,10s,5) or off"
            ));
        }
        let idle = crate::units::parse_duration(parts[0])?;
        let interval = crate::units::parse_duration(parts[1])?;
        let count: u32 = parts[2]
            .parse()
            .map_err(|_| format!("'{}' is not a probe count", parts[2]))?;
        if idle < Duration::from_secs(1) || interval < Duration::from_secs(1) || count == 0 {
            return Err(format!(
                "'{s}': idle and interval must be at least 1s and count at least 1"
            ));
        }
        Ok(Some(Keepalive {
            idle,
            interval,
            count,
        }))
    }
}

/// Everything a shard needs to run, identical for both engines.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Size of one receive buffer in bytes.
    pub buffer_size: u32,
    /// Most receive buffers per shard (a power of two, at most 32768; the pool grows up to this).
    pub buffers: u16,
    /// Close connections that sent nothing for this long while the server was ready to read;
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Close connections whose peer read nothing for this long while the server had bytes for it
    /// (nginx `send_timeout`); `None` = never.
    pub send_timeout: Option<Duration>,
    /// After a close the server started, it reads and discards input waiting for the peer's FIN; it
    /// closes anyway once the peer has sent nothing for this long (nginx `lingering_timeout`).
    pub linger_timeout: Duration,
    /// What the connections speak.
    pub protocol: crate::protocol::Protocol,
    /// The protocols' limits.
    pub proto: crate::protocol::ProtoConfig,
    /// TCP keepalive on accepted sockets.
    pub keepalive: Option<Keepalive>,
    /// Most buffers one connection may hold while its echo is pending (backpressure bound).
    pub max_queued_buffers: u16,
    /// Time allowed for the graceful drain on SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
    /// Per-connection inbound byte limit (`--rate-limit`).
    pub rate_limit: Option<BucketSpec>,
    /// Per-connection read-count limit (`--message-rate`).
    pub message_rate: Option<BucketSpec>,
    /// Check the per-connection buckets every N reads (EMQX's `active_n`).
    pub check_every: u16,
    /// Accepts per second per listener (`--max-conn-rate`).
    pub max_conn_rate: Option<BucketSpec>,
    /// io_uring: accept into the ring's fixed-file table (direct descriptors).
    pub direct_descriptors: bool,
    /// io_uring: wait for up to this many completions, at most `.1` microseconds after the first one
    /// arrived (min-wait batching, kernel 6.12+); `None` returns on the first completion.
    pub completion_batch: Option<(u32, u32)>,
    /// io_uring: fixed-file table slots per ring (0 = from RLIMIT_NOFILE).
    pub fixed_files: u32,
    /// io_uring: a connection that received nothing for this long (between 1× and 2× it) waits on a
    /// readiness poll instead of an armed receive, which holds less kernel memory; `None` = never.
    pub park_after: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            buffer_size: 2048,
            buffers: 16384,
            idle_timeout: Some(Duration::from_secs(60)),
            send_timeout: Some(Duration::from_secs(60)),
            linger_timeout: Duration::from_secs(2),
            protocol: crate::protocol::Protocol::Echo,
            proto: crate::protocol::ProtoConfig::default(),
            keepalive: None,
            max_queued_buffers: 8,
            shutdown_timeout: Duration::from_secs(10),
            rate_limit: None,
            message_rate: None,
            check_every: 1,
            max_conn_rate: None,
            direct_descriptors: true,
            completion_batch: Some((64, 100)),
            fixed_files: 0,
            park_after: Some(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_parse() {
        assert_eq!(Keepalive::parse("off").unwrap(), None);
        let k = Keepalive::parse("60s,10s,5").unwrap().unwrap();
        assert_eq!(k.idle, Duration::from_secs(60));
        assert_eq!(k.count, 5);
        assert!(Keepalive::parse("60s,10s").is_err());
        assert!(Keepalive::parse("0,10s,5").is_err());
        assert!(Keepalive::parse("60s,10s,x").is_err());
    }
}
