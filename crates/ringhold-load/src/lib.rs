//! `ringhold load`: opens and holds up to a million TCP connections from one process, sends each a
//! heartbeat per interval (or a constant total rate) and verifies every echoed byte. With
//! `--protocol http` the heartbeats are HTTP/1.1 keep-alive GETs whose answers are checked for status
//! and body length (optionally in the http-kit client pattern); with `--protocol websocket` each
//! connection upgrades (RFC 6455) and its heartbeats are masked binary messages echoed back whole.
//! `--part` runs one share of a load spread over many processes; `--metrics-listen` exports its
//! counters to Prometheus.
//!
//! Each worker thread owns one io_uring with a fixed-file table and a provided buffer ring; sockets
//! live only as direct descriptors, so the process fd limit bounds a table (RLIMIT_NOFILE slots), not
//! the total, and more workers hold more connections. Per connection the load side keeps a few dozen
//! bytes; receive buffers are shared per worker.
//!
//! This crate must not grow server code: it talks to a server only through its sockets.

mod bufring;
mod fleet;
mod kernel;
mod pattern;
mod plan;
mod report;
mod setup;
mod sources;
mod stats;
mod worker;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub use plan::{LoadArgs, LoadProtocol, MetricsListen, Part, SetupMode};
pub use sources::{
    connections_per_source, local_port_span, sources_needed, Sources, DEFAULT_PORT_SPAN,
    SOURCE_FILL_PERCENT,
};

use plan::Plan;
use report::Outcome;
use ringhold_metrics::{LoadCounters, LoadMetrics};
use stats::{Counts, Shared, CAUSES};

/// Runs `ringhold load`: 0 when every connection was held and every echo intact, 1 when something
/// failed or was lost, 2 on a usage or setup error.
pub fn run(args: LoadArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringhold load: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur < r.rlim_max {
        let up = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } == 0 {
            return up.rlim_cur;
        }
    }
    r.rlim_cur
}

/// VmRSS and VmHWM of this process, in bytes.
fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn run_inner(args: &LoadArgs) -> Result<bool, String> {
    let soft = raise_nofile();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let table_max = u32::try_from(soft).unwrap_or(u32::MAX);
    let plan = Arc::new(Plan::new(
        args,
        table_max,
        cpus,
        sources::local_port_span(),
    )?);
    let setup_name = match plan.setup {
        SetupMode::Ring => "ring",
        SetupMode::Syscall => "syscall",
        SetupMode::Auto if worker::ring_setup_available() => "ring",
        SetupMode::Auto => "syscall",
    };
    for n in &plan.notes {
        eprintln!("ringhold load: note: {n}");
    }
    eprintln!(
        "ringhold load: {} connections to {} from {} source address(es), {} workers x {} fixed-file slots on {} thread(s) (setup: {setup_name}), duration {}{}",
        plan.connections,
        plan.target,
        report::sources_desc(&plan),
        plan.workers,
        plan.slots_per_ring,
        plan.threads,
        report::fmt_us(plan.duration.as_micros() as u64),
        match plan.part {
            Some((p, total)) => format!(", part {p} of {total} connections in all"),
            None => String::new(),
        },
    );
    setup::check_sources(&plan.sources)?;
    if args.dry_run {
        println!("{}", report::plan_text(&plan));
        return Ok(true);
    }
    let metrics = match args.metrics_listen.0 {
        Some(addr) => {
            let part = plan.part.map_or("0/1".to_string(), |(p, _)| p.to_string());
            let bound = ringhold_metrics::install_load(addr, &part, plan.protocol.name())
                .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
            eprintln!("ringhold load: metrics on http://{bound}/metrics");
            let causes: Vec<&'static str> = CAUSES.iter().map(|c| c.key()).collect();
            Some(LoadMetrics::new(&causes))
        }
        None => None,
    };
    let (rss_start, _) = rss();

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }

    // Workers build their rings in their own threads, report, then all start at the same instant
    // (or, when one failed, all end).
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut go: Vec<mpsc::Sender<Option<Instant>>> = Vec::new();
    let mut shared: Vec<Shared> = Vec::new();
    let mut handles = Vec::new();
    let abort = |go: &[mpsc::Sender<Option<Instant>>],
                 handles: Vec<std::thread::JoinHandle<()>>| {
        for g in go {
            let _ = g.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
    };
    // Worker w runs on thread w % threads; every worker of a thread is built on it (SINGLE_ISSUER).
    for t in 0..plan.threads {
        let ids: Vec<u32> = (t..plan.workers).step_by(plan.threads as usize).collect();
        let mut setups = Vec::with_capacity(ids.len());
        for &id in &ids {
            let sh = stats::new_shared();
            setups.push(worker::Setup {
                id,
                plan: Arc::clone(&plan),
                shared: Arc::clone(&sh),
                stop: Arc::clone(&stop),
            });
            shared.push(sh);
        }
        let (go_tx, go_rx) = mpsc::channel::<Option<Instant>>();
        let tx = tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .stack_size(256 << 10)
            .spawn(move || {
                let mut workers = Vec::with_capacity(setups.len());
                for setup in setups {
                    let w = worker::build(setup);
                    let _ = tx.send(w.as_ref().map(|_| ()).map_err(Clone::clone));
                    if let Ok(w) = w {
                        workers.push(w);
                    }
                }
                drop(tx);
                if let Ok(Some(start)) = go_rx.recv() {
                    worker::run_group(workers, start);
                }
            });
        match h {
            Ok(h) => {
                handles.push(h);
                go.push(go_tx);
            }
            Err(e) => {
                abort(&go, handles);
                return Err(format!("starting load thread {t}: {e}"));
            }
        }
    }
    drop(tx);
    let mut setup_err = None;
    for _ in 0..plan.workers {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => setup_err = setup_err.or(Some(e)),
            Err(_) => {
                setup_err = setup_err.or(Some("a worker thread ended during setup".to_string()))
            }
        }
    }
    if let Some(e) = setup_err {
        abort(&go, handles);
        return Err(e);
    }
    let start = Instant::now();
    for g in &go {
        let _ = g.send(Some(start));
    }

    // Progress once a second until every worker has drained.
    let tty = std::io::stderr().is_terminal();
    let mut total = stats::new_histogram();
    let mut tick = stats::new_histogram();
    let mut last_echoed = 0u64;
    let mut last_print = start;
    let mut peak_alive = 0u64;
    let mut rss_peak = rss_start;
    let mut tcp_mem_peak = kernel::tcp_mem_pages();
    let counts = loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut c = Counts::default();
        let mut finished = 0;
        for sh in &shared {
            let mut p = stats::lock(sh);
            c.add(&p.counts);
            let _ = tick.add(&p.hist);
            p.hist.reset();
            finished += usize::from(p.finished);
        }
        peak_alive = peak_alive.max(c.alive);
        let done = finished == shared.len();
        let now = Instant::now();
        let dt = now.duration_since(last_print).as_secs_f64();
        if dt >= 1.0 || done {
            let (r, _) = rss();
            rss_peak = rss_peak.max(r);
            tcp_mem_peak = tcp_mem_peak.max(kernel::tcp_mem_pages());
            let rate = (c.echoed - last_echoed) as f64 / dt.max(1e-3);
            let line = report::progress_line(
                &plan,
                &c,
                now.duration_since(start).as_secs_f64(),
                rate,
                &tick,
            );
            if let Some(m) = &metrics {
                export(m, &plan, &c, &tick, done);
            }
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
                if done {
                    let _ = writeln!(err);
                }
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
            let _ = total.add(&tick);
            tick.reset();
            last_echoed = c.echoed;
            last_print = now;
        }
        if done {
            break c;
        }
    };
    let elapsed_us = start.elapsed().as_micros() as u64;
    for h in handles {
        if h.join().is_err() {
            eprintln!(
                "ringhold load: a worker thread panicked; its last published numbers are used"
            );
        }
    }
    let (_, hwm) = rss();
    let outcome = Outcome {
        plan: &plan,
        setup: setup_name,
        counts,
        hist: &total,
        elapsed_us,
        rss_start,
        rss_peak: rss_peak.max(hwm),
        peak_alive,
        tcp_mem_peak,
        tcp_mem_note: kernel::pressure_note(tcp_mem_peak),
    };
    print!("{}", outcome.table());
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&outcome.json())
            .map_err(|e| format!("encoding JSON: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing --json {}: {e}", path.display()))?;
    }
    if stop.load(Ordering::Relaxed) {
        eprintln!("ringhold load: stopped early by a signal");
    } else if metrics.is_some() && !args.metrics_linger.is_zero() {
        eprintln!(
            "ringhold load: serving the final metrics for {} (--metrics-linger)",
            report::fmt_us(args.metrics_linger.as_micros() as u64)
        );
        let until = Instant::now() + args.metrics_linger;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
    Ok(outcome.ok())
}

/// The states of this process's connections, from its workers' summed counters. They add up to the
/// planned connections; once every worker has finished (`done`), what was open or still connecting
/// has been closed by the load generator.
fn load_counters(plan: &Plan, c: &Counts, done: bool) -> LoadCounters {
    let planned = u64::from(plan.connections);
    let failed = c.failed_total();
    let waiting = planned.saturating_sub(c.attempted);
    // attempted = connecting + open + failed (a failed connect is no longer pending).
    let connecting = c.attempted.saturating_sub(c.alive + failed);
    let states = if done {
        [waiting, 0, 0, failed, connecting + c.alive]
    } else {
        [waiting, connecting, c.alive, failed, 0]
    };
    LoadCounters {
        states,
        opened: c.connected,
        heartbeats_sent: c.sent,
        heartbeats_echoed: c.echoed,
        heartbeats_late: c.late,
        heartbeats_outstanding: if done { 0 } else { c.outstanding },
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
    }
}

/// Copies the counters and the latencies of the last tick into the exported metrics.
fn export(
    m: &LoadMetrics,
    plan: &Plan,
    c: &Counts,
    tick: &hdrhistogram::Histogram<u64>,
    done: bool,
) {
    for v in tick.iter_recorded() {
        m.record_latency(v.value_iterated_to() as f64 / 1e6, v.count_at_value());
    }
    ringhold_metrics::upkeep();
    m.flush(&load_counters(plan, c, done), &c.failed);
}
