//! Echo correctness: every byte comes back, in order, whatever the sizes, the concurrency, the content
//! and the way the client writes.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Barrier};
use std::thread;

use rand::{Rng, SeedableRng};
use ringhold_tests::net::{echo_stream, read_end, read_pattern, roundtrip, End};
use ringhold_tests::{both_engines, serial, Engine, Pattern, Server};

fn rng(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("RINGHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{test}: RINGHOLD_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A size from 1 B to `max`, spread evenly over the powers of two (so most are small, some are MiBs).
fn log_uniform(r: &mut impl Rng, max: usize) -> usize {
    let bits = (usize::BITS - max.leading_zeros()) as f64;
    let x = r.random_range(0.0..bits);
    (2f64.powf(x) as usize).clamp(1, max)
}

/// Runs the echo of `sizes[i]` bytes on connection i, all at once, each with its own writer and
/// reader thread; odd connections half-close after writing and must then see a clean EOF.
fn echo_concurrently(server: &Server, sizes: &[usize], seed0: u64) -> usize {
    let conns: Vec<_> = sizes.iter().map(|_| server.connect()).collect();
    let start = Arc::new(Barrier::new(conns.len()));
    let handles: Vec<_> = conns
        .into_iter()
        .zip(sizes.iter().copied())
        .enumerate()
        .map(|(i, (c, len))| {
            let start = start.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    let seed = seed0 + i as u64;
                    let chunk = 1 + (seed as usize).wrapping_mul(7919) % (256 * 1024);
                    let half_close = i % 2 == 1;
                    let mut c = echo_stream(c, seed, len, chunk, half_close)
                        .map_err(|e| format!("connection {i} ({len} B): {e}"))?;
                    if half_close {
                        match read_end(&mut c) {
                            End::Eof => {}
                            other => return Err(format!("connection {i}: after the echo of a half-closed stream expected EOF, got {other:?}")),
                        }
                    }
                    Ok::<_, String>(len)
                })
                .expect("spawn")
        })
        .collect();
    let mut errors = Vec::new();
    let mut total = 0;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("client thread panicked".into()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} connections failed:\n{}",
        errors.len(),
        sizes.len(),
        errors.join("\n")
    );
    eprintln!("echoed {total} bytes over {} connections", sizes.len());
    total
}

/// The server counted exactly the bytes the clients sent, and echoed them all.
fn expect_byte_counters(server: &Server, total: usize) {
    let t = total as f64;
    server.expect_metric(
        "ringhold_bytes_received_total",
        &[],
        &format!("{total} (all sent)"),
        |v| v == t,
    );
    server.expect_metric(
        "ringhold_bytes_sent_total",
        &[],
        &format!("{total} (all echoed)"),
        |v| v == t,
    );
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        "0 after the clients left",
        |v| v == 0.0,
    );
}

/// 200 concurrent connections, random payloads from 1 B to 4 MiB (one of each edge size included).
fn random_payloads_200_connections(engine: Engine) {
    let _g = serial();
    let server = Server::start(engine, &[]);
    let mut r = rng("random_payloads_200_connections");
    let mut sizes: Vec<usize> = vec![1, 2, 63, 64, 2047, 2048, 2049, 4096, 16 * 1024 + 1, 4 << 20];
    while sizes.len() < 200 {
        sizes.push(log_uniform(&mut r, 4 << 20));
    }
    let total = echo_concurrently(&server, &sizes, r.random());
    expect_byte_counters(&server, total);
}

/// The same through the smallest buffers and a pool too small for the connections, so that receives
/// wait for buffers (ENOBUFS / empty pool) and sends are split at every buffer boundary.
fn tiny_buffers_and_exhausted_pool(engine: Engine) {
    let _g = serial();
    let server = Server::start(
        engine,
        &[
            "--buffer-size",
            "64",
            "--buffers",
            "8",
            "--pending-buffers",
            "2",
        ],
    );
    let mut r = rng("tiny_buffers_and_exhausted_pool");
    let mut sizes = vec![1, 63, 64, 65, 128, 129, 256 * 1024];
    while sizes.len() < 40 {
        sizes.push(log_uniform(&mut r, 256 * 1024));
    }
    let total = echo_concurrently(&server, &sizes, r.random());
    expect_byte_counters(&server, total);
    server.expect_metric(
        "ringhold_buffers_in_use",
        &[],
        "0 after the clients left",
        |v| v == 0.0,
    );
}

/// Pipelining: 20 000 messages written back to back with no wait for their echo (each its own
/// write), read by a second thread; the concatenation comes back byte-exact.
fn pipelined_messages(engine: Engine) {
    let server = Server::start(engine, &[]);
    let mut r = rng("pipelined_messages");
    let seed: u64 = r.random();
    let sizes: Vec<usize> = (0..20_000).map(|_| r.random_range(1..=3000)).collect();
    let total: usize = sizes.iter().sum();
    let c = server.connect();
    let mut w = c.try_clone().expect("clone");
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 3000];
        for n in sizes {
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n])?;
        }
        Ok(())
    });
    let mut rd = c;
    let res = read_pattern(&mut rd, seed, total);
    if res.is_err() {
        let _ = rd.shutdown(Shutdown::Both);
    }
    let wres = writer.join().expect("writer");
    res.unwrap_or_else(|e| panic!("pipelined echo of {total} bytes: {e}"));
    wres.expect("writer");
}

/// Writes everything first and reads only at the end: 64 KiB fits in the kernel's socket buffers on
/// both sides, so a correct server absorbs it; a write timeout (not a hang) reports one that does not.
fn write_all_then_read(engine: Engine) {
    let server = Server::start(engine, &[]);
    let mut c = server.connect();
    let msg = Pattern::bytes(42, 64 * 1024);
    for chunk in msg.chunks(1000) {
        c.write_all(chunk)
            .expect("write before reading (the server stopped absorbing?)");
    }
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read the echo to EOF");
    assert_eq!(back.len(), msg.len(), "echoed length");
    assert!(back == msg, "echo differs");
}

/// Every byte value, invalid UTF-8, NULs, CR/LF, protocol look-alikes and zero-length writes are all
/// just bytes to an echo server.
fn garbage_and_zero_length_writes(engine: Engine) {
    let server = Server::start(engine, &[]);
    let mut c = server.connect();
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    let cases: Vec<&[u8]> = vec![
        &[0],
        &[0xff, 0xfe, 0xfd],
        b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc",
        b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\xff\xfb\x01\xff\xfd\x03",
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c",
        &all,
    ];
    for (i, m) in cases.iter().enumerate() {
        assert_eq!(c.write(&[]).expect("zero-length write"), 0);
        roundtrip(&mut c, m).unwrap_or_else(|e| panic!("garbage case {i}: {e}"));
        assert_eq!(c.write(&[]).expect("zero-length write"), 0);
    }
    // A connection that writes only zero-length writes and closes gets a clean EOF.
    let mut z = server.connect();
    for _ in 0..10 {
        assert_eq!(z.write(&[]).expect("zero-length write"), 0);
    }
    z.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(
        read_end(&mut z),
        End::Eof,
        "after a zero-byte stream and FIN"
    );
    // Connections that close at once, with and without sending, do not disturb the server.
    for i in 0..50 {
        let mut q = server.connect();
        if i % 2 == 0 {
            let _ = q.write_all(b"bye");
        }
    }
    roundtrip(&mut c, b"still here").expect("echo after the garbage");
}

/// Many small messages: ping-pong on one connection, then 50 connections at once.
fn many_small_messages(engine: Engine) {
    let server = Server::start(engine, &[]);
    let mut r = rng("many_small_messages");
    let mut c = server.connect();
    for i in 0..3000 {
        let n = r.random_range(1..=64);
        let m = Pattern::bytes(i, n);
        roundtrip(&mut c, &m).unwrap_or_else(|e| panic!("message {i} ({n} B): {e}"));
    }
    let handles: Vec<_> = (0..50u64)
        .map(|k| {
            let mut c = server.connect();
            thread::spawn(move || {
                for i in 0..200u64 {
                    let m = Pattern::bytes(k * 1000 + i, 1 + (i as usize % 32));
                    roundtrip(&mut c, &m)
                        .map_err(|e| format!("connection {k}, message {i}: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Thread names of the server process (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let path = t.expect("task entry").path().join("comm");
        if let Ok(n) = std::fs::read_to_string(path) {
            names.push(n.trim().to_string());
        }
    }
    names
}

/// Six shards on two threads (`--threads 2`): io_uring drives three rings per thread; epoll runs a
/// thread per shard and says that it ignores the flag. Either way every shard accepts and echoes, a
/// silent connection on a shard whose thread sleeps on other rings is still closed at its idle
/// timeout, and SIGTERM drains every shard.
fn shards_sharing_threads(engine: Engine) {
    let _g = serial();
    let mut server = Server::builder(engine)
        .shards(6)
        .args(["--threads", "2", "--idle-timeout", "2s"])
        .start();
    let names = thread_names(server.pid());
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    match engine {
        Engine::Uring => {
            assert!(
                server.log().contains("shards=6 threads=2"),
                "{}",
                server.log()
            );
            assert_eq!(count("ringhold-thread"), 2, "threads: {names:?}");
            assert_eq!(count("ringhold-shard"), 0, "threads: {names:?}");
        }
        Engine::Epoll => {
            assert!(
                server.log().contains("--threads applies to io_uring only"),
                "{}",
                server.log()
            );
            assert_eq!(count("ringhold-shard"), 6, "threads: {names:?}");
        }
    }
    // 600 connections spread by SO_REUSEPORT over the six listeners; each echoes twice.
    let mut conns: Vec<_> = (0..600).map(|_| server.connect()).collect();
    for round in 0..2u64 {
        for (i, c) in conns.iter_mut().enumerate() {
            let m = Pattern::bytes(round * 1000 + i as u64, 1 + i % 200);
            c.write_all(&m).expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            read_pattern(c, round * 1000 + i as u64, 1 + i % 200)
                .unwrap_or_else(|e| panic!("connection {i}, round {round}: {e}"));
        }
    }
    for shard in 0..6 {
        let id = shard.to_string();
        server.expect_metric(
            "ringhold_connections_active",
            &[("shard", id.as_str())],
            "connections on every shard",
            |v| v > 0.0,
        );
    }
    // Silence: the idle clock of every shard runs, whichever thread drives it.
    let mut quiet = server.connect();
    roundtrip(&mut quiet, b"then silence").expect("echo");
    assert_eq!(
        read_end(&mut quiet),
        End::Eof,
        "idle timeout on a grouped shard"
    );
    drop(conns);
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(ringhold_tests::secs(20))
        .expect("the server exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

both_engines!(
    shards_sharing_threads,
    random_payloads_200_connections,
    tiny_buffers_and_exhausted_pool,
    pipelined_messages,
    write_all_then_read,
    garbage_and_zero_length_writes,
    many_small_messages,
);
