//! Where `ringhold load` connects from (`--sources`): parsing, how many source addresses a run needs
//! so that connect() stays fast (`--sources auto`; `ringhold doctor` uses the same rule), and which
//! block of them one part of a fleet (`--part`) connects from.

use std::net::{Ipv4Addr, SocketAddr};

use crate::fleet::Part;

/// Where the connections come from (`--sources`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sources {
    /// Enough 127.x sources for a loopback IPv4 target ([`auto_sources`]); otherwise the kernel
    /// picks.
    Auto,
    /// The kernel picks the source address (sockets are not bound).
    Kernel,
    /// These IPv4 addresses, in turn (split into blocks over the parts of `--part`).
    List(Vec<Ipv4Addr>),
    /// `host:CIDR`: this host's own IPv4 addresses inside CIDR, found when the flag is parsed. They
    /// are already this machine's, so `--part` does not split them.
    Host(Vec<Ipv4Addr>),
}

const MAX_SOURCES: u32 = 1 << 16;

/// The first address of a count of sources (`--sources K`) and of `auto`.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The share of a source's ephemeral port range one source may fill, in percent. connect() tries
/// ports of one parity first (since Linux 4.6, `__inet_hash_connect` leaves the other half to
/// bind()), so once half of a source's ports are taken every connect walks that whole half before it
/// tries the other. Measured here: 300,000 connections from 16 sources (66 % full) crawled at 5.7k/s
/// where 64 sources (17 %) made 37.7k/s; 50 sources stalled a million-connection ramp at ~710,000
/// (50 %); one source reached ~14,000 of 20,000 in a second, then a few hundred a second
/// (bench/results/2026-11-29-vm-sources). 30 % keeps the search short.
pub const SOURCE_FILL_PERCENT: u32 = 30;

/// Default net.ipv4.ip_local_port_range (32768-60999) when it cannot be read.
pub const DEFAULT_PORT_SPAN: u32 = 60_999 - 32_768 + 1;

/// Connections one source address should carry to one target so that connect() stays fast, for a
/// port range of `port_span` ports (8,469 for the default range, 19,353 for 1024-65535).
pub fn connections_per_source(port_span: u32) -> u32 {
    (u64::from(port_span) * u64::from(SOURCE_FILL_PERCENT) / 100).max(1) as u32
}

/// Source addresses `connections` connections spread over `targets` server addresses need so that no
/// (source, target) pair's port range is more than [`SOURCE_FILL_PERCENT`] used (at least 1).
/// `ringhold load --sources auto` and `ringhold doctor` both use this.
pub fn sources_needed(connections: u64, targets: u64, port_span: u32) -> u64 {
    let per = u64::from(connections_per_source(port_span)) * targets.max(1);
    connections.div_ceil(per).max(1)
}

/// What `--sources auto` picks for `connections` (over all `parts` of a `--part` fleet): for a
/// 127.x target, [`sources_needed`] addresses from 127.0.0.2 on, at least one per part so that the
/// parts' blocks ([`part_sources`]) never share one (empty when one source will do for all, so the
/// kernel picks as without `--sources`); for any other target none (the kernel picks: the host's
/// other addresses are not ours to guess).
pub fn auto_sources(
    target: &SocketAddr,
    connections: u64,
    port_span: u32,
    parts: u32,
) -> Vec<Ipv4Addr> {
    let SocketAddr::V4(t) = target else {
        return Vec::new();
    };
    if !t.ip().is_loopback() {
        return Vec::new();
    }
    let k = sources_needed(connections, 1, port_span);
    if k <= 1 {
        return Vec::new();
    }
    let k = k.max(u64::from(parts)).min(u64::from(MAX_SOURCES)) as u32;
    let first = u32::from(FIRST_SOURCE);
    (first..first + k).map(Ipv4Addr::from).collect()
}

/// Part `part`'s contiguous block of the fleet's `sources`: no two parts share a source address.
pub fn part_sources(sources: &[Ipv4Addr], part: Part) -> Result<Vec<Ipv4Addr>, String> {
    let n = sources.len() as u64;
    if n < u64::from(part.count) {
        return Err(format!(
            "--sources has {n} address(es) for {} parts: each part needs its own (at least one per part)",
            part.count
        ));
    }
    let from = part.offset(n) as usize;
    Ok(sources[from..from + part.share(n) as usize].to_vec())
}

/// `auto`, `kernel`, `127.0.0.2-127.0.3.255`, `127.0.0.9`, a count `K` (K addresses from
/// 127.0.0.2), or `host:CIDR` (this host's IPv4 addresses inside CIDR, looked up now).
pub fn parse_sources(s: &str) -> Result<Sources, String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "auto" => return Ok(Sources::Auto),
        "kernel" => return Ok(Sources::Kernel),
        _ => {}
    }
    if let Some(cidr) = t.strip_prefix("host:") {
        let addrs = crate::setup::host_ipv4_addresses()
            .map_err(|e| format!("'{s}': listing this host's addresses: {e}"))?;
        return host_sources(s, cidr, addrs).map(Sources::Host);
    }
    if let Ok(k) = t.parse::<u32>() {
        if k == 0 || k > MAX_SOURCES {
            return Err(format!(
                "'{s}': the count of sources must be 1..={MAX_SOURCES}"
            ));
        }
        let first = u32::from(FIRST_SOURCE);
        return Ok(Sources::List(
            (first..first + k).map(Ipv4Addr::from).collect(),
        ));
    }
    let (a, b) = match t.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (t, t),
    };
    let parse = |x: &str| {
        x.parse::<Ipv4Addr>()
            .map_err(|_| format!("'{s}' is not a source range (expected auto, kernel, e.g. 127.0.0.2-127.0.3.255, 127.0.0.5, a count or host:CIDR)"))
    };
    let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
    if b < a {
        return Err(format!("'{s}': the range ends before it starts"));
    }
    if b - a >= MAX_SOURCES {
        return Err(format!("'{s}': at most {MAX_SOURCES} sources"));
    }
    Ok(Sources::List((a..=b).map(Ipv4Addr::from).collect()))
}

/// The addresses of `host` (this host's) inside `cidr`, sorted, for `--sources host:CIDR` (`flag`).
fn host_sources(flag: &str, cidr: &str, host: Vec<Ipv4Addr>) -> Result<Vec<Ipv4Addr>, String> {
    let (net, len) = parse_cidr(cidr).map_err(|e| format!("'{flag}': {e}"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let mut inside: Vec<Ipv4Addr> = host
        .into_iter()
        .filter(|a| u32::from(*a) & mask == u32::from(net) & mask)
        .collect();
    inside.sort();
    inside.dedup();
    if inside.is_empty() {
        return Err(format!(
            "'{flag}': this host has no IPv4 address inside {cidr} (add the load addresses to the node, \
             e.g. `ip addr add ADDR/32 dev IFACE`; in Kubernetes the pod needs hostNetwork to see them)"
        ));
    }
    inside.truncate(MAX_SOURCES as usize);
    Ok(inside)
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

/// Ephemeral ports per source address and target: net.ipv4.ip_local_port_range.
pub fn local_port_span() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<Ipv4Addr> {
        match parse_sources(s).unwrap() {
            Sources::List(v) => v,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sources() {
        let s = list("4");
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 0, 5));
        let s = list("127.0.0.2-127.0.3.255");
        assert_eq!(s.len(), 254 + 3 * 256);
        assert_eq!(s.last(), Some(&Ipv4Addr::new(127, 0, 3, 255)));
        assert_eq!(list("127.0.0.9"), vec![Ipv4Addr::new(127, 0, 0, 9)]);
        assert_eq!(parse_sources("auto"), Ok(Sources::Auto));
        assert_eq!(parse_sources(" Kernel "), Ok(Sources::Kernel));
        assert!(parse_sources("0").is_err());
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("localhost").is_err());
        // This host's own addresses: loopback has 127.0.0.1; a block where this host has none
        // (documentation ranges, unless this machine uses one) is an error.
        let Ok(Sources::Host(own)) = parse_sources("host:127.0.0.0/8") else {
            panic!("host:127.0.0.0/8 is not this host's loopback addresses");
        };
        assert!(own.contains(&Ipv4Addr::LOCALHOST));
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
        // The CIDR filter, on a made-up host.
        let host = vec![
            Ipv4Addr::new(10, 64, 1, 9),
            Ipv4Addr::new(192, 168, 1, 2),
            Ipv4Addr::new(10, 64, 0, 3),
            Ipv4Addr::new(10, 64, 0, 3),
        ];
        assert_eq!(
            host_sources("f", "10.64.0.0/16", host.clone()).unwrap(),
            vec![Ipv4Addr::new(10, 64, 0, 3), Ipv4Addr::new(10, 64, 1, 9)]
        );
        assert_eq!(
            host_sources("f", "0.0.0.0/0", host.clone()).unwrap().len(),
            3
        );
        assert!(host_sources("f", "10.65.0.0/16", host).is_err());
    }

    #[test]
    fn parts_get_disjoint_blocks() {
        let all = list("127.0.0.2-127.0.0.6");
        let part = |index, count| Part { index, count };
        let a = part_sources(&all, part(0, 2)).unwrap();
        let b = part_sources(&all, part(1, 2)).unwrap();
        assert_eq!(a.len() + b.len(), 5);
        assert_eq!([a, b].concat(), all);
        assert!(part_sources(&all, part(0, 6)).is_err());
        // auto: at least one source per part once one is not enough for the fleet.
        let t: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert!(auto_sources(&t, 8_000, DEFAULT_PORT_SPAN, 10).is_empty());
        assert_eq!(auto_sources(&t, 20_000, DEFAULT_PORT_SPAN, 1).len(), 3);
        assert_eq!(auto_sources(&t, 20_000, DEFAULT_PORT_SPAN, 10).len(), 10);
    }

    #[test]
    fn per_source_budget_follows_the_port_range() {
        assert_eq!(DEFAULT_PORT_SPAN, 28_232);
        assert_eq!(connections_per_source(DEFAULT_PORT_SPAN), 8_469);
        // 1024-65535: about 20k connections per source.
        assert_eq!(connections_per_source(65_535 - 1_024 + 1), 19_353);
        assert_eq!(connections_per_source(0), 1);
        assert_eq!(sources_needed(1, 1, DEFAULT_PORT_SPAN), 1);
        assert_eq!(sources_needed(8_469, 1, DEFAULT_PORT_SPAN), 1);
        assert_eq!(sources_needed(8_470, 1, DEFAULT_PORT_SPAN), 2);
        assert_eq!(sources_needed(1_000_000, 1, DEFAULT_PORT_SPAN), 119);
        // Each (source, target) pair has its own ports: more targets, fewer sources.
        assert_eq!(sources_needed(1_000_000, 4, DEFAULT_PORT_SPAN), 30);
        assert_eq!(sources_needed(1_000_000, 0, DEFAULT_PORT_SPAN), 119);
    }
}
