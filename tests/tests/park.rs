//! Parking (`--park-after`, io_uring): a connection that has been quiet for a while waits on a
//! readiness poll instead of an armed receive, and reads again when bytes, a FIN or a reset arrive.
//! Every test runs on both engines: epoll has nothing to park (its `ringhold_connections_parked`
//! stays 0) and must behave exactly the same. On io_uring each test first waits until the server
//! reports its connections parked, so that what follows happens to parked connections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use ringhold_tests::net::{echo_stream, read_end, roundtrip, set_linger_zero, End};
use ringhold_tests::{both_engines, flag_ms, secs, serial, wait_until, Engine, Pattern, Server};

/// `--park-after` of these tests: short, so that the tests do not wait long for parking.
const PARK_AFTER: &str = "100ms";

/// Waits until `n` connections are parked (io_uring; epoll parks none: its gauge must read 0).
fn expect_parked(server: &Server, engine: Engine, n: usize, what: &str) {
    let want = match engine {
        Engine::Uring => n as f64,
        Engine::Epoll => 0.0,
    };
    server.expect_metric("ringhold_connections_parked", &[], what, |v| v == want);
}

/// The counter of parks (0 on epoll).
fn parks(server: &Server) -> f64 {
    server
        .scrape()
        .and_then(|s| s.sum("ringhold_parks_total", &[]))
        .unwrap_or(-1.0)
}

/// Every slot came back: nothing open, parked or holding buffers.
fn expect_nothing_left(server: &Server, what: &str) {
    for name in [
        "ringhold_connections_active",
        "ringhold_connections_parked",
        "ringhold_buffers_in_use",
    ] {
        server.expect_metric(name, &[], what, |v| v == 0.0);
    }
}

/// A parked connection echoes every size byte-exact, from one byte to a stream much larger than a
/// receive buffer. A message that fits in one receive buffer (2 KiB) is read by the wake-up alone and
/// the connection stays parked; a longer one wakes it twice, which unparks it, and it parks again
/// once quiet.
fn parked_connection_echoes_byte_exact(engine: Engine) {
    let server = Server::start(engine, &["--park-after", PARK_AFTER, "--idle-timeout", "0"]);
    let mut c = server.connect();
    roundtrip(&mut c, b"hello, then quiet").expect("first echo");
    for (round, len) in [1usize, 100, 2048, 2049, 64 * 1024, 1 << 20]
        .into_iter()
        .enumerate()
    {
        expect_parked(&server, engine, 1, &format!("1 before message {round}"));
        let before = parks(&server);
        c = echo_stream(c, round as u64, len, len.min(64 * 1024), false)
            .unwrap_or_else(|e| panic!("{len} B sent to a parked connection: {e}"));
        if engine == Engine::Uring && len > 2048 {
            // Unparked by the second wake-up, parked again once quiet.
            server.expect_metric(
                "ringhold_parks_total",
                &[],
                &format!("more than {before} after message {round}"),
                |v| v > before,
            );
        }
    }
    drop(c);
    expect_nothing_left(&server, "0 after the client left");
}

/// 400 connections park, are all woken at once by one message each (in a shuffled order), echo
/// byte-exact and park again, three times; when they leave, every slot comes back.
fn many_connections_park_and_wake(engine: Engine) {
    let _g = serial();
    const N: usize = 400;
    let server = Server::start(engine, &["--park-after", PARK_AFTER, "--idle-timeout", "0"]);
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            let mut c = server.connect();
            roundtrip(&mut c, format!("conn {i}").as_bytes())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut order: Vec<usize> = (0..N).collect();
    for round in 0..3u64 {
        expect_parked(&server, engine, N, &format!("{N} before round {round}"));
        for i in (0..N).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let msg = |i: usize| Pattern::bytes(round << 32 | i as u64, 300 + i % 3000);
        for &i in &order {
            conns[i]
                .write_all(&msg(i))
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: write: {e}"));
        }
        for &i in &order {
            let want = msg(i);
            let mut got = vec![0u8; want.len()];
            conns[i]
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: read: {e}"));
            assert!(
                got == want,
                "round {round}, connection {i}: echo differs from what was sent"
            );
        }
    }
    expect_parked(&server, engine, N, &format!("{N} after the last round"));
    drop(conns);
    expect_nothing_left(&server, "0 after every client left");
    roundtrip(&mut server.connect(), b"next").expect("echo after the others left");
}

/// Bytes that arrive while the server is cancelling a receive to park the connection are never lost
/// or reordered: with `--park-after 20ms` (a park sweep every 20 ms), 32 connections each stream
/// ~100 chunks of random size with random gaps around the park time, and every stream comes back
/// byte-exact. Run with multishot receives, and with single-shot ones (a pool so small that the
/// engine receives one buffer at a time).
fn data_racing_the_park_is_never_lost(engine: Engine) {
    let _g = serial();
    for extra in [&[][..], &["--buffers", "128"][..]] {
        let mut args = vec!["--park-after", "20ms", "--idle-timeout", "0"];
        args.extend_from_slice(extra);
        let server = Server::start(engine, &args);
        let workers: Vec<_> = (0..32u64)
            .map(|k| {
                let c = server.connect();
                thread::spawn(move || race_one(c, k))
            })
            .collect();
        let errors: Vec<String> = workers
            .into_iter()
            .filter_map(|w| w.join().expect("worker").err())
            .collect();
        assert!(
            errors.is_empty(),
            "{args:?}: streams broken:\n{}",
            errors.join("\n")
        );
        if engine == Engine::Uring {
            server.expect_metric(
                "ringhold_parks_total",
                &[],
                "some parks while the streams ran",
                |v| v > 0.0,
            );
        }
        expect_nothing_left(&server, "0 after the streams ended");
    }
}

/// One connection of [`data_racing_the_park_is_never_lost`]: a writer with random chunks and gaps,
/// this thread reading the echo back and comparing.
fn race_one(c: TcpStream, k: u64) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(k);
    let chunks: Vec<(usize, u64)> = (0..100)
        .map(|_| (rng.random_range(1..6000), rng.random_range(0..45)))
        .collect();
    let total: usize = chunks.iter().map(|c| c.0).sum();
    let stream = Pattern::bytes(1000 + k, total);
    let mut w = c.try_clone().map_err(|e| format!("clone: {e}"))?;
    let sent = stream.clone();
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut at = 0;
        for (len, gap_ms) in chunks {
            thread::sleep(Duration::from_millis(gap_ms));
            w.write_all(&sent[at..at + len])
                .map_err(|e| format!("write at {at}: {e}"))?;
            at += len;
        }
        Ok(())
    });
    let mut r = c;
    r.set_read_timeout(Some(secs(20))).ok();
    let mut got = vec![0u8; total];
    let mut at = 0;
    while at < total {
        match r.read(&mut got[at..]) {
            Ok(0) => return Err(format!("connection {k}: EOF after {at} of {total} B")),
            Ok(n) => {
                if got[at..at + n] != stream[at..at + n] {
                    return Err(format!(
                        "connection {k}: echo differs in bytes {at}..{}",
                        at + n
                    ));
                }
                at += n;
            }
            Err(e) => return Err(format!("connection {k}: read after {at} of {total} B: {e}")),
        }
    }
    writer.join().map_err(|_| "writer panicked".to_string())??;
    Ok(())
}

/// `--idle-timeout` closes a parked connection like any other, gracefully: the peer sees EOF. One peer
/// answers with its FIN (which wakes the parked, lingering connection); the other stays silent and is
/// closed by `--linger-timeout` (the parked poll is cancelled for the close). Nothing is left.
fn idle_timeout_closes_a_parked_connection(engine: Engine) {
    let idle = secs(1);
    let server = Server::start(
        engine,
        &[
            "--park-after",
            PARK_AFTER,
            "--idle-timeout",
            &flag_ms(idle),
            "--linger-timeout",
            "300ms",
        ],
    );
    let mut answers = server.connect();
    let mut silent = server.connect();
    roundtrip(&mut answers, b"one").expect("first echo");
    roundtrip(&mut silent, b"two").expect("first echo");
    let t0 = Instant::now();
    expect_parked(&server, engine, 2, "2 before the idle timeout");
    for (name, c) in [("answers", &mut answers), ("silent", &mut silent)] {
        c.set_read_timeout(Some(idle + secs(15))).ok();
        assert_eq!(read_end(c), End::Eof, "{name}: the idle close");
    }
    let took = t0.elapsed();
    assert!(
        took >= idle - idle / 10,
        "closed after {took:?}, before --idle-timeout {idle:?}"
    );
    answers.shutdown(Shutdown::Write).expect("our FIN");
    server.expect_metric(
        "ringhold_closes_total",
        &[("reason", "idle_timeout")],
        "2 idle closes",
        |v| v == 2.0,
    );
    server.expect_metric(
        "ringhold_linger_timeouts_total",
        &[],
        "1: the silent peer",
        |v| v == 1.0,
    );
    expect_nothing_left(&server, "0 after both idle closes");
    drop(silent);
}

/// A parked connection wakes for the peer's FIN (the server closes too: EOF) and for a reset; both
/// slots come back.
fn fin_and_reset_wake_a_parked_connection(engine: Engine) {
    let server = Server::start(engine, &["--park-after", PARK_AFTER, "--idle-timeout", "0"]);
    let mut fin = server.connect();
    let mut rst = server.connect();
    roundtrip(&mut fin, b"fin later").expect("echo");
    roundtrip(&mut rst, b"reset later").expect("echo");
    expect_parked(&server, engine, 2, "2 before FIN and RST");
    fin.shutdown(Shutdown::Write).expect("FIN");
    assert_eq!(read_end(&mut fin), End::Eof, "after our FIN");
    set_linger_zero(&rst);
    drop(rst);
    server.expect_metric(
        "ringhold_closes_total",
        &[("reason", "peer_closed")],
        "1: the FIN",
        |v| v == 1.0,
    );
    server.expect_metric(
        "ringhold_closes_total",
        &[("reason", "reset")],
        "1: the RST",
        |v| v == 1.0,
    );
    expect_nothing_left(&server, "0 after FIN and RST");
}

/// SIGTERM closes parked connections gracefully (EOF), and once the clients answer with their FIN
/// the server exits at once, not at `--shutdown-timeout`.
fn drain_closes_parked_connections_with_eof(engine: Engine) {
    let _g = serial();
    const N: usize = 200;
    let mut server = Server::start(
        engine,
        &[
            "--park-after",
            PARK_AFTER,
            "--idle-timeout",
            "0",
            "--shutdown-timeout",
            "60s",
        ],
    );
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            let mut c = server.connect();
            roundtrip(&mut c, format!("conn {i}").as_bytes())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c
        })
        .collect();
    expect_parked(&server, engine, N, &format!("{N} before SIGTERM"));
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(read_end(c), End::Eof, "parked connection {i} on SIGTERM");
    }
    drop(conns);
    let status = server
        .wait_exit(secs(20))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t0.elapsed()));
    assert!(status.success(), "exit status after the drain: {status}");
}

/// `--park-after 0` parks nothing (the connections keep their receives armed).
fn park_after_zero_parks_nothing(engine: Engine) {
    let server = Server::start(engine, &["--park-after", "0", "--idle-timeout", "0"]);
    let mut conns: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for c in &mut conns {
        roundtrip(c, b"quiet from now on").expect("echo");
    }
    // Nothing announces that nothing happened: give a sweep ten times the tests' park time.
    thread::sleep(Duration::from_millis(1000));
    let flushed = wait_until(secs(10), || {
        server
            .scrape()
            .and_then(|s| s.sum("ringhold_connections_active", &[]))
            == Some(10.0)
    });
    assert!(flushed, "10 connections never showed as active");
    assert_eq!(parks(&server), 0.0, "parks with --park-after 0");
    for c in &mut conns {
        roundtrip(c, b"still armed").expect("echo");
    }
}

both_engines!(
    parked_connection_echoes_byte_exact,
    many_connections_park_and_wake,
    data_racing_the_park_is_never_lost,
    idle_timeout_closes_a_parked_connection,
    fin_and_reset_wake_a_parked_connection,
    drain_closes_parked_connections_with_eof,
    park_after_zero_parks_nothing,
);
