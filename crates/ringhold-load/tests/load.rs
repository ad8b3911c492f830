//! `ringhold load` against real echo servers (a small Python asyncio server started per test):
//! a healthy server, one that corrupts a byte, and a port nobody listens on; and `--protocol http`
//! against Python's http.server (HTTP/1.1 keep-alive): healthy, wrong status, wrong length. Each run is bounded
//! (a few seconds) and stays far below the fd limit (the load side holds no process fds per
//! connection; the Python server holds one per connection).
//!
//! The tests run one at a time ([`serial`]): each Python server is single-threaded, and five loads
//! at once on a small machine would make their echoes late. The load's own connect and echo timeouts
//! are scaled by RINGHOLD_TEST_TIMEOUT_SCALE like every deadline of the tests; python3 missing is a
//! SKIP, and a failure under `CI`.

mod common;

use std::process::ExitCode;

use common::{load, n, EchoServer};
use ringhold_tests::{flag_ms, secs, serial};
use serde_json::Value;

#[test]
fn holds_1000_connections_from_4_sources_and_verifies_every_echo() {
    let _g = serial();
    let Some(server) = EchoServer::start("holds_1000_connections", &[]) else {
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
    // Every connection sends at once on connect (1000), then every 500ms: the interval came round.
    assert!(
        n(&j, "heartbeats.sent") + n(&j, "heartbeats.late") > 1000,
        "{j:#}"
    );
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
    let _g = serial();
    let Some(server) = EchoServer::start("syscall_setup_and_constant_rate_work_too", &[]) else {
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
    let _g = serial();
    let Some(server) = EchoServer::start(
        "a_corrupted_echo_is_detected_and_counted_as_mismatch",
        &["--corrupt-after", "100"],
    ) else {
        return;
    };
    // Byte 100 of each connection's stream is the 37th byte of its second heartbeat. (A longer run
    // changes nothing once every connection has failed: the duration is scaled, so that a slow
    // machine still sends every second heartbeat.)
    let duration = flag_ms(secs(2));
    let (code, j) = load(
        &server.addr,
        "mismatch",
        &[
            "--connections",
            "50",
            "--interval",
            "200ms",
            "--duration",
            &duration,
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
    let _g = serial();
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
    let _g = serial();
    let Some(server) = EchoServer::start(
        "a_server_that_never_echoes_times_out_each_connection",
        &["--silent"],
    ) else {
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

#[test]
fn http_keep_alive_gets_are_answered_with_the_length_asked_for() {
    let Some(server) = EchoServer::start_http(
        "http_keep_alive_gets_are_answered_with_the_length_asked_for",
        &[],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "http",
        &[
            "--protocol",
            "http",
            "--connections",
            "200",
            "--sources",
            "2",
            "--interval",
            "300ms",
            "--message-size",
            "3000",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(j["config"]["protocol"], "http");
    assert_eq!(j["config"]["http_path"], "/");
    assert_eq!(n(&j, "connections.connected"), 200);
    assert_eq!(n(&j, "connections.failed"), 0);
    // One request at connect, then one per 300 ms, all on the same connection (keep-alive: a close
    // by the server would count as closed_by_server).
    let sent = n(&j, "heartbeats.sent");
    assert!(sent >= 400, "{j:#}");
    assert_eq!(n(&j, "heartbeats.echoed"), sent);
    assert_eq!(n(&j, "heartbeats.lost"), 0);
    assert!(n(&j, "bytes.received") > 3000 * sent);
    let request = "GET /?length=3000 HTTP/1.1\r\nHost: \r\n\r\n".len() + server.addr.len();
    assert_eq!(n(&j, "bytes.sent"), request as u64 * sent);
}

#[test]
fn http_kit_pattern_draws_lengths_and_pauses() {
    let Some(server) = EchoServer::start_http("http_kit_pattern_draws_lengths_and_pauses", &[])
    else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "http-kit",
        &[
            "--protocol",
            "http",
            "--http-kit",
            "--http-kit-pause",
            "100ms-400ms",
            "--connections",
            "100",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(n(&j, "config.http_kit.length_min"), 1);
    assert_eq!(n(&j, "config.http_kit.length_max"), 4096);
    assert_eq!(n(&j, "config.http_kit.pause_max_us"), 400_000);
    assert_eq!(j["config"]["interval_us"], Value::Null);
    let sent = n(&j, "heartbeats.sent");
    // Each connection asks at once, then after every answer and a pause of at most 0.4 s.
    assert!(sent >= 300, "{j:#}");
    assert_eq!(n(&j, "heartbeats.echoed"), sent);
    // Random lengths: on average ~2 KiB a body.
    let per = n(&j, "bytes.received") / sent;
    assert!((1000..3500).contains(&per), "{per} B per answer");
}

#[test]
fn an_http_error_status_is_counted_as_bad_status() {
    let Some(server) = EchoServer::start_http(
        "an_http_error_status_is_counted_as_bad_status",
        &["--status", "404"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "http-404",
        &[
            "--protocol",
            "http",
            "--connections",
            "20",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.bad_status"), 20, "{j:#}");
    assert_eq!(n(&j, "last_bad_status"), 404);
    assert!(j["hints"]["bad_status"]
        .as_str()
        .is_some_and(|h| h.contains("other than 200")));
}

#[test]
fn an_http_answer_of_the_wrong_length_is_a_mismatch() {
    let Some(server) = EchoServer::start_http(
        "an_http_answer_of_the_wrong_length_is_a_mismatch",
        &["--extra", "1"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "http-length",
        &[
            "--protocol",
            "http",
            "--connections",
            "20",
            "--message-size",
            "10",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.mismatch"), 20, "{j:#}");
    assert_eq!(n(&j, "heartbeats.echoed"), 0);
}

#[test]
fn an_http_head_split_across_reads_is_put_together() {
    let Some(server) = EchoServer::start_http(
        "an_http_head_split_across_reads_is_put_together",
        &["--split-head"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "http-split",
        &[
            "--protocol",
            "http",
            "--connections",
            "20",
            "--interval",
            "200ms",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(n(&j, "heartbeats.echoed") >= 40, "{j:#}");
}
