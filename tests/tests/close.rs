//! How connections end: half-close, resets, idle timeout, the connection limit, and the graceful drain
//! on SIGTERM.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ringhold_tests::net::{
    connect_with_rcvbuf, echo_stream, read_end, read_pattern, roundtrip, set_linger_zero,
    tcp_queues, write_pattern, End,
};
use ringhold_tests::sockdiag::lookup;
use ringhold_tests::{both_engines, flag_ms, secs, serial, wait_until, Engine, Pattern, Server};

/// TCP_ESTABLISHED (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// shutdown(Write) after sending: every byte comes back, then a clean EOF (the server closes once its
/// echo is flushed).
fn half_close_gets_all_echoed_then_eof(engine: Engine) {
    let server = Server::start(engine, &[]);
    for (i, len) in [0usize, 1, 2048, 100 * 1024, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let c = server.connect();
        let mut c = echo_stream(c, i as u64, len, 64 * 1024, true)
            .unwrap_or_else(|e| panic!("{len} B: {e}"));
        assert_eq!(
            read_end(&mut c),
            End::Eof,
            "after the echo of {len} B and our FIN"
        );
    }
}

/// 500 connections close with RST (SO_LINGER 0) while they have unread echo and unsent data. The
/// server keeps serving, and gives every slot back: with `--max-connections 500`, 500 new connections
/// are all admitted again (a leaked slot would refuse one); once they are gone too, its process
/// descriptors return to the baseline (epoll: one per connection; io_uring: connections are direct
/// descriptors, so a leak shows in the connection and buffer gauges instead, checked on both).
fn rst_storm_leaks_nothing(engine: Engine) {
    let _g = serial();
    const N: usize = 500;
    let server = Server::start(engine, &["--max-connections", "500"]);
    let baseline_fds = server.open_fds();
    let mut storm = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = server.connect();
        roundtrip(&mut c, &Pattern::bytes(i as u64, 16))
            .unwrap_or_else(|e| panic!("storm connection {i}: {e}"));
        storm.push(c);
    }
    // Leave data in flight both ways: as much as goes without blocking, never read.
    let junk = Pattern::bytes(1, 256 * 1024);
    for c in &storm {
        c.set_nonblocking(true).expect("nonblocking");
        let mut left: &[u8] = &junk;
        while !left.is_empty() {
            match (&*c).write(left) {
                Ok(n) => left = &left[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        set_linger_zero(c);
    }
    drop(storm);

    // Still serving.
    let mut probe = server.connect();
    roundtrip(&mut probe, b"after the storm").expect("echo after the RST storm");
    drop(probe);

    // Every slot comes back: N fresh connections are all admitted and echo.
    let mut last_err = String::new();
    let all_admitted = wait_until(secs(20), || {
        let mut conns = Vec::with_capacity(N);
        for i in 0..N {
            let mut c = server.connect();
            c.set_read_timeout(Some(secs(5))).expect("timeout");
            if let Err(e) = roundtrip(&mut c, b"slot?") {
                last_err = format!("new connection {i} of {N}: {e}");
                return false;
            }
            conns.push(c);
        }
        true
    });
    assert!(all_admitted, "slots leaked after an RST storm: {last_err}");

    let mut now = 0;
    let back = wait_until(secs(20), || {
        now = server.open_fds();
        now <= baseline_fds
    });
    assert!(
        back,
        "server holds {now} descriptors after the storm, {baseline_fds} before"
    );
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        "0 with no client connected",
        |v| v == 0.0,
    );
    server.expect_metric(
        "ringhold_buffers_in_use",
        &[],
        "0 with no client connected",
        |v| v == 0.0,
    );
}

/// `--idle-timeout T` (1 s, scaled by RINGHOLD_TEST_TIMEOUT_SCALE so that a loaded machine cannot
/// stall the active client for a whole timeout): a connection that sends nothing is closed (EOF),
/// not before T; one that keeps talking (a message every 100 ms) is not closed in 2.5 T.
fn idle_timeout_closes_only_idle(engine: Engine) {
    let timeout = secs(1);
    let server = Server::start(engine, &["--idle-timeout", &flag_ms(timeout)]);
    let mut idle = server.connect();
    roundtrip(&mut idle, b"hello, then silence").expect("first echo");
    let mut active = server.connect();
    let started = Instant::now();
    // Keep `active` busy (a message every 100 ms) until `idle` is closed.
    idle.set_nonblocking(true).expect("nonblocking");
    let mut idle_end = None;
    let mut i = 0u64;
    let give_up = timeout + secs(15);
    while idle_end.is_none() && started.elapsed() < give_up {
        roundtrip(&mut active, &Pattern::bytes(i, 8))
            .unwrap_or_else(|e| panic!("active connection, message {i}: {e}"));
        i += 1;
        match read_end(&mut idle) {
            End::Timeout => thread::sleep(Duration::from_millis(100)),
            other => idle_end = Some(other),
        }
    }
    let idle_after = started.elapsed();
    match idle_end {
        Some(End::Eof) | Some(End::Reset) => {}
        other => panic!(
            "idle connection not closed within {give_up:?} of --idle-timeout {timeout:?}: {other:?}"
        ),
    }
    // The timer wheel has a tick of 1/32 of the timeout: a close may come up to a tick early.
    assert!(
        idle_after >= timeout - timeout / 10,
        "idle connection closed after only {idle_after:?} (--idle-timeout {timeout:?})"
    );
    // The active one lives on for more than twice the timeout.
    let until = Instant::now() + timeout * 5 / 2;
    while Instant::now() < until {
        roundtrip(&mut active, &Pattern::bytes(i, 8)).unwrap_or_else(|e| {
            panic!("active connection closed by the idle timeout (message {i}): {e}")
        });
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
}

/// A client that fills every buffer on the way (it writes until its socket blocks and never reads) and
/// then goes quiet is closed by `--send-timeout` (the stall clock: the server had bytes for it that it
/// never read; a connection the server stopped reading is not idle): a close must not wait for a send
/// that the peer will never let complete. The server's side of the socket goes away and its slot is
/// given back.
fn send_timeout_closes_a_stuck_reader(engine: Engine) {
    let server = Server::start(engine, &["--idle-timeout", "1s", "--send-timeout", "1s"]);
    let stuck = connect_with_rcvbuf(server.addr, 4096);
    stuck.set_nonblocking(true).expect("nonblocking");
    let junk = Pattern::bytes(3, 64 * 1024);
    let local = stuck.local_addr().expect("local");
    // Write until the server stops reading (its receive queue holds our bytes) and our socket blocks.
    // On a loaded machine filling can take longer than the timeout itself: a reset here means the
    // server already closed it, which is what this test wants to see.
    let mut reset_while_filling = false;
    let filled = wait_until(secs(20), || {
        loop {
            match (&stuck).write(&junk) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    reset_while_filling = true;
                    return true;
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        tcp_queues(server.addr, local).is_some_and(|(_, rx)| rx > 0)
    });
    assert!(
        filled,
        "the stuck client's data never backed up in the server"
    );
    // The server closes it with our bytes still unread in its receive queue, so the kernel resets
    // the connection and drops the server's socket at once: the exact lookup must succeed and find
    // nothing (a socket in FIN_WAIT or CLOSE_WAIT would mean a close that waits on this peer).
    let mut found = lookup(server.addr, local).map_err(|e| e.to_string());
    let closed = wait_until(secs(15), || {
        found = lookup(server.addr, local).map_err(|e| e.to_string());
        !matches!(&found, Ok(Some(d)) if d.state == TCP_ESTABLISHED)
    });
    assert!(
        closed,
        "the server's socket for a stuck reader is still ESTABLISHED {:?} after --send-timeout 1s",
        secs(15)
    );
    assert_eq!(
        found,
        Ok(None),
        "the server's socket for a stuck reader after the idle close (sock_diag lookup)"
    );
    // Our side got the reset: whatever echo is still queued here, then ECONNRESET (unless a write
    // above already reported it).
    if !reset_while_filling {
        stuck.set_nonblocking(false).expect("blocking");
        let mut stuck = stuck;
        let mut end = read_end(&mut stuck);
        for _ in 0..10_000 {
            if !matches!(end, End::Data(_)) {
                break;
            }
            end = read_end(&mut stuck);
        }
        assert_eq!(
            end,
            End::Reset,
            "the stuck reader's end after the server closed it"
        );
    }
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        "0 after the send-timeout close",
        |v| v == 0.0,
    );
    server.expect_metric(
        "ringhold_closes_total",
        &[("reason", "send_timeout")],
        "1: the stuck reader",
        |v| v == 1.0,
    );
    roundtrip(&mut server.connect(), b"next").expect("echo after the send-timeout close");
}

/// `--max-connections 50`: the 51st connection is closed at once; the first 50 keep echoing, and once
/// one of them leaves, a new one gets in.
fn max_connections_refuses_the_excess(engine: Engine) {
    let server = Server::start(engine, &["--max-connections", "50"]);
    let mut held: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut c = server.connect();
            roundtrip(&mut c, format!("conn {i}").as_bytes())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c
        })
        .collect();
    let mut extra = server.connect();
    let _ = extra.write_all(b"let me in");
    match read_end(&mut extra) {
        End::Eof | End::Reset => {}
        other => {
            panic!("connection 51 with --max-connections 50: expected to be closed, got {other:?}")
        }
    }
    server.expect_metric(
        "ringhold_rejected_total",
        &[("reason", "max_connections")],
        ">= 1",
        |v| v >= 1.0,
    );
    for (i, c) in held.iter_mut().enumerate() {
        roundtrip(c, b"still in")
            .unwrap_or_else(|e| panic!("held connection {i} after the refusal: {e}"));
    }
    // Free one place: a new connection is admitted (once the server has seen the close).
    let mut gone = held.pop().expect("one");
    gone.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_end(&mut gone), End::Eof);
    drop(gone);
    let admitted = wait_until(secs(10), || {
        let mut c = server.connect();
        roundtrip(&mut c, b"my turn").is_ok()
    });
    assert!(admitted, "no connection admitted after one of 50 left");
}

/// SIGTERM while clients have echo in flight: each gets every byte the server read, then a clean EOF,
/// and the process exits 0 as soon as the drain is done, long before `--shutdown-timeout` (which is
/// far longer than any wait of this test, so a server that sits out the timeout fails it). New
/// connections are not served any more.
fn sigterm_drains_in_flight_echo(engine: Engine) {
    const CLIENTS: usize = 20;
    const LEN: usize = 256 * 1024;
    // The test waits at most `exit_within` for the exit after the echo was read; the server's own
    // timeout is four times that.
    let exit_within = secs(15);
    let shutdown_timeout = exit_within * 4;
    let mut server = Server::start(engine, &["--shutdown-timeout", &flag_ms(shutdown_timeout)]);
    // Small receive buffers so the echo backs up into the server; the clients do not read yet.
    let mut conns: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| connect_with_rcvbuf(server.addr, 4096))
        .collect();
    // And idle connections with nothing in flight, which the drain closes at once.
    let mut idle: Vec<TcpStream> = (0..50).map(|_| server.connect()).collect();
    for (i, c) in idle.iter_mut().enumerate() {
        roundtrip(c, b"idle").unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
    }
    for (i, c) in conns.iter_mut().enumerate() {
        write_pattern(c, i as u64, LEN, LEN).unwrap_or_else(|e| panic!("client {i} write: {e}"));
    }
    // Wait until the server has read everything (its receive queues are empty), so that what is in
    // flight is exactly the echo of all of it.
    let mut queues = Vec::new();
    let all_read = wait_until(secs(20), || {
        queues = conns
            .iter()
            .map(|c| tcp_queues(server.addr, c.local_addr().expect("local addr")))
            .collect::<Vec<_>>();
        queues.iter().all(|q| matches!(q, Some((_, 0))))
    });
    assert!(
        all_read,
        "the server did not read what the clients sent: (tx, rx) queues {queues:?}"
    );

    let in_server_kernel: u64 = queues.iter().flatten().map(|q| q.0).sum();
    eprintln!(
        "{}: SIGTERM with {} KiB echoed but unread ({} KiB of it still in the server's send queues)",
        engine.name(),
        CLIENTS * LEN / 1024,
        in_server_kernel / 1024
    );
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let readers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::spawn(move || {
                read_pattern(&mut c, i as u64, LEN).map_err(|e| format!("client {i}: {e}"))?;
                match read_end(&mut c) {
                    End::Eof => Ok(()),
                    other => Err(format!(
                        "client {i}: after the drained echo expected EOF, got {other:?}"
                    )),
                }
            })
        })
        .collect();
    for (i, c) in idle.iter_mut().enumerate() {
        let end = read_end(c);
        assert_eq!(end, End::Eof, "idle connection {i} on SIGTERM");
    }
    let errors: Vec<String> = readers
        .into_iter()
        .filter_map(|h| h.join().expect("reader").err())
        .collect();
    assert!(
        errors.is_empty(),
        "drain on SIGTERM lost data:\n{}",
        errors.join("\n")
    );
    let status = server.wait_exit(exit_within);
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {took:?} after SIGTERM though every client had read its echo \
             (--shutdown-timeout {shutdown_timeout:?}): the drain waits for the timeout"
        )
    });
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took < shutdown_timeout,
        "the drain took {took:?}, the whole --shutdown-timeout {shutdown_timeout:?}"
    );
    // Nothing listens any more.
    let refused = TcpStream::connect_timeout(&server.addr, secs(2)).map(|mut c| {
        c.set_read_timeout(Some(secs(2))).ok();
        read_end(&mut c)
    });
    assert!(
        matches!(refused, Err(_) | Ok(End::Eof) | Ok(End::Reset)),
        "a connection after shutdown was not refused: {refused:?}"
    );
}

/// A client that never reads cannot hold the shutdown hostage: after `--shutdown-timeout` the server
/// closes it and exits 0.
fn sigterm_with_a_stuck_client_exits_after_the_timeout(engine: Engine) {
    let mut server = Server::start(engine, &["--shutdown-timeout", "1s"]);
    let stuck = connect_with_rcvbuf(server.addr, 4096);
    stuck.set_write_timeout(None).expect("no write timeout");
    let mut w = stuck.try_clone().expect("clone");
    let writer = thread::spawn(move || write_pattern(&mut w, 5, 64 << 20, 64 * 1024));
    // Let its echo back up: the server's receive queue for it stops draining.
    let local = stuck.local_addr().expect("local");
    assert!(
        wait_until(secs(20), || tcp_queues(server.addr, local)
            .is_some_and(|(_, rx)| rx > 0)),
        "the stuck client's data never backed up in the server"
    );
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(secs(15));
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!("still running {took:?} after SIGTERM with --shutdown-timeout 1s")
    });
    assert!(
        status.success(),
        "exit status after a timed-out drain: {status}"
    );
    let _ = stuck.shutdown(Shutdown::Both);
    let _ = writer.join();
    // The listener is gone too.
    assert!(
        TcpStream::connect_timeout(&server.addr, secs(2))
            .map(|mut c| !matches!(read_end(&mut c), End::Data(_) | End::Timeout))
            .unwrap_or(true),
        "something still answers on {} after exit",
        server.addr
    );
}

/// SIGINT drains like SIGTERM; a second signal during a drain exits at once (status 130) instead of
/// waiting for `--shutdown-timeout`.
fn sigint_drains_and_a_second_signal_exits_now(engine: Engine) {
    let mut server = Server::start(engine, &["--shutdown-timeout", "2s"]);
    let mut c = server.connect();
    roundtrip(&mut c, b"hi").expect("echo");
    server.signal(libc::SIGINT);
    assert_eq!(read_end(&mut c), End::Eof, "idle connection on SIGINT");
    let status = server.wait_exit(secs(10)).expect("exit after SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");

    // A stuck client keeps the drain busy; the second SIGTERM ends it.
    let mut server = Server::start(engine, &["--shutdown-timeout", "60s"]);
    let stuck = connect_with_rcvbuf(server.addr, 4096);
    stuck.set_nonblocking(true).expect("nonblocking");
    let local = stuck.local_addr().expect("local");
    let junk = Pattern::bytes(9, 64 * 1024);
    let backed_up = wait_until(secs(20), || {
        while (&stuck).write(&junk).is_ok() {}
        tcp_queues(server.addr, local).is_some_and(|(_, rx)| rx > 0)
    });
    assert!(
        backed_up,
        "the stuck client's data never backed up in the server"
    );
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_for_log("draining", secs(10)),
        "no drain announced after SIGTERM"
    );
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(secs(10))
        .expect("still running after a second SIGTERM (--shutdown-timeout 60s)");
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after a second signal: {status}"
    );
}

both_engines!(
    half_close_gets_all_echoed_then_eof,
    rst_storm_leaks_nothing,
    idle_timeout_closes_only_idle,
    send_timeout_closes_a_stuck_reader,
    max_connections_refuses_the_excess,
    sigterm_drains_in_flight_echo,
    sigterm_with_a_stuck_client_exits_after_the_timeout,
    sigint_drains_and_a_second_signal_exits_now,
);
