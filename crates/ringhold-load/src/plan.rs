//! Command-line flags of `ringhold load` and the plan derived from them: target, sources, how many
//! workers (one io_uring each) and how many connections each opens.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ringhold_core::units::{parse_duration, parse_size};

pub use crate::fleet::{parse_part, Part};
use crate::pattern;
use crate::sources::{
    auto_sources, connections_per_source, parse_sources, part_sources, sources_needed, Sources,
    DEFAULT_PORT_SPAN, SOURCE_FILL_PERCENT,
};

#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Opens and holds --connections TCP connections to an echo server, sends each a \
heartbeat every --interval (or --rate messages per second in total) and verifies every echoed byte. \
With --protocol http the heartbeats are HTTP/1.1 keep-alive GETs (`?length=N`), each answer checked for \
status 200 and its body length; --http-kit runs the http-kit client pattern (random lengths, random \
pauses after each answer). With --protocol websocket each connection upgrades first (RFC 6455) and its \
heartbeats are masked binary messages, each echo checked byte for byte. \
Connections use io_uring direct descriptors, so one process holds far more connections than its fd limit \
(RLIMIT_NOFILE bounds each ring's fixed-file table, not the total). Exits 0 when every connection was \
made and held and every heartbeat came back intact, 1 otherwise, 2 on a usage or setup error."
)]
pub struct LoadArgs {
    /// Server to connect to (host:port).
    #[arg(long, env = "RINGHOLD_TARGET", default_value = "127.0.0.1:7000")]
    pub target: String,

    /// Connections to open and hold.
    #[arg(
        long,
        short = 'c',
        env = "RINGHOLD_CONNECTIONS",
        default_value_t = 1000
    )]
    pub connections: u32,

    /// Ramp-up: new connections per second over all workers (e.g. 20000 or 20000/s; 0 = as fast as
    /// the --max-pending limit allows).
    #[arg(long, env = "RINGHOLD_CONNECT_RATE", default_value = "0", value_parser = parse_rate)]
    pub connect_rate: f64,

    /// Source addresses to connect from: `auto`, `kernel`, a range (127.0.0.2-127.0.3.255), one
    /// address, a count K (K addresses from 127.0.0.2 on), or `host:CIDR`: every IPv4 address this
    /// host has inside CIDR (e.g. host:10.64.0.0/16; on Kubernetes' host network, the node's own load
    /// addresses). Each source has its own ephemeral port range (sockets are bound with
    /// IP_BIND_ADDRESS_NO_PORT). `auto` (the default): for a 127.x target, one source per ~30 % of
    /// net.ipv4.ip_local_port_range (8,469 connections with the default 32768-60999), because
    /// connect()'s port search slows sharply once half of a source's ports are taken; for any other
    /// target the kernel picks. `kernel`: never bind a source.
    #[arg(long, env = "RINGHOLD_SOURCES", default_value = "auto", value_parser = parse_sources)]
    pub sources: Sources,

    /// What to speak: `echo` (raw TCP: heartbeats echoed byte for byte), `http` (HTTP/1.1 keep-alive
    /// GETs, each answer checked for status 200 and its body length) or `websocket` (an RFC 6455
    /// upgrade first, `GET /` with a fresh Sec-WebSocket-Key per connection whose
    /// Sec-WebSocket-Accept is checked; heartbeats are masked binary messages of --message-size
    /// payload bytes, masks from a fast RNG, and each echo must come back as one unmasked binary
    /// frame, byte for byte; pings from the server are answered with pongs; a close frame from the
    /// server counts as `closed by server`).
    #[arg(long, env = "RINGHOLD_PROTOCOL", value_enum, default_value = "echo")]
    pub protocol: LoadProtocol,

    /// Heartbeat size: echo and websocket (the message's payload), at least 8 bytes (connection id
    /// and sequence number, then a checked pattern; default 64); http, the body length each GET asks
    /// for with `?length=N` (default 1024).
    #[arg(long, env = "RINGHOLD_MESSAGE_SIZE", value_parser = parse_size)]
    pub message_size: Option<u64>,

    /// http: the path of each GET (`?length=N` is added to its query).
    #[arg(long, env = "RINGHOLD_HTTP_PATH", default_value = "/")]
    pub http_path: String,

    /// http: the http-kit client pattern (seed 003) instead of --interval/--rate: each connection
    /// asks for a random length (--http-kit-length) as soon as it is connected, and again after a
    /// random pause (--http-kit-pause) once each answer has arrived.
    #[arg(long, env = "RINGHOLD_HTTP_KIT")]
    pub http_kit: bool,

    /// http-kit pattern: the range `?length=` is drawn from, uniformly.
    #[arg(long, env = "RINGHOLD_HTTP_KIT_LENGTH", default_value = "1-4096", value_parser = parse_size_range)]
    pub http_kit_length: (u64, u64),

    /// http-kit pattern: the range of the pause after each answer, uniformly.
    #[arg(long, env = "RINGHOLD_HTTP_KIT_PAUSE", default_value = "5s-45s", value_parser = parse_duration_range)]
    pub http_kit_pause: (Duration, Duration),

    /// Each connection sends one heartbeat per interval and checks its echo (0 = hold the connections
    /// idle, send nothing).
    #[arg(long, env = "RINGHOLD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Constant total heartbeats per second over all connections, instead of --interval (each
    /// connection then sends every connections/rate seconds). Latency is measured from the scheduled
    /// send time, corrected for coordinated omission.
    #[arg(long, env = "RINGHOLD_RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How long to run, ramp-up included; then outstanding echoes get up to --echo-timeout.
    #[arg(long, env = "RINGHOLD_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// A connect that takes longer counts as timed out.
    #[arg(long, env = "RINGHOLD_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// An echo that takes longer counts as timed out (and its connection is closed).
    #[arg(long, env = "RINGHOLD_ECHO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub echo_timeout: Duration,

    /// Also write the results as JSON to this file (schema: crates/ringhold-load/README.md).
    #[arg(long, env = "RINGHOLD_JSON")]
    pub json: Option<PathBuf>,

    /// Workers, one io_uring each (0 = one per CPU). Raised when needed: each ring's fixed-file
    /// table holds at most RLIMIT_NOFILE connections.
    #[arg(long, env = "RINGHOLD_WORKERS", default_value_t = 0)]
    pub workers: u32,

    /// Threads that drive the workers' rings, each thread several (one epoll wait on their
    /// eventfds, as `serve --threads`); worker w runs on thread w % threads. 0 = one per CPU, never
    /// more than the workers.
    #[arg(long, env = "RINGHOLD_LOAD_THREADS", default_value_t = 0)]
    pub threads: u32,

    /// Connects in flight per worker at most.
    #[arg(long, env = "RINGHOLD_MAX_PENDING", default_value_t = 512)]
    pub max_pending: u32,

    /// How sockets are made: `ring` (IORING_OP_SOCKET into a fixed slot, then SETSOCKOPT and BIND as
    /// io_uring ops; Linux 6.11+), `syscall` (socket/setsockopt/bind, then register the fd into the
    /// ring's table and close it), `auto` (ring when the kernel has IORING_OP_BIND).
    #[arg(long, env = "RINGHOLD_SETUP", value_enum, default_value = "auto")]
    pub setup: SetupMode,

    /// Run one part of a load spread over many processes or machines: `INDEX/COUNT` (0-based, e.g.
    /// `3/10`; a Kubernetes Indexed Job passes `$(JOB_COMPLETION_INDEX)/10`). --connections,
    /// --connect-rate and --rate are then totals over all parts: this process opens its share of the
    /// connections (the first `connections % COUNT` parts one more), at its share of the rates. The
    /// --sources (a list, a count, or what `auto` picks for the whole fleet) are split into COUNT
    /// contiguous blocks and this process connects from block INDEX only, so no two parts share a
    /// source address; `host:CIDR` sources are this host's own and are not split.
    #[arg(long, env = "RINGHOLD_PART", value_parser = parse_part)]
    pub part: Option<Part>,

    /// Serve this load generator's Prometheus metrics at ADDR (`GET /metrics`), or `off`: connections
    /// by state, heartbeats sent and echoed, failures by cause, a latency histogram. Summed over the
    /// processes of a fleet by one query (see grafana/ and deploy/kubernetes/load-job.yaml).
    #[arg(long, env = "RINGHOLD_LOAD_METRICS_LISTEN", default_value = "off",
          value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// After the run, keep serving --metrics-listen this long, so that the last scrape sees the final
    /// counts (a Job's pod ends with the process). SIGINT/SIGTERM ends it early.
    #[arg(long, env = "RINGHOLD_METRICS_LINGER", default_value = "0", value_parser = parse_duration)]
    pub metrics_linger: Duration,

    /// Print what this process would do (its part, connections, source addresses, rates, workers),
    /// check that its sources belong to this host, and exit without connecting.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    ringhold_metrics::parse_listen(s).map(MetricsListen)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadProtocol {
    Echo,
    Http,
    Websocket,
}

impl LoadProtocol {
    pub fn name(self) -> &'static str {
        match self {
            LoadProtocol::Echo => "echo",
            LoadProtocol::Http => "http",
            LoadProtocol::Websocket => "websocket",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupMode {
    Auto,
    Ring,
    Syscall,
}

/// `5000`, `5000/s` or `2.5` (per second).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    match t.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate (expected e.g. 20000 or 20000/s)"
        )),
    }
}

/// `MIN-MAX` sizes (`1-4096`, `1KiB-4KiB`) or one size.
pub fn parse_size_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (parse_size(a)?, parse_size(b)?);
    if a > b {
        return Err(format!("'{s}': the range ends before it starts"));
    }
    Ok((a, b))
}

/// `MIN-MAX` durations (`5s-45s`, `100ms-1s`) or one duration.
pub fn parse_duration_range(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (parse_duration(a)?, parse_duration(b)?);
    if a > b {
        return Err(format!("'{s}': the range ends before it starts"));
    }
    Ok((a, b))
}

/// The HTTP side of a plan.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    /// Request path; `?length=N` (or `&length=N`) is appended.
    pub path: String,
    /// `Host` header value.
    pub host: String,
    /// The http-kit pattern: (length range, pause range in µs). None: fixed length and schedule.
    pub kit: Option<HttpKit>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpKit {
    pub length: (u32, u32),
    pub pause_us: (u64, u64),
}

/// Longest `--http-path`: a request must fit one small send buffer.
pub const MAX_HTTP_PATH: usize = 1024;

/// Everything the workers need, derived once from the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    /// This process's connections (its share when `part` is set).
    pub connections: u32,
    /// `--part`, and the connections of all parts together.
    pub part: Option<(Part, u64)>,
    /// Source addresses, in turn (empty: the kernel picks).
    pub sources: Vec<Ipv4Addr>,
    /// Echo: heartbeat size. HTTP: the body length each GET asks for (http-kit: see `http`).
    /// The sources were chosen by `--sources auto` (not given, not `kernel`).
    pub sources_auto: bool,
    pub message_size: usize,
    pub protocol: LoadProtocol,
    /// Set when `protocol` is HTTP.
    pub http: Option<HttpPlan>,
    /// Heartbeat period per connection (None: hold idle, or the http-kit pattern).
    pub period: Option<Duration>,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    pub echo_timeout: Duration,
    pub workers: u32,
    /// Threads driving the workers (worker w on thread w % threads).
    pub threads: u32,
    /// Fixed-file slots per ring (the most connections one worker opens).
    pub slots_per_ring: u32,
    pub max_pending: u32,
    pub setup: SetupMode,
    /// Notes for the user (e.g. why there are more workers than asked for).
    pub notes: Vec<String>,
}

impl Plan {
    /// `table_max` is the most slots one ring's fixed-file table may have (RLIMIT_NOFILE soft limit);
    /// `port_span` the ephemeral ports per source ([`local_port_span`]; None: unknown, the default
    /// range is assumed).
    pub fn new(
        a: &LoadArgs,
        table_max: u32,
        cpus: u32,
        port_span: Option<u32>,
    ) -> Result<Plan, String> {
        let target = a
            .target
            .to_socket_addrs()
            .map_err(|e| format!("--target {}: {e}", a.target))?
            .next()
            .ok_or_else(|| format!("--target {}: no address", a.target))?;
        if a.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let span = port_span.unwrap_or(DEFAULT_PORT_SPAN).max(1);
        let total = u64::from(a.connections);
        // This part's connections and share of the rates (all of them without --part).
        let (connections, fraction) = match a.part {
            None => (a.connections, 1.0),
            Some(p) => {
                let mine = p.share(total);
                if mine == 0 {
                    return Err(format!(
                        "--connections {total} is fewer than the {} parts of --part: part {p} would open none",
                        p.count
                    ));
                }
                (mine as u32, mine as f64 / total as f64)
            }
        };
        // The fleet's sources, then this part's block of them (host:CIDR ones are this host's own).
        let parts = a.part.map_or(1, |p| p.count);
        let (sources, sources_auto) = match &a.sources {
            Sources::Auto => (auto_sources(&target, total, span, parts), true),
            Sources::Kernel => (Vec::new(), false),
            Sources::List(v) | Sources::Host(v) => (v.clone(), false),
        };
        let split = !matches!(a.sources, Sources::Host(_));
        let sources = match a.part {
            Some(p) if split && !sources.is_empty() => part_sources(&sources, p)?,
            _ => sources,
        };
        if !sources.is_empty() && target.is_ipv6() {
            return Err("--sources are IPv4 addresses but --target is IPv6".into());
        }
        let http_default = if a.protocol == LoadProtocol::Http {
            1024
        } else {
            64
        };
        let message_size =
            usize::try_from(a.message_size.unwrap_or(http_default)).unwrap_or(usize::MAX);
        let min_size = match a.protocol {
            LoadProtocol::Echo | LoadProtocol::Websocket => pattern::MIN_SIZE,
            LoadProtocol::Http => 1,
        };
        if !(min_size..=(1 << 20)).contains(&message_size) {
            return Err(format!("--message-size must be {min_size} B..1 MiB"));
        }
        let http = match a.protocol {
            LoadProtocol::Echo | LoadProtocol::Websocket if a.http_kit => {
                return Err("--http-kit needs --protocol http".into())
            }
            LoadProtocol::Echo | LoadProtocol::Websocket => None,
            LoadProtocol::Http => Some(http_plan(a)?),
        };
        let period = match a.rate {
            _ if a.http_kit => {
                if a.rate.is_some() {
                    return Err("--http-kit sets its own pauses: drop --rate".into());
                }
                None
            }
            // From the totals: every part sends at the same per-connection period.
            Some(r) if r > 0.0 => Some(Duration::from_secs_f64(total as f64 / r)),
            Some(_) => {
                return Err("--rate must be above 0 (use --interval 0 to send nothing)".into())
            }
            None if a.interval.is_zero() => None,
            None => Some(a.interval),
        };
        if a.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if a.connect_timeout.is_zero() || a.echo_timeout.is_zero() {
            return Err("--connect-timeout and --echo-timeout must be above 0".into());
        }
        if a.max_pending == 0 {
            return Err("--max-pending must be at least 1".into());
        }
        let table_max = table_max.clamp(1, 1 << 20);
        let mut notes = Vec::new();
        let asked = if a.workers == 0 {
            cpus.max(1)
        } else {
            a.workers
        };
        let needed = connections.div_ceil(table_max);
        let workers = asked.max(needed).min(connections).min(4096);
        if workers > asked {
            notes.push(format!(
                "using {workers} workers (asked for {asked}): each io_uring fixed-file table holds at most \
                 {table_max} connections (RLIMIT_NOFILE)"
            ));
        }
        let slots_per_ring = connections.div_ceil(workers);
        let threads = if a.threads == 0 {
            cpus.max(1)
        } else {
            a.threads
        }
        .min(workers);
        let n = u64::from(connections);
        let n_src = sources.len().max(1) as u64;
        let per_source = u64::from(connections_per_source(span));
        // A list is split over the parts: the fleet needs this many for every part.
        let want = sources_needed(n, 1, span) * if split { u64::from(parts) } else { 1 };
        if sources_auto && sources.len() > 1 {
            notes.push(format!(
                "connecting from {} source addresses {}-{} (--sources auto: at most {per_source} connections \
                 per source, {SOURCE_FILL_PERCENT} % of the {span} ephemeral ports, keeps connect() fast; \
                 --sources kernel or an explicit list overrides)",
                sources.len(),
                sources[0],
                sources[sources.len() - 1],
            ));
        } else if n > n_src * per_source {
            let how = if target.is_ipv6() {
                "an IPv6 target has one loopback source; use an IPv4 target with --sources"
                    .to_string()
            } else if sources.is_empty() && !target.ip().is_loopback() {
                format!(
                    "give {want} of this host's addresses with --sources (ringhold doctor --connections {n} \
                     says how many a run needs)"
                )
            } else {
                format!("use --sources {want} (or more)")
            };
            let what = if n > n_src * u64::from(span) {
                format!("need more than the {span} ephemeral ports per source: expect 'no address' failures")
            } else {
                format!(
                    "fill more than {SOURCE_FILL_PERCENT} % of a source's {span} ephemeral ports: connect() \
                     slows down sharply once half of them are taken"
                )
            };
            notes.push(format!(
                "{n} connections from {n_src} source address(es) {what}; {how}"
            ));
        }
        Ok(Plan {
            target,
            connections,
            part: a.part.map(|p| (p, total)),
            sources,
            sources_auto,
            message_size,
            protocol: a.protocol,
            http,
            period,
            rate: a.rate.map(|r| r * fraction),
            duration: a.duration,
            connect_rate: a.connect_rate * fraction,
            connect_timeout: a.connect_timeout,
            echo_timeout: a.echo_timeout,
            workers,
            threads,
            slots_per_ring,
            max_pending: a.max_pending,
            setup: a.setup,
            notes,
        })
    }

    /// Whether connections send anything (heartbeats, requests) or are only held.
    pub fn sends(&self) -> bool {
        self.period.is_some() || self.http_kit().is_some()
    }

    pub fn http_kit(&self) -> Option<HttpKit> {
        self.http.as_ref().and_then(|h| h.kit)
    }

    /// How many connections worker `w` opens: global connection k goes to worker k % workers.
    pub fn quota(&self, w: u32) -> u32 {
        let (n, k) = (self.connections, self.workers);
        n / k + u32::from(w < n % k)
    }

    /// Source address of the i-th connection of worker `w` (sources are spread over all connections).
    pub fn source_index(&self, w: u32, i: u32) -> Option<usize> {
        if self.sources.is_empty() {
            return None;
        }
        let global = u64::from(i) * u64::from(self.workers) + u64::from(w);
        Some((global % self.sources.len() as u64) as usize)
    }
}

fn http_plan(a: &LoadArgs) -> Result<HttpPlan, String> {
    let path = &a.http_path;
    if !path.starts_with('/')
        || path.len() > MAX_HTTP_PATH
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "--http-path '{path}': must start with '/', be visible ASCII without spaces, at most {MAX_HTTP_PATH} bytes"
        ));
    }
    let kit = if a.http_kit {
        let (lo, hi) = a.http_kit_length;
        if lo == 0 || hi > 1 << 20 {
            return Err("--http-kit-length must be within 1 B..1 MiB".into());
        }
        let (p0, p1) = a.http_kit_pause;
        Some(HttpKit {
            length: (lo as u32, hi as u32),
            pause_us: (p0.as_micros() as u64, p1.as_micros() as u64),
        })
    } else {
        None
    };
    Ok(HttpPlan {
        path: path.clone(),
        host: a.target.clone(),
        kit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_size_range("1-4096").unwrap(), (1, 4096));
        assert_eq!(parse_size_range("2KiB").unwrap(), (2048, 2048));
        assert!(parse_size_range("9-3").is_err());
        assert_eq!(
            parse_duration_range("5s-45s").unwrap(),
            (Duration::from_secs(5), Duration::from_secs(45))
        );
        assert!(parse_duration_range("1s-x").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20000/s").unwrap(), 20000.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
    }

    fn parse(extra: &[&str]) -> Result<LoadArgs, clap::Error> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: LoadArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(extra);
        T::try_parse_from(argv).map(|t| t.a)
    }

    fn args(connections: u32, workers: u32) -> LoadArgs {
        let c = connections.to_string();
        let w = workers.to_string();
        parse(&["--connections", &c, "--workers", &w]).unwrap()
    }

    #[test]
    fn http_plans() {
        let p = Plan::new(&parse(&["--protocol", "http"]).unwrap(), 20_000, 2, None).unwrap();
        assert_eq!(p.message_size, 1024);
        let h = p.http.as_ref().unwrap();
        assert_eq!((h.path.as_str(), h.host.as_str()), ("/", "127.0.0.1:7000"));
        assert!(h.kit.is_none() && p.sends());
        let p = Plan::new(
            &parse(&["--protocol", "http", "--http-kit"]).unwrap(),
            20_000,
            2,
            None,
        )
        .unwrap();
        let kit = p.http_kit().unwrap();
        assert_eq!(kit.length, (1, 4096));
        assert_eq!(kit.pause_us, (5_000_000, 45_000_000));
        assert!(p.period.is_none() && p.sends());
        let p = Plan::new(&parse(&[]).unwrap(), 20_000, 2, None).unwrap();
        assert_eq!(p.message_size, 64);
        assert!(p.http.is_none());
        for bad in [
            &["--http-kit"][..],
            &["--protocol", "http", "--http-kit", "--rate", "5"],
            &["--protocol", "http", "--http-path", "x"],
            &["--protocol", "http", "--http-path", "/a b"],
            &[
                "--protocol",
                "http",
                "--http-kit",
                "--http-kit-length",
                "0-9",
            ],
            &["--message-size", "4"],
        ] {
            assert!(
                Plan::new(&parse(bad).unwrap(), 20_000, 2, None).is_err(),
                "{bad:?}"
            );
        }
    }

    /// The plan for `connections` to `target` with the default port range (28,232 ports).
    fn plan_for(target: &str, connections: u32, extra: &[&str]) -> Plan {
        let c = connections.to_string();
        let mut a = vec!["--target", target, "--connections", &c];
        a.extend_from_slice(extra);
        Plan::new(&parse(&a).unwrap(), 20_000, 2, Some(DEFAULT_PORT_SPAN)).unwrap()
    }

    #[test]
    fn auto_sources_keep_every_source_under_its_budget_on_loopback() {
        // The issue-14 cases: 300k flat out crawled from 16 sources; 1M from 50 stalled.
        for n in [300_000u32, 1_000_000] {
            let p = plan_for("127.0.0.1:7000", n, &[]);
            assert!(p.sources_auto);
            let k = p.sources.len() as u64;
            assert_eq!(k, sources_needed(u64::from(n), 1, DEFAULT_PORT_SPAN));
            assert!(k >= 36, "{n}: {k} sources");
            // Connections go round-robin over the sources: the fullest one carries ⌈n / k⌉.
            let mut per = vec![0u64; p.sources.len()];
            for w in 0..p.workers {
                for i in 0..p.quota(w) {
                    per[p.source_index(w, i).unwrap()] += 1;
                }
            }
            let max = per.iter().copied().max().unwrap();
            assert!(
                max <= u64::from(connections_per_source(DEFAULT_PORT_SPAN)),
                "{max}"
            );
            assert_eq!(per.iter().sum::<u64>(), u64::from(n));
            // Distinct 127.x addresses from 127.0.0.2 on.
            assert_eq!(p.sources[0], Ipv4Addr::new(127, 0, 0, 2));
            let mut uniq = p.sources.clone();
            uniq.dedup();
            assert_eq!(uniq.len(), p.sources.len());
            assert!(p.sources.iter().all(|a| a.is_loopback()));
            assert!(
                p.notes.iter().any(|n| n.contains("--sources auto")),
                "{:?}",
                p.notes
            );
        }
        // Any 127.x target counts as loopback.
        assert_eq!(plan_for("127.0.3.9:7000", 100_000, &[]).sources.len(), 12);
    }

    #[test]
    fn auto_sources_leave_small_runs_and_other_targets_to_the_kernel() {
        let p = plan_for("127.0.0.1:7000", 8_000, &[]);
        assert!(p.sources.is_empty() && p.notes.is_empty(), "{:?}", p.notes);
        let p = plan_for("192.0.2.1:7000", 20_000, &[]);
        assert!(
            p.notes.iter().any(|n| n.contains("slows down")),
            "{:?}",
            p.notes
        );
        // Not loopback: the kernel picks, and a large run is told what it needs.
        let p = plan_for("192.0.2.1:7000", 100_000, &[]);
        assert!(p.sources.is_empty());
        assert!(
            p.notes.iter().any(|n| n.contains("ringhold doctor")),
            "{:?}",
            p.notes
        );
        let p = plan_for("[::1]:7000", 100_000, &[]);
        assert!(p.sources.is_empty());
        assert!(p.notes.iter().any(|n| n.contains("IPv6")), "{:?}", p.notes);
    }

    #[test]
    fn explicit_sources_override_auto() {
        let p = plan_for("127.0.0.1:7000", 300_000, &["--sources", "kernel"]);
        assert!(p.sources.is_empty() && !p.sources_auto);
        assert!(
            p.notes.iter().any(|n| n.contains("--sources 36")),
            "{:?}",
            p.notes
        );
        let p = plan_for("127.0.0.1:7000", 300_000, &["--sources", "16"]);
        assert_eq!((p.sources.len(), p.sources_auto), (16, false));
        assert!(
            p.notes.iter().any(|n| n.contains("slows down")),
            "{:?}",
            p.notes
        );
        let p = plan_for(
            "127.0.0.1:7000",
            300_000,
            &["--sources", "127.0.9.1-127.0.9.40"],
        );
        assert_eq!(p.sources.len(), 40);
        assert_eq!(p.sources[0], Ipv4Addr::new(127, 0, 9, 1));
        assert!(
            !p.notes.iter().any(|n| n.contains("source")),
            "{:?}",
            p.notes
        );
        // Not enough ports at all.
        let p = plan_for("127.0.0.1:7000", 100_000, &["--sources", "2"]);
        assert!(
            p.notes.iter().any(|n| n.contains("'no address'")),
            "{:?}",
            p.notes
        );
    }

    fn plan_of(argv: &[&str]) -> Result<Plan, String> {
        Plan::new(&parse(argv).unwrap(), 20_000, 2, Some(DEFAULT_PORT_SPAN))
    }

    #[test]
    fn a_part_takes_its_share_of_connections_sources_and_rates() {
        let all = [
            "-c",
            "301",
            "--sources",
            "127.0.0.2-127.0.0.6",
            "--connect-rate",
            "602",
        ];
        let p0 = plan_of(&[&all[..], &["--part", "0/2", "--rate", "301"]].concat()).unwrap();
        let p1 = plan_of(&[&all[..], &["--part", "1/2", "--rate", "301"]].concat()).unwrap();
        assert_eq!((p0.connections, p1.connections), (151, 150));
        assert_eq!(p0.sources.len() + p1.sources.len(), 5);
        assert_eq!(p0.sources.last(), Some(&Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(p1.sources.first(), Some(&Ipv4Addr::new(127, 0, 0, 5)));
        assert_eq!(p0.connect_rate, 302.0);
        // Every part sends at the fleet's per-connection period: 301 connections / 301 msg/s = 1 s.
        assert_eq!(p0.period, Some(Duration::from_secs(1)));
        assert_eq!(p1.period, Some(Duration::from_secs(1)));
        assert_eq!(p1.part.map(|(p, t)| (p.index, t)), Some((1, 301)));
        // Too few sources or connections for the parts.
        assert!(plan_of(&["-c", "100", "--sources", "2", "--part", "0/3"]).is_err());
        assert!(plan_of(&["-c", "2", "--part", "2/3"]).is_err());
        assert_eq!(
            plan_of(&["-c", "2", "--part", "1/3"]).unwrap().connections,
            1
        );
        // host:CIDR sources are this host's own: every part uses all of them.
        let host = [
            "-c",
            "100",
            "--sources",
            "host:127.0.0.0/8",
            "--part",
            "1/4",
        ];
        let own = plan_of(&host).unwrap();
        assert!(
            own.sources.contains(&Ipv4Addr::LOCALHOST),
            "{:?}",
            own.sources
        );
    }

    #[test]
    fn auto_sources_are_split_over_the_parts_without_sharing() {
        // 300k connections need 36 sources on one host; 4 parts take 9 each, in order.
        let mut seen = Vec::new();
        for i in 0..4 {
            let part = format!("{i}/4");
            let p = plan_for("127.0.0.1:7000", 300_000, &["--part", &part]);
            assert!(p.sources_auto);
            assert_eq!(p.connections, 75_000);
            assert_eq!(p.sources.len(), 9, "{:?}", p.notes);
            assert!(
                p.notes.iter().any(|n| n.contains("--sources auto")),
                "{:?}",
                p.notes
            );
            seen.extend(p.sources);
        }
        let k = sources_needed(300_000, 1, DEFAULT_PORT_SPAN) as usize;
        assert_eq!(seen.len(), k);
        assert_eq!(seen[0], Ipv4Addr::new(127, 0, 0, 2));
        assert!(seen
            .windows(2)
            .all(|w| u32::from(w[1]) == u32::from(w[0]) + 1));
        // 20k over 10 parts: 3 sources would do for one process, but each part gets its own.
        let p = plan_for("127.0.0.1:7000", 20_000, &["--part", "9/10"]);
        assert_eq!(p.sources, vec![Ipv4Addr::new(127, 0, 0, 11)]);
        // Small fleets stay with the kernel's choice.
        let p = plan_for("127.0.0.1:7000", 8_000, &["--part", "0/2"]);
        assert!(p.sources.is_empty());
        // An explicit list too short for the fleet says how many the fleet needs.
        let p = plan_for(
            "127.0.0.1:7000",
            300_000,
            &["--sources", "8", "--part", "0/2"],
        );
        assert!(
            p.notes.iter().any(|n| n.contains("--sources 36")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn workers_grow_with_the_table_limit_and_quotas_add_up() {
        let p = Plan::new(&args(1_000_000, 2), 20_000, 2, None).unwrap();
        assert_eq!(p.workers, 50);
        assert!(p.slots_per_ring <= 20_000);
        assert_eq!((0..p.workers).map(|w| p.quota(w)).sum::<u32>(), 1_000_000);
        let p = Plan::new(&args(1001, 4), 20_000, 2, None).unwrap();
        assert_eq!(p.workers, 4);
        assert_eq!((0..4).map(|w| p.quota(w)).sum::<u32>(), 1001);
        assert!((0..4).all(|w| p.quota(w) <= p.slots_per_ring));
    }
}
