//! Backpressure: a client that sends a lot and never reads stalls only itself. The server stops reading
//! it (its echo has nowhere to go), keeps serving everyone else, and does not buffer the flood in user
//! space (its RSS stays bounded).

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use ringhold_tests::net::{connect_with_rcvbuf, read_pattern, roundtrip};
use ringhold_tests::{both_engines, secs, serial, wait_until, Engine, Pattern, Server};

const MIB: usize = 1 << 20;
/// What the slow client sends: far more than every kernel socket buffer on the way can hold
/// (tcp_wmem/tcp_rmem maxima are a few MiB each), so most of it must wait in the client.
const FLOOD: usize = 128 * MIB;
const FAST_CLIENTS: u64 = 20;
const ROUND_TRIPS: u64 = 300;

fn slow_reader_does_not_stall_others(engine: Engine) {
    let _g = serial();
    let server = Server::start(engine, &[]);
    // Warm up one echo so the RSS baseline includes the server's steady state.
    roundtrip(&mut server.connect(), b"warm-up").expect("warm-up echo");
    let rss0 = server.rss();

    // The slow client: a small receive buffer (so its echo backs up quickly), a writer that floods
    // and a reader that does not read until the end of the test.
    let slow = connect_with_rcvbuf(server.addr, 4096);
    slow.set_write_timeout(None)
        .expect("no write timeout on the flood");
    let written = Arc::new(AtomicUsize::new(0));
    let mut w = slow.try_clone().expect("clone");
    let progress = written.clone();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut p = Pattern::new(7);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = FLOOD;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n;
            progress.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    });
    assert!(
        wait_until(secs(20), || written.load(Ordering::Relaxed) >= MIB),
        "the slow client could not send its first MiB"
    );

    // The fast clients: ping-pong, each round trip must complete while the slow one is stuck.
    let fast: Vec<_> = (0..FAST_CLIENTS)
        .map(|k| {
            let mut c = server.connect();
            thread::spawn(move || {
                for i in 0..ROUND_TRIPS {
                    let m = Pattern::bytes(k * 10_000 + i, 1024);
                    roundtrip(&mut c, &m)
                        .map_err(|e| format!("fast client {k}, round trip {i}: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    let mut rss_peak = server.rss();
    let mut errors = Vec::new();
    for h in fast {
        rss_peak = rss_peak.max(server.rss());
        if let Err(e) = h.join().expect("fast client thread") {
            errors.push(e);
        }
    }
    rss_peak = rss_peak.max(server.rss());
    let stuck_at = written.load(Ordering::Relaxed);
    assert!(
        errors.is_empty(),
        "fast clients failed next to a slow reader:\n{}",
        errors.join("\n")
    );
    assert!(
        stuck_at < FLOOD,
        "the slow client wrote all {FLOOD} bytes without reading: the server buffered them instead of \
         applying backpressure"
    );
    let growth = rss_peak.saturating_sub(rss0);
    eprintln!(
        "{}: slow client stuck after {} MiB of {} MiB; server RSS {} MiB -> peak {} MiB (+{} KiB)",
        engine.name(),
        stuck_at / MIB,
        FLOOD / MIB,
        rss0 / MIB as u64,
        rss_peak / MIB as u64,
        growth / 1024
    );
    assert!(
        growth < 64 * MIB as u64,
        "server RSS grew by {} MiB next to a slow reader",
        growth / MIB as u64
    );

    // Now the slow client reads: everything it sent comes back, in order, and its writer finishes.
    let mut r = slow;
    r.set_read_timeout(Some(secs(60))).expect("read timeout");
    let res = read_pattern(&mut r, 7, FLOOD);
    if res.is_err() {
        let _ = r.shutdown(Shutdown::Both);
    }
    let wres = writer.join().expect("writer thread");
    res.unwrap_or_else(|e| panic!("slow client's echo once it reads: {e}"));
    wres.expect("slow client's writes");
    let rss_end = server.rss();
    assert!(
        rss_end.saturating_sub(rss0) < 64 * MIB as u64,
        "server RSS grew by {} MiB after the flood was echoed",
        rss_end.saturating_sub(rss0) / MIB as u64
    );
}

/// Several slow readers at once, each of which reads a little now and then: all of them still get
/// their whole echo, and the server's memory does not grow with what they sent.
fn several_slow_readers(engine: Engine) {
    let _g = serial();
    let server = Server::start(engine, &[]);
    roundtrip(&mut server.connect(), b"warm-up").expect("warm-up echo");
    let rss0 = server.rss();
    let per_client = 16 * MIB;
    let handles: Vec<_> = (0..8u64)
        .map(|k| {
            let c = connect_with_rcvbuf(server.addr, 8192);
            c.set_write_timeout(None).expect("no write timeout");
            c.set_read_timeout(Some(secs(60))).expect("read timeout");
            let mut w = c.try_clone().expect("clone");
            let writer = thread::spawn(move || {
                ringhold_tests::net::write_pattern(&mut w, 100 + k, per_client, 256 * 1024)
            });
            let mut r = c;
            thread::spawn(move || {
                // Read in small pieces: the kernel's small receive window makes this a slow reader.
                let res = read_pattern(&mut SmallReads(&mut r), 100 + k, per_client);
                if res.is_err() {
                    let _ = r.shutdown(Shutdown::Both);
                }
                let wres = writer.join().map_err(|_| "writer panicked".to_string())?;
                res.map_err(|e| format!("slow reader {k}: {e}"))?;
                wres.map_err(|e| format!("slow writer {k}: {e}"))
            })
        })
        .collect();
    let mut peak = server.rss();
    let mut errors = Vec::new();
    for h in handles {
        peak = peak.max(server.rss());
        if let Err(e) = h.join().expect("client thread") {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let growth = peak.saturating_sub(rss0);
    eprintln!(
        "{}: 8 slow readers x {} MiB; server RSS +{} KiB",
        engine.name(),
        per_client / MIB,
        growth / 1024
    );
    assert!(
        growth < 64 * MIB as u64,
        "server RSS grew by {} MiB",
        growth / MIB as u64
    );
}

/// A reader that asks for at most 1 KiB per read.
struct SmallReads<'a>(&'a mut std::net::TcpStream);

impl std::io::Read for SmallReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1024);
        self.0.read(&mut buf[..n])
    }
}

both_engines!(slow_reader_does_not_stall_others, several_slow_readers);
