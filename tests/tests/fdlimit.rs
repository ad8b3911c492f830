//! Beyond the fd limit: a server whose RLIMIT_NOFILE is 1024 (soft and hard) gets 3000 connections.
//! With io_uring direct descriptors connections take no process descriptor, so all 3000 are served.
//! With epoll each connection is a descriptor: the excess is refused cleanly (closed at once, a
//! rate-limited warning in the log), the accepted ones keep working, and refusing does not spin.
//! The 3000 client sockets live in two python3 subprocesses (tests/clients/hold.py, 1500 each), so
//! this test process stays far below its own limit.

use std::time::Instant;

use ringhold_tests::net::roundtrip;
use ringhold_tests::procfs::SleepWatch;
use ringhold_tests::tools::{python3, Client};
use ringhold_tests::{both_engines, secs, serial, wait_until, Engine, Server};
use serde_json::Value;

const PER_CLIENT: usize = 1500;
const CLIENTS: usize = 2;
const TOTAL: usize = PER_CLIENT * CLIENTS;

fn count(v: &Value, k: &str) -> usize {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no `{k}` in {v}")) as usize
}

/// Sums one phase's counts over the clients.
fn totals(rs: &[Value]) -> [usize; 4] {
    let mut t = [0; 4];
    for r in rs {
        for (i, k) in ["echoed", "closed", "failed", "timeout"].iter().enumerate() {
            t[i] += count(r, k);
        }
    }
    t
}

/// Log lines that warn about the descriptor limit.
fn fd_warnings(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            [
                "emfile",
                "descriptor",
                "fd limit",
                "rlimit_nofile",
                "too many open files",
                "nofile",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .count()
}

fn beyond_the_fd_limit(engine: Engine) {
    let Some(python) = python3("beyond_the_fd_limit") else {
        return;
    };
    let _g = serial();
    let t_start = Instant::now();
    let server = Server::builder(engine).nofile(1024).shards(4).start();
    let port = server.addr.port().to_string();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let args = [
                "--port",
                &port,
                "--count",
                &PER_CLIENT.to_string(),
                "--phase-timeout",
                &secs(20).as_secs().to_string(),
                "--deadline",
                &secs(150).as_secs().to_string(),
            ];
            Client::python(&python, "hold.py", &args.map(String::from))
        })
        .collect();
    let opened: Vec<Value> = clients.iter_mut().map(|c| c.json(secs(60))).collect();
    let [echoed, closed, failed, timeout] = totals(&opened);
    eprintln!(
        "{}: {TOTAL} connections at RLIMIT_NOFILE 1024: {opened:?}",
        engine.name()
    );
    assert_eq!(
        failed, 0,
        "connections failed (connect error or wrong echo): {opened:?}"
    );
    assert_eq!(
        timeout, 0,
        "connections neither served nor refused (left hanging): {opened:?}"
    );
    match engine {
        Engine::Uring => {
            assert_eq!(
                echoed, TOTAL,
                "io_uring direct descriptors should hold all {TOTAL}: {opened:?}"
            );
        }
        Engine::Epoll => {
            assert_eq!(echoed + closed, TOTAL, "{opened:?}");
            assert!(
                (500..1024).contains(&echoed),
                "epoll at RLIMIT_NOFILE 1024 should serve most of 1024 and refuse the rest: {opened:?}"
            );
            assert!(
                server.wait_for_log("WARN", secs(5)) && fd_warnings(&server.log()) >= 1,
                "no warning about the fd limit in the log"
            );
        }
    }

    let refused = closed as f64;
    server.expect_metric(
        "ringhold_rejected_total",
        &[("reason", "fd_limit")],
        &format!(">= {closed}"),
        |v| v >= refused,
    );
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        &format!("{echoed}"),
        |v| v == echoed as f64,
    );

    // The accepted ones keep working.
    for c in clients.iter_mut() {
        c.send("echo");
    }
    let again: Vec<Value> = clients.iter_mut().map(|c| c.json(secs(60))).collect();
    let [echoed2, ..] = totals(&again);
    assert_eq!(
        echoed2, echoed,
        "held connections stopped echoing after the refusals: {again:?}"
    );

    // Refusing (or accepting) a steady trickle of new connections while at the limit does not spin:
    // a busy loop on EMFILE never sleeps, so every thread of the server must be seen asleep (waiting
    // for events) at some point of the trickle. (Not "CPU below half the wall clock": a loaded machine
    // stretches the wall clock and proves nothing either way.)
    let watch = SleepWatch::start(server.pid());
    clients[0].send("trickle 200 3");
    let trickle = clients[0].json(secs(60));
    let threads = watch.finish();
    eprintln!(
        "{}: trickle {trickle}; server threads (samples seen, asleep): {threads:?}",
        engine.name()
    );
    // A thread that lived for only a few samples (a short-lived kernel worker) says nothing.
    let spinning: Vec<_> = threads
        .iter()
        .filter(|(_, t)| t.seen >= 20 && t.asleep == 0)
        .collect();
    assert!(
        threads.values().any(|t| t.seen >= 20),
        "the server's threads were hardly sampled during the trickle: {threads:?}"
    );
    assert_eq!(
        count(&trickle, "timeout"),
        0,
        "trickled connections left hanging: {trickle}"
    );
    assert_eq!(count(&trickle, "failed"), 0, "{trickle}");
    if engine == Engine::Uring {
        assert_eq!(count(&trickle, "echoed"), 200, "{trickle}");
    }
    assert!(
        spinning.is_empty(),
        "server threads never slept while refusing at the fd limit (busy loop): {spinning:?} \
         (tid: samples seen, asleep)"
    );

    // The warning is rate-limited (about once a second, not once per refusal).
    let warnings = fd_warnings(&server.log());
    let elapsed = t_start.elapsed().as_secs_f64().ceil() as u64;
    eprintln!(
        "{}: {warnings} fd-limit warnings in {elapsed} s",
        engine.name()
    );
    assert!(
        warnings as u64 <= elapsed + 2,
        "{warnings} fd-limit warnings in {elapsed} s: not rate-limited to ~1/s"
    );

    // Once the clients leave, the server serves new connections again.
    for mut c in clients {
        c.send("quit");
        let st = c.wait(secs(30));
        assert!(
            st.success(),
            "hold.py exited with {st}; stderr:\n{}",
            c.stderr()
        );
    }
    let served = wait_until(secs(20), || {
        roundtrip(&mut server.connect(), b"after the crowd").is_ok()
    });
    assert!(served, "no echo after the 3000 clients left");
}

both_engines!(beyond_the_fd_limit);
