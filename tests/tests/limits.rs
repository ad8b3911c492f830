//! Admission control and rate limits, EMQX style: `--rate-limit` and `--message-rate` pause reading a
//! connection (backpressure, nothing dropped), `--max-conn-rate` leaves connections in the backlog
//! instead of refusing them, every limit shows in the metrics, and bad values are refused with an error
//! that names the flag.
//!
//! Assertions about time are lower bounds (a limited server cannot be faster than its limit) or wide
//! bands over transfers of several seconds; round trips of a neighbour are counted, not timed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringhold_tests::net::{echo_stream, roundtrip, set_linger_zero};
use ringhold_tests::{both_engines, secs, Engine, Pattern, Server};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

const PAUSES: &str = "ringhold_rate_limit_pauses_total";
const THROTTLED: &str = "ringhold_throttled_connections";
const DEFERRED: &str = "ringhold_accepts_deferred_total";

/// What the heavy client pushes through `--rate-limit 1MiB/s,256KiB`: long enough that the free burst
/// (256 KiB) and the last read echoed before its debt is paid hardly change the long-run rate.
const HEAVY: usize = 5 * MIB;
const HEAVY_BURST: usize = 256 * KIB;
/// Ping-pong round trips of the neighbour, 64 B each: 12.5 KiB in all, far inside its own burst.
const NEIGHBOUR_ROUND_TRIPS: u64 = 200;

/// Sends `len` bytes (zeros) from one thread and counts the echo in another: the cheapest client
/// there is, for a transfer whose speed is compared, not checked byte by byte.
fn blast(s: TcpStream, len: usize) -> Result<(), String> {
    let mut w = s.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let buf = vec![0u8; 64 * KIB];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            w.write_all(&buf[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut r = s;
    let mut buf = vec![0u8; 64 * KIB];
    let mut got = 0;
    while got < len {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = r.shutdown(std::net::Shutdown::Both);
                let _ = writer.join();
                return Err(format!("read after {got} of {len} bytes: {e}"));
            }
        }
    }
    let wres = writer.join().map_err(|_| "writer panicked".to_string())?;
    wres.map_err(|e| format!("write: {e}"))?;
    if got != len {
        return Err(format!("EOF after {got} of {len} bytes"));
    }
    Ok(())
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// A client pushing as fast as it can is held to about 1 MiB/s and gets every byte back in order.
/// Meanwhile a neighbour on the same server (the limit is per connection; it stays within its own
/// budget) completes all its round trips, and the same number of bytes goes through a server without
/// the flag, much faster.
fn rate_limit_paces_without_loss(engine: Engine) {
    let limited = Server::builder(engine)
        .shards(1)
        .args(["--rate-limit", "1MiB/s,256KiB"])
        .start();
    let free = Server::builder(engine).shards(1).start();

    let heavy_conn = limited.connect();
    let heavy_done = Arc::new(AtomicBool::new(false));
    let done = heavy_done.clone();
    let t0 = Instant::now();
    let heavy = thread::spawn(move || {
        let res = echo_stream(heavy_conn, 11, HEAVY, 64 * KIB, false).map(drop);
        let took = t0.elapsed();
        done.store(true, Ordering::SeqCst);
        (res, took)
    });

    // Once the heavy connection is being paused, the neighbour does its round trips.
    limited.expect_metric(PAUSES, &[], "> 0 while the heavy client sends", |v| v > 0.0);
    limited.expect_metric(THROTTLED, &[], "1 while the heavy client sends", |v| {
        v == 1.0
    });
    let mut neighbour = limited.connect();
    for i in 0..NEIGHBOUR_ROUND_TRIPS {
        roundtrip(&mut neighbour, &Pattern::bytes(1000 + i, 64))
            .unwrap_or_else(|e| panic!("neighbour round trip {i}: {e}"));
    }
    let neighbour_first = !heavy_done.load(Ordering::SeqCst);
    // Meanwhile, the same number of bytes through the server without the flag.
    let t1 = Instant::now();
    blast(free.connect(), HEAVY).unwrap_or_else(|e| panic!("through the unlimited server: {e}"));
    let free_took = t1.elapsed();
    let free_first = !heavy_done.load(Ordering::SeqCst);

    let (res, took) = heavy.join().expect("heavy client thread");
    res.unwrap_or_else(|e| panic!("heavy client through --rate-limit: {e}"));
    assert!(
        neighbour_first,
        "the neighbour's {NEIGHBOUR_ROUND_TRIPS} round trips were not done before the heavy transfer \
         ({took:?}) ended"
    );
    assert!(
        free_first,
        "the transfer through the unlimited server ({free_took:?}) was not done before the heavy one \
         ({took:?}) ended"
    );
    let rate = mib_per_s(HEAVY, took);
    let paced = mib_per_s(HEAVY - HEAVY_BURST, took);
    eprintln!(
        "{}: {} MiB through --rate-limit 1MiB/s,256KiB in {:.2} s = {rate:.3} MiB/s ({paced:.3} MiB/s \
         after the burst); without the flag {:.3} s = {:.1} MiB/s ({:.0}x)",
        engine.name(),
        HEAVY / MIB,
        took.as_secs_f64(),
        free_took.as_secs_f64(),
        mib_per_s(HEAVY, free_took),
        took.as_secs_f64() / free_took.as_secs_f64()
    );
    assert!(
        (0.5..=2.0).contains(&rate),
        "long-run rate {rate:.3} MiB/s through --rate-limit 1MiB/s,256KiB is outside 0.5..=2 MiB/s"
    );
    assert!(
        free_took * 2 < took,
        "the unlimited server ({free_took:?}) was not clearly faster than the limited one ({took:?})"
    );

    // --check-every 1 (the default) checks every read, and a read is at most one 2 KiB buffer: the
    // heavy connection is paused over and over, a little at a time, not in a few long stops.
    let min_pauses = ((HEAVY - 2 * HEAVY_BURST) / (2 * KIB) / 2) as f64;
    limited.expect_metric(PAUSES, &[], "one pause every read or two", |v| {
        v >= min_pauses
    });
    // Once the heavy connection is gone, nobody is throttled; the unlimited server never paused.
    limited.expect_metric(THROTTLED, &[], "0 once the heavy client left", |v| v == 0.0);
    free.expect_metric(PAUSES, &[], "0 without --rate-limit", |v| v == 0.0);
}

/// `--message-rate 10,1s`: ten reads at once (the burst), then one every 100 ms; a ping-pong client
/// (one message per read) gets all its echoes, no faster than that.
fn message_rate_pauses(engine: Engine) {
    let server = Server::builder(engine)
        .args(["--message-rate", "10,1s"])
        .start();
    let mut c = server.connect();
    const N: u64 = 25;
    let t0 = Instant::now();
    for i in 0..N {
        roundtrip(&mut c, &Pattern::bytes(i, 32)).unwrap_or_else(|e| panic!("round trip {i}: {e}"));
    }
    let took = t0.elapsed();
    // Reads 1..=10 are free, read 11 goes into debt (its echo is not held back), and each of reads
    // 12..=25 waits for its token: at least 14 × 100 ms.
    let floor = Duration::from_millis((N - 11) * 100);
    eprintln!(
        "{}: {N} round trips at --message-rate 10,1s took {took:?} (floor {floor:?})",
        engine.name()
    );
    assert!(
        took >= floor - Duration::from_millis(50),
        "{N} round trips took {took:?}: --message-rate 10,1s should hold them to at least {floor:?}"
    );
    server.expect_metric(PAUSES, &[], "> 0", |v| v >= 1.0);
}

/// A connection paused for a long time shows in the gauge (5 s: several flushes and scrapes, even on a
/// loaded machine); its next message waits for the pause, then
/// comes back intact; a peer that resets it while paused takes it off the gauge.
fn throttled_gauge_follows_pauses(engine: Engine) {
    let server = Server::builder(engine)
        .shards(1)
        .args(["--message-rate", "1,5s"])
        .start();
    let mut c = server.connect();
    // The first read takes the only token, the second goes 1 into debt: a 5 s pause.
    roundtrip(&mut c, b"one").expect("first round trip");
    let t0 = Instant::now();
    roundtrip(&mut c, b"two").expect("second round trip");
    server.expect_metric(THROTTLED, &[], "1 during the pause", |v| v == 1.0);
    roundtrip(&mut c, b"three").expect("third round trip, after the pause");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "the third message came back {waited:?} after the second: the 5 s pause was not kept"
    );
    // The third read went into debt again: paused once more. Reset the connection meanwhile.
    server.expect_metric(PAUSES, &[], "2", |v| v == 2.0);
    set_linger_zero(&c);
    drop(c);
    server.expect_metric(THROTTLED, &[], "0 after the peer reset", |v| v == 0.0);
    // The server still serves.
    roundtrip(&mut server.connect(), b"after").expect("round trip on a new connection");
}

/// A connection paused by a rate limit is not idle (the server is the one not reading): a pause longer
/// than `--idle-timeout` does not close it, and its next message comes back after the pause.
fn paused_is_not_idle(engine: Engine) {
    let server = Server::builder(engine)
        .shards(1)
        .args(["--message-rate", "1,4s", "--idle-timeout", "1s"])
        .start();
    let mut c = server.connect();
    roundtrip(&mut c, b"one").expect("first round trip");
    let t0 = Instant::now();
    roundtrip(&mut c, b"two").expect("second round trip");
    // A 4 s pause now, four idle timeouts long.
    roundtrip(&mut c, b"three").unwrap_or_else(|e| {
        panic!("third round trip, sent during a 4 s pause with --idle-timeout 1s: {e}")
    });
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(3900),
        "the third message came back {waited:?} after the second: the 4 s pause was not kept"
    );
    server.expect_metric(
        "ringhold_closes_total",
        &[("reason", "idle_timeout")],
        "0: a paused connection is not idle",
        |v| v == 0.0,
    );
}

/// `--check-every 5`: the buckets are looked at every fifth read only, so a connection over its
/// budget is paused at its fifth read, not its second.
fn check_every_batches_checks(engine: Engine) {
    let server = Server::builder(engine)
        .shards(1)
        .args(["--message-rate", "1,10s", "--check-every", "5"])
        .start();
    let mut c = server.connect();
    for i in 0..4u8 {
        roundtrip(&mut c, &[b'a' + i; 8]).unwrap_or_else(|e| panic!("round trip {i}: {e}"));
    }
    // Four reads, three of them over the budget, and no pause yet.
    server.expect_metric("ringhold_bytes_received_total", &[], "32", |v| v == 32.0);
    server.expect_metric(PAUSES, &[], "0 before the fifth read", |v| v == 0.0);
    // The fifth read is checked: 4 tokens of debt, a pause of 40 s (its own echo is not held back).
    roundtrip(&mut c, b"fifth").expect("fifth round trip");
    server.expect_metric(PAUSES, &[], "1 after the fifth read", |v| v == 1.0);
    server.expect_metric(THROTTLED, &[], "1 after the fifth read", |v| v == 1.0);
}

/// `--max-conn-rate 20` with one shard: 60 connects at once are all accepted and echoed, spread over
/// about two seconds (the burst of 20 at once, then 20 per second); none is refused.
fn max_conn_rate_spreads_accepts(engine: Engine) {
    let server = Server::builder(engine)
        .shards(1)
        .args(["--max-conn-rate", "20"])
        .start();
    const N: usize = 60;
    const RATE: usize = 20;
    // connect() returns once the kernel has the connection in the backlog, accepted or not.
    let t0 = Instant::now();
    let mut conns: Vec<_> = (0..N).map(|_| server.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&[i as u8])
            .unwrap_or_else(|e| panic!("write on connection {i}: {e}"));
    }
    // The backlog is first in, first out: read the echoes in connect order.
    let mut at = Vec::with_capacity(N);
    for (i, c) in conns.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("echo on connection {i} (of {N}): {e}"));
        assert_eq!(b[0], i as u8, "echo on connection {i}");
        at.push(Instant::now());
    }
    // 60 accepts need 60 tokens: the bucket holds 20 (nothing connected before t0), the other 40 come
    // at 20 per second. The last echo cannot come sooner (a few ms of clock rounding aside).
    let spread = at[N - 1] - t0;
    let floor = Duration::from_millis(((N - RATE) * 1000 / RATE) as u64);
    let in_first_half_second = at
        .iter()
        .filter(|t| **t - t0 < Duration::from_millis(500))
        .count();
    eprintln!(
        "{}: {N} connects at --max-conn-rate {RATE}: last echo after {spread:?} (floor {floor:?}), \
         {in_first_half_second} in the first 0.5 s",
        engine.name()
    );
    assert!(
        spread >= floor - Duration::from_millis(20),
        "{N} connects were all accepted within {spread:?}; --max-conn-rate {RATE} should spread them \
         over at least {floor:?}"
    );
    server.expect_metric(DEFERRED, &[], "> 0", |v| v > 0.0);
    server.expect_metric(
        "ringhold_rejected_total",
        &[],
        "0: deferred, not refused",
        |v| v == 0.0,
    );
    server.expect_metric("ringhold_connections_active", &[], "60", |v| v == N as f64);
}

/// Bad values are refused before anything starts, with an error that names the flag.
fn invalid_values_name_the_flag(engine: Engine) {
    let cases: &[(&str, &str)] = &[
        ("--rate-limit", "0,5"),
        ("--rate-limit", "-1,5"),
        ("--rate-limit", "5,-1"),
        ("--rate-limit", "1MiB/s,0"),
        ("--rate-limit", "garbage"),
        ("--rate-limit", "10,0s"),
        ("--rate-limit", "1MiB/s,256KiB,7"),
        ("--message-rate", "10,0s"),
        ("--message-rate", "0,1s"),
        ("--message-rate", "-10,1s"),
        ("--message-rate", "10,-1s"),
        ("--message-rate", "10"),
        ("--message-rate", "ten,1s"),
        ("--max-conn-rate", "-3"),
        ("--max-conn-rate", "0"),
        ("--max-conn-rate", "fast"),
        ("--check-every", "0"),
        ("--check-every", "-1"),
        ("--check-every", "many"),
    ];
    for (flag, value) in cases {
        let mut cmd = std::process::Command::new(ringhold_tests::server::binary());
        cmd.args(["serve", "--engine", engine.name()])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args([flag, value]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGHOLD_") {
                cmd.env_remove(k);
            }
        }
        let (status, _, stderr) = ringhold_tests::tools::run_with_input(cmd, Vec::new(), secs(10));
        assert!(
            !status.success(),
            "{flag} {value}: accepted (status {status}); stderr:\n{stderr}"
        );
        assert_eq!(
            status.code(),
            Some(2),
            "{flag} {value}: a usage error exits 2; stderr:\n{stderr}"
        );
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(flag) && first.contains(value),
            "{flag} {value}: the error's first line does not name the flag and the value: {first:?}"
        );
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
    }
    // The same through the environment.
    let mut cmd = std::process::Command::new(ringhold_tests::server::binary());
    cmd.args(["serve", "--engine", engine.name()])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env("RINGHOLD_RATE_LIMIT", "-1,5");
    let (status, _, stderr) = ringhold_tests::tools::run_with_input(cmd, Vec::new(), secs(10));
    assert_eq!(status.code(), Some(2), "RINGHOLD_RATE_LIMIT=-1,5: {stderr}");
    assert!(
        stderr.contains("--rate-limit"),
        "RINGHOLD_RATE_LIMIT=-1,5: {stderr}"
    );
}

both_engines!(
    rate_limit_paces_without_loss,
    message_rate_pauses,
    throttled_gauge_follows_pauses,
    paused_is_not_idle,
    check_every_batches_checks,
    max_conn_rate_spreads_accepts,
    invalid_values_name_the_flag,
);
