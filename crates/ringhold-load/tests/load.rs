//! `ringhold load` against real echo servers (a small Python asyncio server started per test):
//! a healthy server, one that corrupts a byte, and a port nobody listens on. Each run is bounded
//! (a few seconds) and stays far below the fd limit (the load side holds no process fds per
//! connection; the Python server holds one per connection).

mod common;

use std::process::ExitCode;

use common::{load, n, EchoServer};
use serde_json::Value;

#[test]
fn holds_1000_connections_from_4_sources_and_verifies_every_echo() {
    let Some(server) = EchoServer::start(&[]) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ok",
        &[
            "--connections",
            "1000",
            "--sources",
            "4",
            "--interval",
            "500ms",
            "--duration",
            "3s",
            "--workers",
            "2",
        ],
    );
    assert_eq!(j["schema"], "ringhold-load/1");
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(n(&j, "config.connections"), 1000);
    assert_eq!(n(&j, "config.sources"), 4);
    assert_eq!(n(&j, "config.workers"), 2);
    assert_eq!(n(&j, "connections.attempted"), 1000);
    assert_eq!(n(&j, "connections.connected"), 1000);
    assert_eq!(n(&j, "connections.alive"), 1000);
    assert_eq!(n(&j, "connections.failed"), 0);
    for cause in [
        "refused",
        "reset",
        "timed_out",
        "addr_not_available",
        "fd_limit",
        "mismatch",
        "closed_by_server",
    ] {
        assert_eq!(n(&j, &format!("failures.{cause}")), 0, "{cause}");
    }
    // Every connection sends at once on connect, then every 500ms.
    assert!(n(&j, "heartbeats.sent") >= 1000);
    assert_eq!(n(&j, "heartbeats.echoed"), n(&j, "heartbeats.sent"));
    assert_eq!(n(&j, "heartbeats.lost"), 0);
    assert_eq!(n(&j, "bytes.received"), n(&j, "bytes.sent"));
    assert_eq!(n(&j, "bytes.sent"), 64 * n(&j, "heartbeats.sent"));
    assert!(n(&j, "latency_us.samples") >= n(&j, "heartbeats.echoed"));
    assert!(n(&j, "latency_us.p50") <= n(&j, "latency_us.p99"));
    assert!(j["hints"].as_object().is_some_and(|h| h.is_empty()));
}

#[test]
fn syscall_setup_and_constant_rate_work_too() {
    let Some(server) = EchoServer::start(&[]) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "syscall",
        &[
            "--connections",
            "200",
            "--sources",
            "127.0.0.2-127.0.0.3",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--setup",
            "syscall",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(j["config"]["setup"], "syscall");
    assert_eq!(n(&j, "connections.connected"), 200);
    assert_eq!(n(&j, "config.interval_us"), 500_000); // 200 connections / 400 per second
    assert_eq!(n(&j, "heartbeats.lost"), 0);
}

#[test]
fn a_corrupted_echo_is_detected_and_counted_as_mismatch() {
    let Some(server) = EchoServer::start(&["--corrupt-after", "100"]) else {
        return;
    };
    // Byte 100 of each connection's stream is the 37th byte of its second heartbeat.
    let (code, j) = load(
        &server.addr,
        "mismatch",
        &[
            "--connections",
            "50",
            "--interval",
            "200ms",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(j["ok"], false);
    assert_eq!(n(&j, "connections.connected"), 50);
    assert_eq!(n(&j, "failures.mismatch"), 50, "{j:#}");
    assert_eq!(n(&j, "connections.failed"), 50);
    assert_eq!(n(&j, "connections.alive"), 0);
    // The first heartbeat of each came back intact, the second did not.
    assert_eq!(n(&j, "heartbeats.echoed"), 50);
    assert_eq!(n(&j, "heartbeats.lost"), 50);
    assert!(j["hints"]["mismatch"]
        .as_str()
        .is_some_and(|h| h.contains("echo differed")));
}

#[test]
fn a_refused_target_is_counted_as_refused_with_its_hint() {
    // A port that was free a moment ago: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let (code, j) = load(
        &target,
        "refused",
        &["--connections", "20", "--sources", "2", "--duration", "1s"],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(j["ok"], false);
    assert_eq!(n(&j, "connections.attempted"), 20);
    assert_eq!(n(&j, "connections.connected"), 0);
    assert_eq!(n(&j, "failures.refused"), 20, "{j:#}");
    assert!(j["hints"]["refused"]
        .as_str()
        .is_some_and(|h| h.contains("nothing listens")));
    assert_eq!(j["latency_us"], Value::Null);
}

#[test]
fn a_server_that_never_echoes_times_out_each_connection() {
    let Some(server) = EchoServer::start(&["--silent"]) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "silent",
        &[
            "--connections",
            "30",
            "--interval",
            "100ms",
            "--echo-timeout",
            "300ms",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "connections.connected"), 30);
    assert_eq!(n(&j, "failures.timed_out"), 30, "{j:#}");
    assert_eq!(n(&j, "connections.alive"), 0);
    assert_eq!(n(&j, "heartbeats.echoed"), 0);
    assert_eq!(n(&j, "heartbeats.sent"), 30); // one each: the next ones were due while it was outstanding
    assert_eq!(n(&j, "heartbeats.lost"), 30);
    assert!(n(&j, "heartbeats.late") > 0);
    assert!(j["hints"]["timed_out"]
        .as_str()
        .is_some_and(|h| h.contains("--echo-timeout")));
}
