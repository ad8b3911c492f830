//! `ringhold doctor`: checks the process and kernel limits that stop N connections on this host,
//! says for each what it is, what N needs and the exact fix, then how many connections the host
//! holds as configured and which limit binds first. Exit code 0 when N fits, 1 when not.
//!
//! `--json` prints one object (schema `ringhold-doctor/1`, documented in the
//! README's Doctor section):
//! `{schema, connections, fits, capacity, binding_limit{id,connections,text}, limits[],
//!   load_generator{connections,binding_limit}|null, load_sources{needed,connections_per_source,
//!   port_span,text}, config{…}, checks[{id,title,status,current,needed,fix[],note}],
//!   direct_descriptor_hint}` with `status` one of `ok`, `warn`, `fail`.

mod capacity;
mod checks;
mod net;
mod sys;
mod uring;

use std::net::SocketAddr;
use std::process::ExitCode;

use serde::Serialize;

pub use capacity::binding_limit_line;
use capacity::{Limit, Plan, DEFAULT_SHARD_BUFFER_BYTES};
use checks::{Check, Ctx, Status};
use sys::Host;

use crate::cli::Engine;

/// The `--json` schema name; bump it when a field changes meaning or goes away.
pub const SCHEMA: &str = "ringhold-doctor/1";

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Connections the host should hold.
    #[arg(long, env = "RINGHOLD_DOCTOR_CONNECTIONS", default_value_t = 1_000_000)]
    pub connections: u64,

    /// The address `serve` listens on. On a loopback address the load generator runs on this host.
    #[arg(long, env = "RINGHOLD_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// Source addresses of a load generator on this host (each brings its own ephemeral port range
    /// with IP_BIND_ADDRESS_NO_PORT). 0 = clients run elsewhere. Default: 1 when --listen is
    /// loopback, else 0.
    #[arg(long, env = "RINGHOLD_DOCTOR_SOURCES")]
    pub sources: Option<u64>,

    /// Target addresses (server ip:port pairs) the load generator spreads over.
    #[arg(long, env = "RINGHOLD_DOCTOR_TARGETS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub targets: u64,

    /// Shards `serve` would run (default: number of cores, as `serve`).
    #[arg(long, env = "RINGHOLD_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// Engine `serve` would run.
    #[arg(long, env = "RINGHOLD_ENGINE", value_enum, default_value_t = Engine::Uring)]
    pub engine: Engine,

    /// As `serve --no-direct-descriptors`: one process fd per connection with io_uring too.
    #[arg(long, env = "RINGHOLD_NO_DIRECT_DESCRIPTORS")]
    pub no_direct_descriptors: bool,

    /// As `serve --fixed-files` (0 = the RLIMIT_NOFILE soft limit).
    #[arg(long, env = "RINGHOLD_FIXED_FILES", default_value_t = 0)]
    pub fixed_files: u32,

    /// As `serve --backlog`.
    #[arg(long, env = "RINGHOLD_BACKLOG", default_value_t = 4096)]
    pub backlog: u32,

    /// Print one JSON object (schema ringhold-doctor/1) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Config {
    engine: &'static str,
    shards: u64,
    direct_descriptors: bool,
    fixed_file_slots: u64,
    listen: String,
    sources: u64,
    targets: u64,
    sockets_per_connection: u64,
    backlog: u64,
    kernel: String,
    cores: usize,
}

#[derive(Serialize)]
struct LoadGen {
    connections: u64,
    binding_limit: Limit,
}

/// How many source addresses a load generator needs for the run to connect fast (wherever it runs).
#[derive(Serialize)]
struct LoadSources {
    needed: u64,
    connections_per_source: u64,
    /// Ephemeral ports per source: this host's net.ipv4.ip_local_port_range (the client host's own
    /// range is what counts for a remote run).
    port_span: u64,
    text: String,
}

#[derive(Serialize)]
struct Report {
    schema: &'static str,
    connections: u64,
    fits: bool,
    capacity: u64,
    binding_limit: Limit,
    limits: Vec<Limit>,
    load_generator: Option<LoadGen>,
    load_sources: LoadSources,
    config: Config,
    checks: Vec<Check>,
    /// One line on reaching `connections` with direct descriptors (shards × slots), or null.
    direct_descriptor_hint: Option<String>,
}

fn kernel_release() -> (String, (u32, u32)) {
    let rel = sys::sysctl("kernel.osrelease").unwrap_or_default();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (rel, v)
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let report = diagnose(&args);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ringhold doctor: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render(&report));
    }
    if report.fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn diagnose(args: &DoctorArgs) -> Report {
    let host = Host::read();
    let (kernel, kver) = kernel_release();
    let shards = args.shards.map(u64::from).unwrap_or(host.cores as u64);
    let loopback = args.listen.ip().is_loopback();
    let sources = args.sources.unwrap_or(if loopback { 1 } else { 0 });
    let conntrack = if host.conntrack_max.is_some() {
        net::conntrack_applies()
    } else {
        Some(false)
    };
    let plan = Plan {
        engine: args.engine,
        shards,
        direct: args.engine == Engine::Uring && !args.no_direct_descriptors,
        fixed_files: args.fixed_files as u64,
        max_connections: 0,
        sockets_per_conn: if sources > 0 { 2 } else { 1 },
        shard_buffer_bytes: DEFAULT_SHARD_BUFFER_BYTES,
        conntrack_applies: conntrack != Some(false),
    };
    let ctx = Ctx {
        host: &host,
        plan: &plan,
        connections: args.connections,
        sources,
        targets: args.targets,
        backlog: args.backlog as u64,
        kernel: kver,
        port: args.listen.port(),
    };

    // The probe sizes its table as the server would: raise the soft limit to the hard one first.
    let _ = crate::rlimit::raise_nofile();
    let slots = plan.table_slots(&host);
    let want = checks::div_ceil(args.connections, shards).min(slots).max(1);
    let uring = uring::probe(want, host.serve_nofile());

    let mut list: Vec<Check> = vec![
        checks::nofile(&ctx),
        checks::nr_open(&ctx),
        checks::file_max(&ctx),
    ];
    list.extend(checks::uring(&ctx, &uring));
    list.push(checks::memlock(&ctx));
    list.extend(checks::backlog(&ctx));
    list.push(checks::ephemeral_ports(&ctx));
    list.extend(checks::loadgen_fds(&ctx));
    list.push(checks::memory(&ctx));
    list.push(checks::tcp_mem(&ctx));
    list.push(checks::tcp_buffers(&ctx));
    list.push(checks::conntrack(&ctx, conntrack));
    list.push(checks::time_wait(&ctx));

    let mut limits = capacity::limits(&host, &plan);
    let uring_broken = list.iter().find(|c| {
        c.id.starts_with("io_uring.") && c.id != "io_uring.fixed_files" && c.status == Status::Fail
    });
    if let (Engine::Uring, Some(c)) = (args.engine, uring_broken) {
        limits.insert(
            0,
            Limit {
                id: c.id,
                connections: 0,
                text: format!("io_uring unusable ({}): serve will not start", c.current),
            },
        );
    }
    let binding = capacity::binding(&limits).cloned().unwrap_or(Limit {
        id: "unknown",
        connections: 0,
        text: "no limit could be read".into(),
    });
    let load_generator = (sources > 0).then(|| {
        let n = checks::port_capacity(&ctx).unwrap_or(0);
        LoadGen {
            connections: n,
            binding_limit: Limit {
                id: "net.ephemeral_ports",
                connections: n,
                text: format!(
                    "ephemeral ports: {} source × {} target × the port range",
                    sources, args.targets
                ),
            },
        }
    });
    let load_sources = load_sources(&host, args.connections, args.targets);
    let direct_descriptor_hint = direct_hint(&host, &plan, args.connections, &binding);
    let fits = binding.connections >= args.connections
        && load_generator
            .as_ref()
            .is_none_or(|l| l.connections >= args.connections)
        && list.iter().all(|c| c.status != Status::Fail);
    Report {
        schema: SCHEMA,
        connections: args.connections,
        fits,
        capacity: binding.connections,
        binding_limit: binding,
        limits,
        load_generator,
        load_sources,
        config: Config {
            engine: args.engine.name(),
            shards,
            direct_descriptors: plan.direct,
            fixed_file_slots: slots,
            listen: args.listen.to_string(),
            sources,
            targets: args.targets,
            sockets_per_connection: plan.sockets_per_conn,
            backlog: args.backlog as u64,
            kernel,
            cores: host.cores,
        },
        checks: list,
        direct_descriptor_hint,
    }
}

/// Source addresses a load generator needs for `n` connections to `targets` targets so that no
/// source's port range is more than ringhold_load::SOURCE_FILL_PERCENT used (the rule `ringhold
/// load --sources auto` follows on loopback).
fn load_sources(host: &Host, n: u64, targets: u64) -> LoadSources {
    let span = host
        .port_range
        .map(|(lo, hi)| hi.saturating_sub(lo) + 1)
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(ringhold_load::DEFAULT_PORT_SPAN);
    let per = u64::from(ringhold_load::connections_per_source(span));
    let needed = ringhold_load::sources_needed(n, targets, span);
    let pairs = if targets == 1 {
        "per source".to_string()
    } else {
        format!("per source and target ({targets} targets)")
    };
    let text = format!(
        "a load generator opening {n} connections needs {needed} source address{}: at most {per} \
         connections {pairs}, {}% of a {span}-port ip_local_port_range, because connect()'s port \
         search slows sharply once half of a source's ports are taken. `ringhold load` picks 127.x \
         sources itself for a loopback target (--sources auto); from another host give it {needed} of \
         that host's addresses with --sources (its own ip_local_port_range is what counts there)",
        if needed == 1 { "" } else { "es" },
        ringhold_load::SOURCE_FILL_PERCENT,
    );
    LoadSources {
        needed,
        connections_per_source: per,
        port_span: u64::from(span),
        text,
    }
}

/// When the fd limit binds: how many shards of fixed-file slots reach `n`.
fn direct_hint(host: &Host, plan: &Plan, n: u64, binding: &Limit) -> Option<String> {
    if !matches!(binding.id, "io_uring.fixed_files" | "rlimit.nofile") || binding.connections >= n {
        return None;
    }
    let slots = plan.table_slots(host);
    let shards = checks::div_ceil(n, slots);
    let engine = if plan.direct { "" } else { " --engine uring" };
    Some(if shards <= checks::MAX_SHARDS {
        format!(
            "with io_uring direct descriptors the server's connections need no process fds: \
             ringhold serve{engine} --shards {shards} gives {shards} × {slots} fixed-file slots = {} ≥ {n}",
            shards * slots
        )
    } else {
        format!(
            "with io_uring direct descriptors {shards} shards × {slots} slots would be needed (serve allows {}): \
             raise RLIMIT_NOFILE so each table can be larger",
            checks::MAX_SHARDS
        )
    })
}

fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "ringhold doctor: {} connections? engine {}, {} shards{}, {} on Linux {}, {} core{}",
        r.connections,
        c.engine,
        c.shards,
        if c.direct_descriptors {
            format!(
                ", direct descriptors ({} slots per table)",
                c.fixed_file_slots
            )
        } else {
            ", plain fds".into()
        },
        if c.sources > 0 {
            format!(
                "load generator here ({} source × {} target, 2 sockets per connection)",
                c.sources, c.targets
            )
        } else {
            "clients elsewhere".into()
        },
        c.kernel,
        c.cores,
        if c.cores == 1 { "" } else { "s" },
    );
    let _ = writeln!(s);
    for k in &r.checks {
        let _ = writeln!(s, "{:<4}  {}  {}", k.status.label(), k.id, k.title);
        let _ = writeln!(s, "      current: {}", k.current);
        let _ = writeln!(s, "      needed:  {}", k.needed);
        for (i, f) in k.fix.iter().enumerate() {
            let _ = writeln!(
                s,
                "      {} {f}",
                if i == 0 { "fix:    " } else { "        " }
            );
        }
        if !k.note.is_empty() {
            let _ = writeln!(s, "      note:    {}", k.note);
        }
    }
    let _ = writeln!(s);
    let mut sorted: Vec<(u64, String, &str)> = r
        .limits
        .iter()
        .map(|l| (l.connections, l.text.clone(), l.id))
        .collect();
    if let Some(l) = &r.load_generator {
        let b = &l.binding_limit;
        sorted.push((
            l.connections,
            format!("load generator on this host: {}", b.text),
            b.id,
        ));
    }
    sorted.sort_by_key(|l| l.0);
    let _ = writeln!(s, "limits, smallest first:");
    for (n, text, id) in sorted {
        let _ = writeln!(s, "  {n:>12}  {text}  [{id}]");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "capacity: this host holds {} connections as configured; the first limit is {} [{}]",
        r.capacity, r.binding_limit.text, r.binding_limit.id
    );
    if let Some(h) = &r.direct_descriptor_hint {
        let _ = writeln!(s, "to reach {}: {h}", r.connections);
    }
    let _ = writeln!(s, "sources: {}", r.load_sources.text);
    let fails = r.checks.iter().filter(|k| k.status == Status::Fail).count();
    let warns = r.checks.iter().filter(|k| k.status == Status::Warn).count();
    let _ = writeln!(
        s,
        "result: {} connections {} ({fails} FAIL, {warns} WARN)",
        r.connections,
        if r.fits { "fit" } else { "do NOT fit" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_sources_follow_the_port_range_and_targets() {
        let mut h = Host {
            port_range: Some((32_768, 60_999)),
            ..Host::default()
        };
        let s = load_sources(&h, 1_000_000, 1);
        assert_eq!(
            (s.needed, s.connections_per_source, s.port_span),
            (119, 8_469, 28_232)
        );
        assert!(s.text.contains("needs 119 source addresses"), "{}", s.text);
        assert_eq!(load_sources(&h, 1_000_000, 4).needed, 30);
        assert_eq!(load_sources(&h, 5_000, 1).needed, 1);
        h.port_range = Some((1_024, 65_535));
        assert_eq!(load_sources(&h, 1_000_000, 1).needed, 52);
        h.port_range = None;
        assert_eq!(load_sources(&h, 1_000_000, 1).port_span, 28_232);
    }
}
