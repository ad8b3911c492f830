//! Admission control and rate limits, EMQX style: `--rate-limit` and `--message-rate` pause reading a
//! connection (backpressure, nothing dropped), `--max-conn-rate` leaves connections in the backlog
//! instead of refusing them, every limit shows in the metrics, and bad values are refused with an error
//! that names the flag.
//!
//! Assertions about time are lower bounds only (a limited server cannot be faster than its limit, however
//! loaded the machine is); how fast an unlimited server is belongs to bench/. Round trips of a
//! neighbour are counted, not timed; a pause the test must observe is scaled by
//! RINGHOLD_TEST_TIMEOUT_SCALE.

use std::io::{Read, Write};
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

/// A client pushing as fast as it can is held to about 1 MiB/s (it cannot get its 5 MiB through in
/// less time than the limit allows) and gets every byte back in order. Meanwhile a neighbour on the same
/// server (the limit is per connection; it stays within its own budget) completes all its round trips
/// before the heavy transfer ends, and the same bytes go through a server without the flag, byte-exact
/// and never paused.
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
    // Meanwhile, the same bytes through the server without the flag.
    echo_stream(free.connect(), 11, HEAVY, 64 * KIB, false)
        .unwrap_or_else(|e| panic!("through the unlimited server: {e}"));

    let (res, took) = heavy.join().expect("heavy client thread");
    res.unwrap_or_else(|e| panic!("heavy client through --rate-limit: {e}"));
    assert!(
        neighbour_first,
        "the neighbour's {NEIGHBOUR_ROUND_TRIPS} round trips were not done before the heavy transfer \
         ({took:?}) ended"
    );
    // The server read (and so could echo) at most the burst, the rate times the time, and the one read
    // that went into debt last (a read is one 2 KiB buffer; 64 KiB allowed for).
    let floor = Duration::from_secs_f64((HEAVY - HEAVY_BURST - 64 * KIB) as f64 / MIB as f64);
    eprintln!(
        "{}: {} MiB through --rate-limit 1MiB/s,256KiB in {took:?} (floor {floor:?})",
        engine.name(),
        HEAVY / MIB,
    );
    assert!(
        took >= floor,
        "{} MiB came back through --rate-limit 1MiB/s,256KiB in {took:?}, faster than the limit allows \
         ({floor:?})",
        HEAVY / MIB
    );

    // --check-every 1 (the default) checks every read, and a read is at most one 2 KiB buffer: the
    // heavy connection is paused over and over, a little at a time, not in a few long stops (a stop
    // until the bucket is full again would be one per 256 KiB). A pause pays back the debt of one read;
    // a shard that resumes late finds the tokens of its lateness too, so on a loaded machine a pause
    // covers more bytes: up to 2 × 2 KiB + 1 MiB/s × 50 ms (× the timeout scale) are allowed for.
    let per_pause = (4 * KIB) as f64 + MIB as f64 * 0.05 * ringhold_tests::scale();
    let min_pauses = ((HEAVY - 2 * HEAVY_BURST) as f64 / per_pause).floor();
    limited.expect_metric(
        PAUSES,
        &[],
        &format!(">= {min_pauses}: many short pauses"),
        |v| v >= min_pauses,
    );
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

/// A connection paused for a long time shows in the gauge (5 s, scaled: several flushes and scrapes,
/// even on a loaded machine); its next message waits for the pause, then comes back intact; a peer
/// that resets it while paused takes it off the gauge.
fn throttled_gauge_follows_pauses(engine: Engine) {
    let pause = Duration::from_secs(secs(5).as_secs().max(5));
    let server = Server::builder(engine)
        .shards(1)
        .args(["--message-rate", &format!("1,{}s", pause.as_secs())])
        .start();
    let mut c = server.connect();
    // The first read takes the only token, the second goes 1 into debt: a pause of the whole period.
    roundtrip(&mut c, b"one").expect("first round trip");
    let t0 = Instant::now();
    roundtrip(&mut c, b"two").expect("second round trip");
    server.expect_metric(THROTTLED, &[], "1 during the pause", |v| v == 1.0);
    roundtrip(&mut c, b"three").expect("third round trip, after the pause");
    let waited = t0.elapsed();
    assert!(
        waited >= pause - Duration::from_millis(100),
        "the third message came back {waited:?} after the second: the {pause:?} pause was not kept"
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
    // at 20 per second. So connection k (1-based) cannot be accepted, and echo, sooner than (k - 20) /
    // 20 s after t0 (a few ms of clock rounding aside): at most 20 at once (the burst), then 20 a second.
    // These are lower bounds on time; a loaded machine only makes the echoes later.
    let floor = |k: usize| Duration::from_millis((k.saturating_sub(RATE) * 1000 / RATE) as u64);
    let slack = Duration::from_millis(20);
    let early: Vec<String> = at
        .iter()
        .enumerate()
        .filter(|(i, t)| **t - t0 + slack < floor(i + 1))
        .map(|(i, t)| {
            format!(
                "connection {} echoed after {:?} < {:?}",
                i + 1,
                *t - t0,
                floor(i + 1)
            )
        })
        .collect();
    let spread = at[N - 1] - t0;
    let in_first_half_second = at
        .iter()
        .filter(|t| **t - t0 < Duration::from_millis(500))
        .count();
    eprintln!(
        "{}: {N} connects at --max-conn-rate {RATE}: last echo after {spread:?} (floor {:?}), \
         {in_first_half_second} in the first 0.5 s",
        engine.name(),
        floor(N)
    );
    assert!(
        early.is_empty(),
        "--max-conn-rate {RATE} let connections in faster than a burst of {RATE} and {RATE}/s:\n{}",
        early.join("\n")
    );
    // The burst: in the first half second, at most the bucket (20) and half a second of refill (10).
    assert!(
        in_first_half_second <= RATE + RATE / 2,
        "{in_first_half_second} connections echoed in the first 0.5 s: more than a burst of {RATE} \
         and {} tokens of refill",
        RATE / 2
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
