//! `ringhold serve`: limits, listeners, one pinned thread per shard, signals, graceful drain.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, RecvTimeoutError};
use ringhold_core::units::fmt_bytes;
use ringhold_core::{EngineConfig, ShardSpec, Shared};
use tracing::{error, info, warn};

use crate::cli::{Engine, ServeArgs};
use crate::{listen, rlimit};

/// The shards one thread drives: io_uring shards share a thread ([`ringhold_uring::run_group`]);
/// an epoll shard has a thread of its own.
enum ThreadShards {
    Uring(Vec<ringhold_uring::Shard>),
    Epoll(ringhold_epoll::Shard),
}

impl ThreadShards {
    fn run(self) -> io::Result<()> {
        match self {
            ThreadShards::Uring(s) => ringhold_uring::run_group(s),
            ThreadShards::Epoll(s) => s.run(),
        }
    }
}

enum Event {
    Signal(i32),
    /// A thread's shards stopped (their ids), with the first error if one failed.
    ShardsExited(Vec<usize>, io::Result<()>),
}

pub fn run(args: ServeArgs) -> ExitCode {
    match serve(args) {
        Ok(code) => code,
        Err(msg) => {
            // One plain line, no log prefix: this is what a user reads when start-up fails.
            eprintln!("ringhold: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let ncores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shards = args.shards.map(usize::from).unwrap_or(ncores);
    let threads = match args.engine {
        Engine::Uring => args
            .threads
            .map(usize::from)
            .unwrap_or(ncores)
            .clamp(1, shards),
        Engine::Epoll => {
            if args.threads.is_some_and(|t| usize::from(t) != shards) {
                warn!("--threads applies to io_uring only: epoll runs one thread per shard ({shards})");
            }
            shards
        }
    };

    let (before, nofile) =
        rlimit::raise_nofile().map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if before.soft != nofile.soft {
        info!(
            "raised RLIMIT_NOFILE soft limit from {} to the hard limit {}",
            before.soft, nofile.soft
        );
    }

    if args.engine == Engine::Uring {
        ringhold_uring::probe().map_err(|cause| {
            format!(
                "io_uring cannot be used: {cause}. Run with --engine epoll to use epoll instead"
            )
        })?;
    }

    let direct = args.engine == Engine::Uring && !args.no_direct_descriptors;
    let fixed_files = if args.fixed_files > 0 {
        args.fixed_files as u64
    } else {
        nofile.soft
    };
    let capacity = crate::doctor::binding_limit_line(
        args.engine,
        shards,
        direct,
        fixed_files,
        args.max_connections,
    );

    if let Some(max) = listen::somaxconn() {
        if args.backlog > max {
            warn!(
                "--backlog {} is capped by net.core.somaxconn = {max}; raise it with `sysctl -w net.core.somaxconn={}`",
                args.backlog, args.backlog
            );
        }
    }

    let config = Arc::new(EngineConfig {
        buffer_size: args.buffer_size,
        buffers: args.buffers,
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        send_timeout: (!args.send_timeout.is_zero()).then_some(args.send_timeout),
        linger_timeout: args.linger_timeout,
        protocol: args.protocol.0,
        proto: ringhold_core::protocol::ProtoConfig {
            http: ringhold_core::http::HttpConfig {
                max_header_bytes: args.max_header_size as usize,
                max_body_bytes: args.max_body_size,
                ..ringhold_core::http::HttpConfig::default()
            },
            ws: ringhold_core::ws::WsConfig {
                max_message_size: args.max_message_size,
                max_header_bytes: args.max_header_size as usize,
            },
        },
        keepalive: args.tcp_keepalive.0,
        max_queued_buffers: args.pending_buffers as u16,
        shutdown_timeout: args.shutdown_timeout,
        rate_limit: args.rate_limit,
        message_rate: args.message_rate,
        check_every: args.check_every,
        max_conn_rate: args.max_conn_rate,
        direct_descriptors: direct,
        completion_batch: args.completion_batch.0,
        fixed_files: fixed_files.min(u32::MAX as u64) as u32,
        park_after: Some(args.park_after).filter(|d| !d.is_zero()),
    });
    let shared = Arc::new(Shared::with_conn_rate(
        args.max_connections,
        args.max_conn_rate,
    ));

    let metrics_addr = ringhold_metrics::install(args.metrics_listen.0, args.engine.name())
        .map_err(|e| {
            format!(
                "cannot serve metrics on {}: {e} (pick another --metrics-listen, or `off`)",
                args.metrics_listen
                    .0
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            )
        })?;

    let listeners = listen::bind_all(args.listen, shards, args.backlog)?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;

    let (events_tx, events_rx) = unbounded::<Event>();
    let (ready_tx, ready_rx) = bounded::<(usize, io::Result<()>)>(shards);
    // Shard `id` runs on thread `id % threads`.
    let mut per_thread: Vec<Vec<ShardSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (id, listener) in listeners.into_iter().enumerate() {
        let mut shard_metrics = ringhold_metrics::ShardMetrics::new(id);
        per_thread[id % threads].push(ShardSpec {
            id,
            listener,
            config: config.clone(),
            shared: shared.clone(),
            flush: Box::new(move |c| shard_metrics.flush(c)),
        });
    }
    let mut handles = Vec::with_capacity(threads);
    for (t, specs) in per_thread.into_iter().enumerate() {
        let core = (!args.no_pin && !cores.is_empty()).then(|| cores[t % cores.len()]);
        let engine = args.engine;
        let ready_tx = ready_tx.clone();
        let events_tx = events_tx.clone();
        let name = if threads == shards {
            format!("ringhold-shard-{t}")
        } else {
            format!("ringhold-thread-{t}")
        };
        let h = thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let ids: Vec<usize> = specs.iter().map(|s| s.id).collect();
                // Every shard of the thread is set up on it (SINGLE_ISSUER: the ring's only submitter)
                // and reports; the thread runs only if all of them could start.
                let mut uring = Vec::new();
                let mut epoll = None;
                let mut ok = true;
                for spec in specs {
                    let id = spec.id;
                    let res = match engine {
                        Engine::Uring => ringhold_uring::Shard::new(spec).map(|s| uring.push(s)),
                        Engine::Epoll => ringhold_epoll::Shard::new(spec).map(|s| epoll = Some(s)),
                    };
                    ok &= res.is_ok();
                    let _ = ready_tx.send((id, res));
                }
                drop(ready_tx);
                if !ok {
                    return;
                }
                let group = match epoll {
                    Some(s) => ThreadShards::Epoll(s),
                    None => ThreadShards::Uring(uring),
                };
                let res = group.run();
                let _ = events_tx.send(Event::ShardsExited(ids, res));
            })
            .map_err(|e| format!("cannot start shard thread {t}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => {
                shared.begin_shutdown();
                return Err(format!(
                    "shard {id} could not start: {e}{}",
                    setup_hint(args.engine, &e)
                ));
            }
            Err(_) => return Err("a shard thread died during start-up".into()),
        }
    }

    let total_buffers = shards as u64 * args.buffers as u64;
    info!(
        "ringhold {} engine={} shards={shards} threads={threads} cores={ncores} pinned={} buffers={shards}×{}×{} (up to {}, committed as used) \
         fd_limit={} direct_descriptors={direct} {capacity} \
         protocol={} idle_timeout={:?} send_timeout={:?} linger_timeout={:?} max_connections={}{}",
        env!("CARGO_PKG_VERSION"),
        args.engine.name(),
        !args.no_pin,
        args.buffers,
        fmt_bytes(args.buffer_size as u64),
        fmt_bytes(total_buffers * args.buffer_size as u64),
        nofile.soft,
        args.protocol.0.name(),
        args.idle_timeout,
        args.send_timeout,
        args.linger_timeout,
        args.max_connections,
        rate_limits(&args),
    );
    // Signal handlers before the ready lines: a SIGTERM sent as soon as "listening on" shows up must
    // drain, and the process's descriptors (the handler's socket pair) are all open once it is ready.
    spawn_signal_thread(events_tx.clone())?;

    if let Some(m) = metrics_addr {
        info!("metrics on http://{m}/metrics");
    }
    info!("listening on {local}");

    let mut exited = 0;
    let mut failed = false;
    let mut deadline: Option<Instant> = None;
    while exited < threads {
        let ev = match deadline {
            None => events_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => events_rx.recv_deadline(d),
        };
        match ev {
            Ok(Event::Signal(sig)) => {
                if deadline.is_some() {
                    warn!("second signal {sig}: exiting now");
                    return Ok(ExitCode::from(130));
                }
                info!(
                    "signal {sig}: draining {} connections (up to {:?})",
                    shared.active(),
                    args.shutdown_timeout
                );
                shared.begin_shutdown();
                deadline = Some(Instant::now() + args.shutdown_timeout + Duration::from_secs(2));
            }
            Ok(Event::ShardsExited(ids, res)) => {
                exited += 1;
                if let Err(e) = res {
                    let which = match ids.as_slice() {
                        [id] => format!("shard {id}"),
                        _ => format!("shards {ids:?}"),
                    };
                    error!("{which} stopped: {e}");
                    failed = true;
                    shared.begin_shutdown();
                    deadline.get_or_insert(
                        Instant::now() + args.shutdown_timeout + Duration::from_secs(2),
                    );
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                error!("shards did not stop within the shutdown timeout; exiting");
                return Ok(ExitCode::FAILURE);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for h in handles {
        let _ = h.join();
    }
    info!("stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The rate limits in force, for the start-up line (empty when none is set).
fn rate_limits(args: &ServeArgs) -> String {
    let mut out = String::new();
    if let Some(s) = args.max_conn_rate {
        out += &format!(" max_conn_rate={}/s", s.rate);
    }
    if let Some(s) = args.rate_limit {
        out += &format!(
            " rate_limit={}/s,burst {}",
            fmt_bytes(s.rate as u64),
            fmt_bytes(s.burst as u64)
        );
    }
    if let Some(s) = args.message_rate {
        out += &format!(" message_rate={:.3}/s,burst {}", s.rate, s.burst);
    }
    if !out.is_empty() {
        out += &format!(" check_every={}", args.check_every);
    }
    out
}

fn spawn_signal_thread(tx: crossbeam_channel::Sender<Event>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    thread::Builder::new()
        .name("ringhold-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    Ok(())
}

fn setup_hint(engine: Engine, e: &io::Error) -> &'static str {
    match (engine, e.raw_os_error()) {
        (Engine::Uring, Some(libc::ENOMEM)) => {
            " (locked memory for the ring: raise `ulimit -l` / LimitMEMLOCK=, or use fewer --buffers)"
        }
        (Engine::Uring, Some(libc::EPERM)) | (Engine::Uring, Some(libc::ENOSYS)) => {
            " (io_uring is blocked: check kernel.io_uring_disabled and seccomp, or use --engine epoll)"
        }
        (_, Some(libc::EMFILE)) | (_, Some(libc::ENFILE)) => {
            " (out of file descriptors: raise the limit, see `ringhold doctor`)"
        }
        _ => "",
    }
}
