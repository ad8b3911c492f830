//! Command-line flags of `ringhold load` and the plan derived from them: target, sources, how many
//! workers (one io_uring each) and how many connections each opens.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ringhold_core::units::{parse_duration, parse_size};

pub use crate::fleet::{parse_part, Part};
use crate::pattern;

#[derive(clap::Args, Debug, Clone)]
#[command(
    long_about = "Opens and holds --connections TCP connections to an echo server, sends each a \
heartbeat every --interval (or --rate messages per second in total) and verifies every echoed byte. \
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

    /// Source addresses to connect from: a range (127.0.0.2-127.0.3.255), one address, a count K
    /// (K addresses from 127.0.0.2 on), or `host:CIDR`: every IPv4 address this host has inside CIDR
    /// (e.g. host:10.64.0.0/16; on Kubernetes' host network, the node's own load addresses). Each
    /// source has its own ephemeral port range (sockets are bound with IP_BIND_ADDRESS_NO_PORT),
    /// about 28,000 connections per source and target by default. Default: the kernel picks the
    /// source.
    #[arg(long, env = "RINGHOLD_SOURCES", value_parser = parse_sources)]
    pub sources: Option<Sources>,

    /// Heartbeat size (at least 8 bytes: connection id and sequence number, then a checked pattern).
    #[arg(long, env = "RINGHOLD_MESSAGE_SIZE", default_value = "64", value_parser = parse_size)]
    pub message_size: u64,

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

    /// Worker threads, one io_uring each (0 = one per CPU). Raised when needed: each ring's
    /// fixed-file table holds at most RLIMIT_NOFILE connections.
    #[arg(long, env = "RINGHOLD_WORKERS", default_value_t = 0)]
    pub workers: u32,

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
    /// --sources are split into COUNT contiguous blocks and this process connects from block INDEX
    /// only, so no two parts share a source address.
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
pub enum SetupMode {
    Auto,
    Ring,
    Syscall,
}

/// A list of IPv4 source addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    pub addrs: Vec<Ipv4Addr>,
    /// Found on this host (`host:CIDR`): already this machine's own, so `--part` does not split them.
    pub from_host: bool,
}

impl Sources {
    fn list(addrs: Vec<Ipv4Addr>) -> Sources {
        Sources {
            addrs,
            from_host: false,
        }
    }
}

const MAX_SOURCES: u32 = 1 << 16;

/// `127.0.0.2-127.0.3.255`, `127.0.0.9`, a count `K` (K addresses from 127.0.0.2), or `host:CIDR`
/// (this host's IPv4 addresses inside CIDR, looked up now).
pub fn parse_sources(s: &str) -> Result<Sources, String> {
    let t = s.trim();
    if let Some(cidr) = t.strip_prefix("host:") {
        let (net, len) = parse_cidr(cidr).map_err(|e| format!("'{s}': {e}"))?;
        let addrs = crate::setup::host_ipv4_addresses()
            .map_err(|e| format!("'{s}': listing this host's addresses: {e}"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let mut inside: Vec<Ipv4Addr> = addrs
            .into_iter()
            .filter(|a| u32::from(*a) & mask == u32::from(net) & mask)
            .collect();
        inside.sort();
        inside.dedup();
        if inside.is_empty() {
            return Err(format!(
                "'{s}': this host has no IPv4 address inside {cidr} (add the load addresses to the node, \
                 e.g. `ip addr add ADDR/32 dev IFACE`; in Kubernetes the pod needs hostNetwork to see them)"
            ));
        }
        inside.truncate(MAX_SOURCES as usize);
        return Ok(Sources {
            addrs: inside,
            from_host: true,
        });
    }
    if let Ok(k) = t.parse::<u32>() {
        if k == 0 || k > MAX_SOURCES {
            return Err(format!(
                "'{s}': the count of sources must be 1..={MAX_SOURCES}"
            ));
        }
        let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
        return Ok(Sources::list(
            (first..first + k).map(Ipv4Addr::from).collect(),
        ));
    }
    let (a, b) = match t.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (t, t),
    };
    let parse = |x: &str| {
        x.parse::<Ipv4Addr>()
            .map_err(|_| format!("'{s}' is not a source range (expected e.g. 127.0.0.2-127.0.3.255, 127.0.0.5 or a count)"))
    };
    let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
    if b < a {
        return Err(format!("'{s}': the range ends before it starts"));
    }
    if b - a >= MAX_SOURCES {
        return Err(format!("'{s}': at most {MAX_SOURCES} sources"));
    }
    Ok(Sources::list((a..=b).map(Ipv4Addr::from).collect()))
}

/// `10.64.0.0/16` → (network, prefix length).
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or("expected an IPv4 CIDR such as 10.64.0.0/16")?;
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a} is not an IPv4 address"))?;
    match l.trim().parse::<u8>() {
        Ok(l) if l <= 32 => Ok((a, l)),
        _ => Err(format!("/{l} is not a prefix length (0..=32)")),
    }
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

/// Everything the workers need, derived once from the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    /// This process's connections (its share when `part` is set).
    pub connections: u32,
    /// `--part`, and the connections of all parts together.
    pub part: Option<(Part, u64)>,
    pub sources: Vec<Ipv4Addr>,
    pub message_size: usize,
    /// Heartbeat period per connection (None: hold idle).
    pub period: Option<Duration>,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    pub echo_timeout: Duration,
    pub workers: u32,
    /// Fixed-file slots per ring (the most connections one worker opens).
    pub slots_per_ring: u32,
    pub max_pending: u32,
    pub setup: SetupMode,
    /// Notes for the user (e.g. why there are more workers than asked for).
    pub notes: Vec<String>,
}

/// Ephemeral ports per source address and target: net.ipv4.ip_local_port_range.
pub fn local_port_span() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

impl Plan {
    /// `table_max` is the most slots one ring's fixed-file table may have (RLIMIT_NOFILE soft limit).
    pub fn new(a: &LoadArgs, table_max: u32, cpus: u32) -> Result<Plan, String> {
        let target = a
            .target
            .to_socket_addrs()
            .map_err(|e| format!("--target {}: {e}", a.target))?
            .next()
            .ok_or_else(|| format!("--target {}: no address", a.target))?;
        if a.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let total = u64::from(a.connections);
        let from_host = a.sources.as_ref().is_some_and(|s| s.from_host);
        let mut sources = a.sources.clone().map(|s| s.addrs).unwrap_or_default();
        // This part's connections, sources and rates (all of them without --part).
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
                if !sources.is_empty() && !from_host {
                    let n = sources.len() as u64;
                    if n < u64::from(p.count) {
                        return Err(format!(
                            "--sources has {n} address(es) for {} parts: each part needs its own (at least one per part)",
                            p.count
                        ));
                    }
                    let from = p.offset(n) as usize;
                    sources = sources[from..from + p.share(n) as usize].to_vec();
                }
                (mine as u32, mine as f64 / total as f64)
            }
        };
        if !sources.is_empty() && target.is_ipv6() {
            return Err("--sources are IPv4 addresses but --target is IPv6".into());
        }
        let message_size = usize::try_from(a.message_size).unwrap_or(usize::MAX);
        if !(pattern::MIN_SIZE..=(1 << 20)).contains(&message_size) {
            return Err(format!(
                "--message-size must be {} B..1 MiB",
                pattern::MIN_SIZE
            ));
        }
        // From the totals: every part sends at the same per-connection period.
        let period = match a.rate {
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
        if let Some(span) = local_port_span() {
            let n_src = sources.len().max(1) as u64;
            if u64::from(connections) > n_src * u64::from(span) {
                notes.push(format!(
                    "{} connections from {n_src} source address(es) need more than the {span} ephemeral ports \
                     per source: expect 'no address' failures; use --sources {}",
                    connections,
                    u64::from(connections).div_ceil(u64::from(span) * 9 / 10)
                        * a.part.map_or(1, |p| u64::from(p.count))
                ));
            }
        }
        Ok(Plan {
            target,
            connections,
            part: a.part.map(|p| (p, total)),
            sources,
            message_size,
            period,
            rate: a.rate.map(|r| r * fraction),
            duration: a.duration,
            connect_rate: a.connect_rate * fraction,
            connect_timeout: a.connect_timeout,
            echo_timeout: a.echo_timeout,
            workers,
            slots_per_ring,
            max_pending: a.max_pending,
            setup: a.setup,
            notes,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let s = parse_sources("4").unwrap().addrs;
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 0, 5));
        let s = parse_sources("127.0.0.2-127.0.3.255").unwrap().addrs;
        assert_eq!(s.len(), 254 + 3 * 256);
        assert_eq!(s.last(), Some(&Ipv4Addr::new(127, 0, 3, 255)));
        assert_eq!(
            parse_sources("127.0.0.9").unwrap().addrs,
            vec![Ipv4Addr::new(127, 0, 0, 9)]
        );
        assert!(parse_sources("0").is_err());
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("localhost").is_err());
        // This host's own addresses: loopback has 127.0.0.1; a block where this host has none
        // (documentation ranges, unless this machine uses one) is an error.
        let own = parse_sources("host:127.0.0.0/8").unwrap();
        assert!(own.from_host && own.addrs.contains(&Ipv4Addr::LOCALHOST));
        let mine = crate::setup::host_ipv4_addresses().unwrap();
        for (cidr, net) in [
            ("203.0.113.0/24", [203, 0, 113]),
            ("198.51.100.0/24", [198, 51, 100]),
        ] {
            let has = mine.iter().any(|a| a.octets()[..3] == net);
            let got = parse_sources(&format!("host:{cidr}"));
            assert_eq!(got.is_ok(), has, "{cidr}: {got:?} (host: {mine:?})");
        }
        assert!(parse_sources("host:10.0.0.0").is_err());
        assert!(parse_sources("host:10.0.0.0/33").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20000/s").unwrap(), 20000.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
    }

    fn plan_of(argv: &[&str]) -> Result<Plan, String> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: LoadArgs,
        }
        let mut v = vec!["t"];
        v.extend_from_slice(argv);
        Plan::new(&T::parse_from(v).a, 20_000, 2)
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
    }

    fn args(connections: u32, workers: u32) -> LoadArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: LoadArgs,
        }
        let c = connections.to_string();
        let w = workers.to_string();
        T::parse_from(["t", "--connections", &c, "--workers", &w]).a
    }

    #[test]
    fn workers_grow_with_the_table_limit_and_quotas_add_up() {
        let p = Plan::new(&args(1_000_000, 2), 20_000, 2).unwrap();
        assert_eq!(p.workers, 50);
        assert!(p.slots_per_ring <= 20_000);
        assert_eq!((0..p.workers).map(|w| p.quota(w)).sum::<u32>(), 1_000_000);
        let p = Plan::new(&args(1001, 4), 20_000, 2).unwrap();
        assert_eq!(p.workers, 4);
        assert_eq!((0..4).map(|w| p.quota(w)).sum::<u32>(), 1001);
        assert!((0..4).all(|w| p.quota(w) <= p.slots_per_ring));
    }
}
