//! The admin endpoint over real loopback sockets, with short limits so that deadlines pass quickly.
//! (End-to-end tests with the real binary on both engines: tests/tests/admin.rs.)

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

fn limits() -> Limits {
    Limits {
        max_connections: 4,
        request_deadline: Duration::from_millis(1500),
        write_deadline: Duration::from_secs(2),
        keep_alive_idle: PATIENCE,
        fresh: Duration::from_millis(100),
    }
}

fn start(limits: Limits) -> SocketAddr {
    let addr = serve_with("127.0.0.1:0".parse().unwrap(), limits, || {
        "hello 1\n".to_string()
    })
    .unwrap();
    assert_ne!(addr.port(), 0);
    addr
}

/// Generous bound for anything that should take a fraction of a second.
const PATIENCE: Duration = Duration::from_secs(30);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// One response read off `s`: (status, head, body), the body by its Content-Length (none for HEAD).
fn read_response(s: &mut TcpStream, head_request: bool) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => panic!("in a response head: {other:?}"),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; if head_request { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn get(s: &mut TcpStream, path: &str) -> (u16, String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    read_response(s, false)
}

/// Waits for the server to close `s` (EOF or reset); returns how long it took.
fn wait_closed(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!("no close after {:?}: {e}", t.elapsed()),
        }
    }
}

#[test]
fn routes() {
    let r = |m: Method, p: &str| route(&m, p, &|| "m 1\n".to_string());
    assert_eq!(
        r(Method::GET, "/metrics"),
        (StatusCode::OK, CONTENT_TYPE, "m 1\n".into())
    );
    assert_eq!(r(Method::HEAD, "/metrics").0, StatusCode::OK);
    assert_eq!(r(Method::GET, "/").0, StatusCode::OK);
    assert_eq!(r(Method::GET, "/nope").0, StatusCode::NOT_FOUND);
    assert_eq!(
        r(Method::POST, "/metrics").0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[test]
fn keep_alive_and_http_details() {
    let addr = start(limits());
    let mut s = connect(addr);
    for _ in 0..3 {
        let (status, head, body) = get(&mut s, "/metrics?x=1");
        assert_eq!(status, 200, "{head}");
        assert!(head.contains(CONTENT_TYPE), "{head}");
        assert_eq!(body, "hello 1\n");
    }
    // HEAD: the GET's headers, no body (the next response on the connection proves it).
    s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s, true);
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 8"),
        "{head}"
    );
    assert_eq!(get(&mut s, "/nope").0, 404);
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s, false);
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    assert_eq!(get(&mut s, "/").0, 200);

    // HTTP/1.0 and `Connection: close` end with EOF, as before.
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello 1\n"), "{resp}");

    // Garbage and oversized heads get hyper's answers.
    let mut s = connect(addr);
    s.write_all(b"garbage\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let mut s = connect(addr);
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_HEAD * 2)
    );
    let _ = s.write_all(big.as_bytes());
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.80}");
}

#[test]
fn silent_connections_do_not_delay_a_scrape_and_are_dropped() {
    let l = limits();
    let addr = start(Limits {
        max_connections: 64,
        ..l
    });
    let mut silent: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    let mut s = connect(addr);
    assert_eq!(get(&mut s, "/metrics").2, "hello 1\n");
    for q in &mut silent {
        wait_closed(q);
    }
    // The keep-alive scraper is still there (it is not idle past its own limit yet).
    assert_eq!(get(&mut s, "/metrics").0, 200);
}

#[test]
fn slowloris_is_dropped_by_the_request_deadline() {
    let l = limits();
    let addr = start(l);
    for first_request_done in [false, true] {
        let mut s = connect(addr);
        if first_request_done {
            assert_eq!(get(&mut s, "/metrics").0, 200);
        }
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let closed = loop {
            assert!(t.elapsed() < PATIENCE, "slowloris still connected");
            if s.write_all(b"X").is_err() {
                break t.elapsed();
            }
            match s.read(&mut buf) {
                Ok(0) => break t.elapsed(),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break t.elapsed(),
                Ok(n) => panic!("unexpected answer {:?}", &buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {} // timed out: send the next byte
            }
        };
        assert!(closed >= l.request_deadline / 2, "{closed:?}");
    }
}

#[test]
fn at_the_cap_the_oldest_idle_connection_goes() {
    let l = limits();
    let addr = start(l);
    let mut held: Vec<TcpStream> = (0..l.max_connections)
        .map(|_| {
            let mut s = connect(addr);
            assert_eq!(get(&mut s, "/metrics").0, 200);
            s
        })
        .collect();
    let mut newcomer = connect(addr);
    assert_eq!(get(&mut newcomer, "/metrics").2, "hello 1\n");
    wait_closed(&mut held[0]);
    for s in &mut held[1..] {
        assert_eq!(get(s, "/metrics").0, 200);
    }
}

#[test]
fn idle_keep_alive_connection_is_closed_cleanly() {
    let addr = start(Limits {
        keep_alive_idle: Duration::from_secs(1),
        ..limits()
    });
    let mut s = connect(addr);
    assert_eq!(get(&mut s, "/metrics").0, 200);
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "FIN after the idle limit");
}

#[test]
fn a_large_scrape_arrives_whole_twice_on_one_connection() {
    let body = "y".repeat(3 << 20);
    let expected = body.clone();
    let addr = serve_with("127.0.0.1:0".parse().unwrap(), limits(), move || {
        body.clone()
    })
    .unwrap();
    let mut s = connect(addr);
    for _ in 0..2 {
        let (status, _, got) = get(&mut s, "/metrics");
        assert_eq!(status, 200);
        assert!(got == expected, "{} bytes", got.len());
    }
}

#[test]
fn response_not_read_is_dropped() {
    let addr = serve_with("127.0.0.1:0".parse().unwrap(), limits(), || {
        "x".repeat(8 << 20)
    })
    .unwrap();
    // A small receive window, a request, and not a byte of the 8 MiB answer read.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The server gives up on the write: its side of the connection leaves ESTABLISHED.
    let client = s.local_addr().unwrap();
    let t = Instant::now();
    while tcp_state(addr, client) == Some(1) {
        assert!(
            t.elapsed() < PATIENCE,
            "the server still holds the connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    }
    assert!(
        got < 8 << 20,
        "the whole answer arrived: the write was not cut"
    );
}

/// State of the IPv4 TCP socket `local -> remote` from /proc/net/tcp (1 = ESTABLISHED).
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let (l, r) = (proc_net_hex(local), proc_net_hex(remote));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&r.as_str()))
                .then(|| u8::from_str_radix(f[3], 16).unwrap())
        })
}

// ------------------------------------------------------------------------------ the cap's order

/// A `Shared` for the cap's logic alone (no runtime, no server), with a request deadline no stall
/// of the test machine reaches, and no time to speak (see `fresh_silent_connections_get_time_to_speak`).
fn shared_with_cap(max_connections: usize) -> Shared {
    Shared {
        limits: Limits {
            max_connections,
            request_deadline: PATIENCE,
            fresh: Duration::ZERO,
            ..limits()
        },
        conns: RefCell::new(HashMap::new()),
        sweeper: Notify::new(),
        room: Notify::new(),
        spare: RefCell::new(None),
    }
}

fn add(shared: &Shared, id: u64, phase: Phase) -> Rc<Conn> {
    let c = Rc::new(Conn::new(id, Instant::now()));
    c.phase.set(phase);
    shared.conns.borrow_mut().insert(id, c.clone());
    c
}

fn ids(shared: &Shared) -> Vec<u64> {
    let mut v: Vec<u64> = shared.conns.borrow().keys().copied().collect();
    v.sort_unstable();
    v
}

#[test]
fn at_the_cap_silent_go_first_then_the_slowest_head_then_a_stalled_response() {
    let shared = shared_with_cap(4);
    let deadline = shared.limits.request_deadline;
    let t = Instant::now() - 2 * deadline;
    let at = |ms: u64| t + Duration::from_millis(ms);
    add(&shared, 1, Phase::Reading { since: at(0) });
    add(&shared, 2, Phase::Silent { since: at(1) });
    add(&shared, 3, Phase::Serving { since: at(0) });
    add(&shared, 4, Phase::Silent { since: at(2) });
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1, 3, 4], "the one silent the longest goes");
    add(&shared, 5, Phase::Reading { since: at(3) });
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1, 3, 5], "a silent one before any reader");
    // No silent one left: the head arriving the longest goes (slowloris), not the newer one, nor the
    // response that has been going even longer.
    add(&shared, 6, Phase::Serving { since: at(4) });
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [3, 5, 6], "the oldest head goes");
    add(
        &shared,
        7,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [3, 6, 7], "then the last head");
    // Then a response the peer has taken longer than the request deadline over, the longest first;
    // one within it is never dropped.
    add(
        &shared,
        8,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [6, 7, 8], "the response going the longest");
    add(
        &shared,
        9,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [7, 8, 9]);
    add(
        &shared,
        10,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(
        shared.make_room(),
        Room::Full,
        "nothing may be dropped: refuse the newcomer"
    );
    assert_eq!(ids(&shared), [7, 8, 9, 10]);
}

/// Waits until `n` bytes are queued for reading on `s` (sent on loopback, not yet read).
fn await_queued(s: &TcpStream, n: usize) {
    s.set_nonblocking(true).unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; n];
    while n > 0 && !matches!(s.peek(&mut buf), Ok(k) if k >= n) {
        assert!(t.elapsed() < PATIENCE, "{n} bytes never arrived");
        std::thread::yield_now();
    }
}

#[test]
fn a_request_still_in_the_kernel_is_seen_before_a_drop() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = shared_with_cap(3);
    let sent: [&[u8]; 3] = [
        b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", // whole: in hand
        b"GET /metr",                                // part of a head
        b"",                                         // silent
    ];
    let mut pairs = Vec::new();
    let t = Instant::now();
    for (i, bytes) in sent.iter().enumerate() {
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(bytes).unwrap();
        await_queued(&server, bytes.len());
        // All three look silent since their accept, the one with the whole request the longest.
        let c = add(
            &shared,
            i as u64 + 1,
            Phase::Silent {
                since: t + Duration::from_millis(i as u64),
            },
        );
        c.fd.set(Some(server.as_raw_fd()));
        pairs.push((client, server));
    }
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1, 2], "the silent one goes");
    let phase = |id| shared.conns.borrow()[&id].phase.get();
    assert!(matches!(phase(1), Phase::Silent { .. }), "{:?}", phase(1));
    assert!(matches!(phase(2), Phase::Reading { .. }), "{:?}", phase(2));
    // Next at the cap: a newer silent connection goes before the head, and the head before the
    // request in hand, which never goes.
    add(
        &shared,
        4,
        Phase::Silent {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1, 2]);
    add(
        &shared,
        5,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1, 5]);
    add(
        &shared,
        6,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Full);
    assert_eq!(ids(&shared), [1, 5, 6]);
}

#[test]
fn a_slowloris_byte_still_in_the_kernel_does_not_make_it_a_request() {
    // A head trickled a byte at a time: the server has read up to a `\r`, the `\n` is unread. That
    // is a line's end, not the head's: the connection stays a reader, and goes at the cap.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let first = b"GET /metrics HTTP/1.1\r\nHost: t\r";
    client.write_all(first).unwrap();
    let mut got = vec![0u8; first.len()];
    server.read_exact(&mut got).unwrap();
    client.write_all(b"\n").unwrap();
    await_queued(&server, 1);
    let shared = shared_with_cap(1);
    let c = add(
        &shared,
        1,
        Phase::Reading {
            since: Instant::now(),
        },
    );
    c.fd.set(Some(server.as_raw_fd()));
    assert_eq!(shared.make_room(), Room::Made);
    assert!(ids(&shared).is_empty());
}

#[test]
fn fresh_silent_connections_get_time_to_speak() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut shared = shared_with_cap(2);
    shared.limits.fresh = PATIENCE;
    let mut pairs = Vec::new();
    let pair = || {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    };
    // Two connections that have not spoken since their handshake: neither may go yet.
    for id in [1, 2] {
        let (client, server) = pair();
        add(
            &shared,
            id,
            Phase::Silent {
                since: Instant::now(),
            },
        )
        .fd
        .set(Some(server.as_raw_fd()));
        pairs.push((client, server));
    }
    match shared.make_room() {
        Room::Wait(left) => assert!(left <= PATIENCE, "{left:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&shared), [1, 2]);
    // A reader goes before them, however new.
    shared.conns.borrow_mut().remove(&2);
    add(
        &shared,
        3,
        Phase::Reading {
            since: Instant::now(),
        },
    );
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [1]);
    // Past its time to speak (here none), a silent one goes.
    add(
        &shared,
        4,
        Phase::Serving {
            since: Instant::now(),
        },
    );
    shared.limits.fresh = Duration::ZERO;
    assert_eq!(shared.make_room(), Room::Made);
    assert_eq!(ids(&shared), [4]);
}

#[test]
fn a_scrape_that_speaks_late_survives_a_flood_of_silent_connections() {
    // The scrape connects, then is slow to send its request (a client descheduled between its
    // connect and its write); meanwhile 40 silent connections arrive at a cap of 4. It has `fresh`
    // (here 2 s) to speak: it is not dropped as the oldest silent connection.
    let addr = start(Limits {
        fresh: Duration::from_secs(2),
        ..limits()
    });
    let mut scrape = connect(addr);
    let silent: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    let r = scrape.read_to_end(&mut resp);
    assert!(
        r.is_ok() && resp.starts_with(b"HTTP/1.1 200") && resp.ends_with(b"hello 1\n"),
        "{r:?} {:?}",
        String::from_utf8_lossy(&resp)
    );
    drop(silent);
}

#[test]
fn scrapes_in_a_flood_of_silent_connections_are_all_answered() {
    // Cap 4; 400 connections as fast as they open, every 8th a scrape that sends its whole request at
    // once: the silent ones are dropped, and never a scrape.
    let addr = start(limits());
    let mut scrapes = Vec::new();
    let mut silent = Vec::new();
    for i in 0..400 {
        let mut s = connect(addr);
        if i % 8 == 7 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            scrapes.push((i, s));
        } else {
            silent.push(s);
        }
    }
    for (i, mut s) in scrapes {
        let mut resp = Vec::new();
        let r = s.read_to_end(&mut resp);
        assert!(
            r.is_ok() && resp.starts_with(b"HTTP/1.1 200") && resp.ends_with(b"hello 1\n"),
            "scrape on connection {i}: {r:?} {:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    drop(silent);
}

const BIG: usize = 8 << 20;

/// A server with an 8 MiB body and `l`, and cap-many clients with a small receive window that ask for
/// it and read nothing yet, once the server's writes to each of them block (its send queue stays
/// full).
fn cap_full_of_unread_responses(l: Limits) -> (SocketAddr, Vec<TcpStream>) {
    let addr = serve_with("127.0.0.1:0".parse().unwrap(), l, || "x".repeat(BIG)).unwrap();
    let busy: Vec<TcpStream> = (0..l.max_connections)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: TcpStream = sock.into();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    for s in &busy {
        let t = Instant::now();
        while tcp_queues(addr, s.local_addr().unwrap()).is_none_or(|(tx, _)| tx == 0) {
            assert!(t.elapsed() < PATIENCE, "the server never wrote its answer");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (addr, busy)
}

#[test]
fn at_the_cap_with_every_response_unread_a_newcomer_is_refused() {
    let l = Limits {
        request_deadline: PATIENCE,
        write_deadline: PATIENCE,
        ..limits()
    };
    let (addr, busy) = cap_full_of_unread_responses(l);
    // A newcomer is closed at once without an answer; the busy ones are not dropped for it.
    let mut newcomer = connect(addr);
    let _ = newcomer.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut resp = Vec::new();
    let _ = newcomer.read_to_end(&mut resp);
    assert!(
        resp.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(40)])
    );
    for mut s in busy {
        let (status, _, body) = read_response(&mut s, false);
        assert_eq!((status, body.len()), (200, BIG));
    }
}

#[test]
fn a_response_not_taken_within_the_request_deadline_makes_way_for_a_newcomer() {
    let l = Limits {
        write_deadline: PATIENCE,
        ..limits()
    };
    let (addr, busy) = cap_full_of_unread_responses(l);
    // Past the request deadline, a reader that slow no longer keeps its slot: a scrape is served,
    // and one of the non-readers is dropped for it.
    std::thread::sleep(l.request_deadline);
    let mut newcomer = connect(addr);
    let (status, _, body) = get(&mut newcomer, "/metrics");
    assert_eq!((status, body.len()), (200, BIG));
    let t = Instant::now();
    while busy
        .iter()
        .all(|s| tcp_state(addr, s.local_addr().unwrap()) == Some(1))
    {
        assert!(t.elapsed() < PATIENCE, "no non-reader was dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An IPv4 address as /proc/net/tcp writes it.
fn proc_net_hex(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    }
}

/// (send queue, receive queue) of the IPv4 TCP socket `local -> remote` from /proc/net/tcp.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let (l, r) = (proc_net_hex(local), proc_net_hex(remote));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
                return None;
            }
            let (tx, rx) = f[4].split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        })
}
