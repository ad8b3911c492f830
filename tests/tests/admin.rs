//! The admin (metrics) port cannot be blinded (issue 11, part 4), on both engines: a scrape behind 20
//! and behind 1,000 silent connections completes; slowloris is dropped by the request deadline;
//! Prometheus-style keep-alive serves two scrapes on one connection (raw, and with curl); at the cap
//! on admin connections a new scraper is served and the oldest idle connection is dropped.
//!
//! Timing is reported (`[admin] …` lines, `--nocapture`), never asserted beyond generous deadlines.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ringhold_tests::metrics::{parse, Scrape};
use ringhold_tests::net::{read_end, End};
use ringhold_tests::{both_engines, secs, serial, tools, Engine, Server};

/// The admin endpoint's cap on connections (crates/ringhold-metrics README, "The metrics endpoint").
const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Its request deadline: a connection with no complete request head after this long is dropped.
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

fn metrics_addr(server: &Server) -> SocketAddr {
    server.metrics
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(secs(30))).unwrap();
    s.set_write_timeout(Some(secs(30))).unwrap();
    s
}

/// One HTTP/1.1 keep-alive GET on `s`: (status, body), the body read by its Content-Length.
fn get(s: &mut TcpStream, path: &str) -> Result<(u16, String), String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: ringhold\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Ok(_) => {
                return Err(format!(
                    "EOF in the response head after {} bytes",
                    head.len()
                ))
            }
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
        if head.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head}"))?;
    let mut body = vec![0u8; len];
    // (read_exact retries EINTR itself.)
    s.read_exact(&mut body)
        .map_err(|e| format!("reading {len} body bytes: {e}"))?;
    String::from_utf8(body)
        .map(|b| (status, b))
        .map_err(|e| e.to_string())
}

/// Checks that `body` is a real scrape of this server and returns it parsed.
fn check_body(engine: Engine, body: &str) -> Scrape {
    let m = parse(body);
    assert_eq!(
        m.sum("ringhold_build_info", &[("engine", engine.name())]),
        Some(1.0),
        "not a scrape of ringhold --engine {}:\n{body}",
        engine.name()
    );
    assert!(
        m.sum("ringhold_connections_active", &[]).is_some(),
        "{body}"
    );
    assert!(
        body.contains("# TYPE ringhold_metrics_scrapes_total counter"),
        "{body}"
    );
    m
}

/// A fresh connection, one GET /metrics, checked; returns how long it took.
fn timed_scrape(engine: Engine, addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = connect(addr);
    let (status, body) = get(&mut s, "/metrics")
        .unwrap_or_else(|e| panic!("scrape of {addr} failed after {:?}: {e}", t.elapsed()));
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    check_body(engine, &body);
    took
}

/// Waits until the server closes `s` (EOF or reset); returns how long that took.
fn wait_closed(s: &mut TcpStream, what: &str) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(secs(30))).unwrap();
    match read_end(s) {
        End::Eof | End::Reset => t.elapsed(),
        other => panic!(
            "{what}: expected the server to close it, got {other:?} after {:?}",
            t.elapsed()
        ),
    }
}

fn scrape_behind_silent(engine: Engine, n: usize) {
    let server = Server::start(engine, &[]);
    let addr = metrics_addr(&server);
    let t = Instant::now();
    let mut silent: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
    let connected = t.elapsed();
    let took = timed_scrape(engine, addr);
    assert!(
        took < secs(30),
        "scrape behind {n} silent connections took {took:?}"
    );
    let fds = server.open_fds();
    // Every silent connection goes: by the request deadline, or earlier as the oldest idle one at the
    // cap.
    let t = Instant::now();
    for (i, s) in silent.iter_mut().enumerate() {
        wait_closed(s, &format!("silent connection {i}"));
    }
    eprintln!(
        "[admin] {}: {n} silent connections (connected in {connected:?}): scrape took {took:?}; \
         server fds right after: {fds}; all {n} closed by the server {:?} later",
        engine.name(),
        t.elapsed()
    );
    // And scraping still works afterwards.
    timed_scrape(engine, addr);
}

fn scrape_behind_20_silent_connections(engine: Engine) {
    scrape_behind_silent(engine, 20);
}

fn scrape_behind_1000_silent_connections(engine: Engine) {
    // 1,000 sockets in this process (its soft nofile limit is raised by the harness).
    let _g = serial();
    scrape_behind_silent(engine, 1000);
}

fn slowloris_is_dropped_by_the_request_deadline(engine: Engine) {
    let server = Server::start(engine, &[]);
    let addr = metrics_addr(&server);
    for after_a_request in [false, true] {
        let mut s = connect(addr);
        if after_a_request {
            // Keep-alive: the deadline of a later request runs from its first byte.
            let (status, body) = get(&mut s, "/metrics").unwrap();
            assert_eq!(status, 200);
            check_body(engine, &body);
        }
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringhold\r\n")
            .unwrap();
        // One more header byte every second; a read with a 1 s timeout paces it and sees the close.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let t = Instant::now();
        let mut sent = 0;
        let mut buf = [0u8; 512];
        let how = loop {
            assert!(
                t.elapsed() < secs(60),
                "a slowloris connection is still open after {:?} ({sent} bytes trickled)",
                t.elapsed()
            );
            // While it trickles, a real scrape is served.
            if sent == 1 {
                timed_scrape(engine, addr);
            }
            if let Err(e) = s.write_all(b"X") {
                break format!("write failed: {e}");
            }
            sent += 1;
            match s.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(n) => panic!(
                    "answer to an incomplete request: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => break format!("read: {e}"),
            }
        };
        let took = t.elapsed();
        eprintln!(
            "[admin] {}: slowloris ({}) dropped after {took:?}, {sent} bytes trickled ({how})",
            engine.name(),
            if after_a_request {
                "second request on a keep-alive connection"
            } else {
                "first request"
            }
        );
        assert!(
            took + Duration::from_millis(500) >= REQUEST_DEADLINE,
            "dropped before the request deadline: {took:?}"
        );
    }
}

fn keep_alive_serves_two_scrapes_on_one_connection(engine: Engine) {
    let server = Server::start(engine, &[]);
    let addr = metrics_addr(&server);
    let mut s = connect(addr);
    let t = Instant::now();
    let (st1, b1) = get(&mut s, "/metrics").unwrap();
    let first = t.elapsed();
    let (st2, b2) = get(&mut s, "/metrics").unwrap();
    let both = t.elapsed();
    assert_eq!((st1, st2), (200, 200));
    let n1 = check_body(engine, &b1).sum("ringhold_metrics_scrapes_total", &[]);
    let n2 = check_body(engine, &b2).sum("ringhold_metrics_scrapes_total", &[]);
    assert!(
        n2 > n1,
        "the second scrape is a new one: {n1:?} then {n2:?}"
    );
    eprintln!(
        "[admin] {}: keep-alive: first scrape {first:?}, second on the same connection at {both:?}",
        engine.name()
    );

    // curl, a client users have, reuses its connection for the second URL (num_connects = 0).
    let Some(curl) = tools::require(
        "curl",
        "curl",
        "keep_alive_serves_two_scrapes_on_one_connection",
    ) else {
        return;
    };
    let url = format!("http://{addr}/metrics");
    let out = Command::new(curl)
        .args(["-sS", "--max-time", &secs(30).as_secs().max(1).to_string()])
        .args(["-o", "/dev/null", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{num_connects}\\n"])
        .args([&url, &url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["200 1", "200 0"],
        "curl: status and new connections per URL"
    );
}

fn at_the_cap_a_new_scraper_is_served_and_the_oldest_idle_goes(engine: Engine) {
    let server = Server::start(engine, &[]);
    let addr = metrics_addr(&server);
    // ADMIN_MAX_CONNECTIONS keep-alive connections, each idle after one scrape (they would otherwise
    // stay for the keep-alive idle time, far longer than this test).
    let mut held: Vec<TcpStream> = (0..ADMIN_MAX_CONNECTIONS)
        .map(|i| {
            let mut s = connect(addr);
            let (status, _) = get(&mut s, "/metrics")
                .unwrap_or_else(|e| panic!("keep-alive connection {i}: {e}"));
            assert_eq!(status, 200);
            s
        })
        .collect();
    let took = timed_scrape(engine, addr);
    let closed = wait_closed(&mut held[0], "the oldest idle connection");
    for (i, s) in held.iter_mut().enumerate().skip(1) {
        let (status, body) =
            get(s, "/metrics").unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        assert_eq!(status, 200);
        check_body(engine, &body);
    }
    eprintln!(
        "[admin] {}: at the cap ({ADMIN_MAX_CONNECTIONS}): new scrape {took:?}, oldest closed {closed:?} after it",
        engine.name()
    );
}

both_engines!(
    scrape_behind_20_silent_connections,
    scrape_behind_1000_silent_connections,
    slowloris_is_dropped_by_the_request_deadline,
    keep_alive_serves_two_scrapes_on_one_connection,
    at_the_cap_a_new_scraper_is_served_and_the_oldest_idle_goes,
);
