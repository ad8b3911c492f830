//! bench-client: the small load client `bench/run` uses until `ringhold load` lands (and keeps as a
//! fallback). Loopback only: it refuses targets and sources outside 127.0.0.0/8 and ::1.
//!
//! Modes:
//! - `pingpong`: every connection sends `--message-size` bytes, waits for the same bytes back, repeats
//!   (closed loop) for `--duration`; reports messages/s and latency percentiles.
//! - `hold`: opens the connections, prints `established N in S s` to stderr, then holds them (a
//!   heartbeat every `--heartbeat` seconds if set) until `--duration` or SIGTERM/SIGINT; reports how
//!   many were lost.
//!
//! `--protocol websocket`: each connection first upgrades (RFC 6455 handshake, `101` required, as
//! part of connecting), then every message is one masked binary frame (a fresh mask per message) and
//! its echo must come back as one unmasked binary frame with the same payload. Control frames from the
//! server are not expected (the bench servers run without keep-alive pings) and count as mismatches.
//!
//! Connections are spread over `--sources` source addresses (127.0.1.1, 127.0.1.2, …) bound with
//! IP_BIND_ADDRESS_NO_PORT, so each source has its own ephemeral port range. One JSON object on stdout.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::exit;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    PingPong,
    Hold,
}

#[derive(Clone, Debug)]
struct Opts {
    target: SocketAddr,
    connections: usize,
    sources: u32,
    source_base: Ipv4Addr,
    connect_rate: f64,
    concurrency: usize,
    mode: Mode,
    message_size: usize,
    duration: Duration,
    heartbeat: Option<Duration>,
    threads: usize,
    connect_timeout: Duration,
    websocket: bool,
}

fn usage() -> ! {
    println!(
        "bench-client --target ADDR --connections N [--mode pingpong|hold] [--sources K] \
[--source-base 127.0.1.1] [--connect-rate R/s] [--concurrency C] [--message-size B] [--duration S] \
[--heartbeat S] [--threads T] [--connect-timeout S] [--protocol echo|websocket]"
    );
    exit(0)
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-client: {msg}");
    exit(2)
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| fail(&format!("{key}: '{v}' is not a number")))
}

fn secs(key: &str, v: &str) -> Duration {
    let s: f64 = num(key, v.trim_end_matches('s'));
    if !(s.is_finite() && s >= 0.0) {
        fail(&format!("{key}: '{v}' is not a duration in seconds"));
    }
    Duration::from_secs_f64(s)
}

fn parse() -> Opts {
    let mut o = Opts {
        target: SocketAddr::from(([127, 0, 0, 1], 7000)),
        connections: 100,
        sources: 16,
        source_base: Ipv4Addr::new(127, 0, 1, 1),
        connect_rate: 0.0,
        concurrency: 256,
        mode: Mode::PingPong,
        message_size: 64,
        duration: Duration::from_secs(10),
        heartbeat: None,
        threads: 1,
        connect_timeout: Duration::from_secs(10),
        websocket: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            usage();
        }
        let v = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--target" => {
                o.target = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("'{v}' is not an ip:port")))
            }
            "--connections" => o.connections = num(&flag, &v),
            "--sources" => o.sources = num(&flag, &v),
            "--source-base" => {
                o.source_base = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("'{v}' is not an IPv4 address")))
            }
            "--connect-rate" => o.connect_rate = num(&flag, v.trim_end_matches("/s")),
            "--concurrency" => o.concurrency = num(&flag, &v),
            "--mode" => {
                o.mode = match v.as_str() {
                    "pingpong" | "ping-pong" => Mode::PingPong,
                    "hold" => Mode::Hold,
                    _ => fail(&format!("--mode '{v}': pingpong or hold")),
                }
            }
            "--message-size" => o.message_size = num(&flag, &v),
            "--duration" => o.duration = secs(&flag, &v),
            "--heartbeat" => {
                let d = secs(&flag, &v);
                o.heartbeat = (!d.is_zero()).then_some(d);
            }
            "--threads" => o.threads = num(&flag, &v),
            "--connect-timeout" => o.connect_timeout = secs(&flag, &v),
            "--protocol" => {
                o.websocket = match v.as_str() {
                    "echo" => false,
                    "websocket" | "ws" => true,
                    _ => fail(&format!("--protocol '{v}': echo or websocket")),
                }
            }
            _ => fail(&format!("unknown argument '{flag}' (try --help)")),
        }
    }
    if !o.target.ip().is_loopback() {
        fail("the target must be a loopback address (127.0.0.0/8 or ::1)");
    }
    if o.source_base.octets()[0] != 127 {
        fail("--source-base must be in 127.0.0.0/8");
    }
    if o.sources == 0 || o.threads == 0 || o.concurrency == 0 || o.message_size == 0 {
        fail("--sources, --threads, --concurrency and --message-size must be at least 1");
    }
    o
}

/// Source address number `i` (0-based) counted up from `base`, skipping .0 and .255 in the last octet.
fn source(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    let b = u32::from(base);
    let start = (b & 0xff).clamp(1, 254) - 1;
    let idx = start + i;
    let net = (b & !0xff) + ((idx / 254) << 8);
    Ipv4Addr::from(net + 1 + idx % 254)
}

struct Totals {
    established: AtomicU64,
    connect_errors: AtomicU64,
    lost: AtomicU64,
    mismatches: AtomicU64,
    messages: AtomicU64,
    stop: AtomicBool,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Totals {
    fn error(&self, e: String) {
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(e);
        }
    }
}

async fn connect(o: &Opts, i: usize) -> std::io::Result<TcpStream> {
    let socket = match o.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if o.target.is_ipv4() {
        let one: libc::c_int = 1;
        // SAFETY: valid socket fd, option value points to a live c_int of the given length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let src = source(o.source_base, (i as u32) % o.sources);
        socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    }
    match tokio::time::timeout(o.connect_timeout, socket.connect(o.target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

fn pattern(conn: usize, seq: u64, buf: &mut [u8]) {
    let seed = (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (seed
            .wrapping_add(k as u64)
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            >> 56) as u8;
    }
}

/// One exchange: write `out`, read the same number of bytes back, compare.
async fn exchange(s: &mut TcpStream, out: &[u8], back: &mut [u8]) -> Result<bool, std::io::Error> {
    s.write_all(out).await?;
    s.read_exact(back).await?;
    Ok(out == back)
}

/// The upgrade request (RFC 6455 §1.3's example key: the accept value is not checked, `101` is).
const WS_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends the upgrade request and reads the response head (up to its blank line, nothing more).
async fn ws_upgrade(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(WS_REQUEST).await?;
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await?;
        head.push(b[0]);
        if head.len() > 8192 {
            return Err(std::io::Error::other("upgrade response head over 8 KiB"));
        }
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or("");
        return Err(std::io::Error::other(format!("upgrade refused: {line}")));
    }
    Ok(())
}

/// A masked binary client frame carrying `payload` (mask from `rng`), into `frame`.
fn ws_frame(payload: &[u8], rng: &mut u64, frame: &mut Vec<u8>) {
    frame.clear();
    frame.push(0x82);
    let n = payload.len();
    if n < 126 {
        frame.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(n as u64).to_be_bytes());
    }
    // xorshift64: a cheap mask per frame.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let mask = (*rng as u32).to_ne_bytes();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Length of the server's (unmasked) header for a binary frame of `n` payload bytes.
fn ws_server_header_len(n: usize) -> usize {
    match n {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// One WebSocket exchange: `payload` out as a masked frame, its echo back as one unmasked binary frame.
async fn ws_exchange(
    s: &mut TcpStream,
    payload: &[u8],
    rng: &mut u64,
    frame: &mut Vec<u8>,
    back: &mut Vec<u8>,
) -> Result<bool, std::io::Error> {
    ws_frame(payload, rng, frame);
    s.write_all(frame).await?;
    let h = ws_server_header_len(payload.len());
    back.resize(h + payload.len(), 0);
    s.read_exact(back).await?;
    let n = payload.len();
    let header_ok = match h {
        2 => back[0] == 0x82 && usize::from(back[1]) == n,
        4 => {
            back[0] == 0x82
                && back[1] == 126
                && usize::from(u16::from_be_bytes([back[2], back[3]])) == n
        }
        _ => back[0] == 0x82 && back[1] == 127,
    };
    Ok(header_ok && &back[h..] == payload)
}

/// An exchange in the run's protocol.
struct Exchanger {
    websocket: bool,
    rng: u64,
    frame: Vec<u8>,
    back: Vec<u8>,
}

impl Exchanger {
    fn new(o: &Opts, conn: usize) -> Exchanger {
        Exchanger {
            websocket: o.websocket,
            rng: (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            frame: Vec::with_capacity(o.message_size + 14),
            back: vec![0u8; o.message_size + 10],
        }
    }

    async fn run(&mut self, s: &mut TcpStream, out: &[u8]) -> Result<bool, std::io::Error> {
        if self.websocket {
            ws_exchange(s, out, &mut self.rng, &mut self.frame, &mut self.back).await
        } else {
            self.back.resize(out.len(), 0);
            exchange(s, out, &mut self.back).await
        }
    }
}

async fn conn_task(
    o: Arc<Opts>,
    t: Arc<Totals>,
    i: usize,
    mut s: TcpStream,
    hist: Rc<RefCell<Histogram<u64>>>,
) {
    let mut out = vec![0u8; o.message_size];
    let mut ex = Exchanger::new(&o, i);
    let mut seq = 0u64;
    match o.mode {
        Mode::PingPong => {
            while !t.stop.load(Ordering::Relaxed) {
                pattern(i, seq, &mut out);
                seq += 1;
                let started = Instant::now();
                match ex.run(&mut s, &out).await {
                    Ok(true) => {
                        let us = started.elapsed().as_micros() as u64;
                        let _ = hist.borrow_mut().record(us.max(1));
                        t.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        t.mismatches.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        if !t.stop.load(Ordering::Relaxed) {
                            t.lost.fetch_add(1, Ordering::Relaxed);
                            t.error(format!("ping-pong: {e}"));
                        }
                        return;
                    }
                }
            }
        }
        Mode::Hold => loop {
            // Wait for the next heartbeat, watching for the server closing the connection meanwhile.
            let wait = o.heartbeat.unwrap_or(Duration::from_secs(3600));
            let mut probe = [0u8; 1];
            tokio::select! {
                r = s.read(&mut probe) => {
                    if !t.stop.load(Ordering::Relaxed) {
                        t.lost.fetch_add(1, Ordering::Relaxed);
                        t.error(match r { Ok(_) => "server closed a held connection".into(), Err(e) => format!("hold: {e}") });
                    }
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            if t.stop.load(Ordering::Relaxed) {
                return;
            }
            pattern(i, seq, &mut out);
            seq += 1;
            match ex.run(&mut s, &out).await {
                Ok(true) => {
                    t.messages.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    t.mismatches.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    t.lost.fetch_add(1, Ordering::Relaxed);
                    t.error(format!("heartbeat: {e}"));
                    return;
                }
            }
        },
    }
}

/// One thread: a current-thread runtime opening connections `ids`, then running them.
fn worker(
    o: Arc<Opts>,
    t: Arc<Totals>,
    ids: Vec<usize>,
    started: Instant,
    gate: Arc<std::sync::Barrier>,
) -> Histogram<u64> {
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start a runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let h2 = hist.clone();
    local.block_on(&rt, async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(o.concurrency));
        let mut pending = Vec::with_capacity(ids.len());
        let per_thread_rate = o.connect_rate / o.threads as f64;
        for (k, i) in ids.into_iter().enumerate() {
            if per_thread_rate > 0.0 {
                let due = started + Duration::from_secs_f64(k as f64 / per_thread_rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let (o2, t2) = (o.clone(), t.clone());
            pending.push(tokio::task::spawn_local(async move {
                let mut r = connect(&o2, i).await;
                if o2.websocket {
                    if let Ok(s) = r.as_mut() {
                        let up = tokio::time::timeout(o2.connect_timeout, ws_upgrade(s)).await;
                        if let Err(e) = up.unwrap_or_else(|_| {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "upgrade timed out",
                            ))
                        }) {
                            r = Err(e);
                        }
                    }
                }
                drop(permit);
                match r {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        // Close with RST at exit: no TIME_WAIT sockets left to skew the next measurement.
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        t2.established.fetch_add(1, Ordering::Relaxed);
                        Some((i, s))
                    }
                    Err(e) => {
                        t2.connect_errors.fetch_add(1, Ordering::Relaxed);
                        t2.error(format!("connect: {e}"));
                        None
                    }
                }
            }));
        }
        let mut streams = Vec::with_capacity(pending.len());
        for p in pending {
            if let Ok(Some(s)) = p.await {
                streams.push(s);
            }
        }
        // Every thread waits here so the pingpong/hold phase starts for all connections at once.
        let g = gate.clone();
        let _ = tokio::task::spawn_blocking(move || g.wait()).await;
        let mut tasks = Vec::with_capacity(streams.len());
        for (i, s) in streams {
            tasks.push(tokio::task::spawn_local(conn_task(
                o.clone(),
                t.clone(),
                i,
                s,
                h2.clone(),
            )));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    let merged = hist.borrow().clone();
    merged
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit (each connection is one fd here).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    let o = Arc::new(parse());
    raise_nofile();
    let t = Arc::new(Totals {
        established: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        first_error: std::sync::Mutex::new(None),
    });
    // SIGTERM/SIGINT end the run early (the bench driver stops hold clients this way).
    let term = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let flag = term.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut s) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig))
                    {
                        s.recv().await;
                        flag.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
    }
    let started = Instant::now();
    // The gate has one extra party: this thread, which measures the establish time.
    let gate = Arc::new(std::sync::Barrier::new(o.threads + 1));
    let mut handles = Vec::new();
    for th in 0..o.threads {
        let ids: Vec<usize> = (th..o.connections).step_by(o.threads).collect();
        let (o2, t2, g2) = (o.clone(), t.clone(), gate.clone());
        handles.push(std::thread::spawn(move || worker(o2, t2, ids, started, g2)));
    }
    gate.wait();
    let establish = started.elapsed();
    let est = t.established.load(Ordering::SeqCst);
    eprintln!("established {est} in {:.3} s", establish.as_secs_f64());
    let phase = Instant::now();
    let deadline = phase + o.duration;
    while Instant::now() < deadline && !term.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let m0 = t.messages.load(Ordering::SeqCst);
    let elapsed = phase.elapsed();
    t.stop.store(true, Ordering::SeqCst);
    // Tasks notice `stop` at their next wakeup; idle ones never wake, so exit without joining them.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    if o.mode == Mode::PingPong {
        for h in handles {
            if let Ok(part) = h.join() {
                let _ = hist.add(&part);
            }
        }
    }
    let q = |p: f64| {
        if hist.is_empty() {
            serde_json::Value::Null
        } else {
            hist.value_at_quantile(p).into()
        }
    };
    let first_error = t.first_error.lock().ok().and_then(|g| g.clone());
    let report = serde_json::json!({
        "client": "bench-client",
        "mode": if o.mode == Mode::PingPong { "pingpong" } else { "hold" },
        "target": o.target.to_string(),
        "connections": o.connections,
        "established": est,
        "connect_errors": t.connect_errors.load(Ordering::SeqCst),
        "establish_seconds": establish.as_secs_f64(),
        "connect_rate_per_s": est as f64 / establish.as_secs_f64().max(1e-9),
        "phase_seconds": elapsed.as_secs_f64(),
        "messages": m0,
        "messages_per_s": m0 as f64 / elapsed.as_secs_f64().max(1e-9),
        "message_size": o.message_size,
        "protocol": if o.websocket { "websocket" } else { "echo" },
        "lost": t.lost.load(Ordering::SeqCst),
        "mismatches": t.mismatches.load(Ordering::SeqCst),
        "latency_us": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": if hist.is_empty() { serde_json::Value::Null } else { hist.max().into() }},
        "first_error": first_error,
    });
    println!("{report}");
    exit(0);
}
