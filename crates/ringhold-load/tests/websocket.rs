//! `ringhold load --protocol websocket` against a WebSocket echo server nobody here wrote (python
//! `websockets`, strict about RFC 6455: it fails a connection on an unmasked client frame, a bad
//! opcode or a missing pong): a healthy server, one that pings, corrupts, closes or refuses, and a
//! raw TCP echo server that is no WebSocket server at all. Each run is bounded (a few seconds); the
//! tests run one at a time ([`serial`]). Without python `websockets` a test is a SKIP, and a failure
//! under `CI` (.ci/run installs it).

mod common;

use std::process::ExitCode;

use common::{load, n, EchoServer};
use ringhold_tests::serial;

#[test]
fn upgrades_and_verifies_every_echoed_message() {
    let _g = serial();
    let Some(server) =
        EchoServer::start_websockets("upgrades_and_verifies_every_echoed_message", &[])
    else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ws-ok",
        &[
            "--protocol",
            "websocket",
            "--connections",
            "200",
            "--sources",
            "2",
            "--interval",
            "300ms",
            "--duration",
            "2s",
            "--workers",
            "2",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(j["config"]["protocol"], "websocket");
    assert_eq!(n(&j, "connections.connected"), 200);
    assert_eq!(n(&j, "connections.alive"), 200);
    assert_eq!(n(&j, "websocket.upgrades"), 200);
    assert!(n(&j, "heartbeats.sent") >= 200);
    assert_eq!(n(&j, "heartbeats.echoed"), n(&j, "heartbeats.sent"));
    // Each 64 B message goes out with a 6-byte masked header and comes back with a 2-byte one.
    let sent = n(&j, "heartbeats.sent");
    assert!(n(&j, "bytes.sent") > 70 * sent);
    assert!(n(&j, "bytes.received") > 66 * sent);
}

#[test]
fn messages_with_16_and_64_bit_lengths() {
    let _g = serial();
    for size in ["126", "70000", "1MiB"] {
        let Some(server) = EchoServer::start_websockets("messages_with_16_and_64_bit_lengths", &[])
        else {
            return;
        };
        let (code, j) = load(
            &server.addr,
            "ws-sizes",
            &[
                "--protocol",
                "websocket",
                "--connections",
                "10",
                "--message-size",
                size,
                "--interval",
                "400ms",
                "--duration",
                "1500ms",
            ],
        );
        assert_eq!(j["ok"], true, "{size}: {j:#}");
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(n(&j, "heartbeats.echoed") >= 10);
    }
}

#[test]
fn the_servers_pings_are_answered_idle_or_busy() {
    let _g = serial();
    // The server pings every 200 ms and drops a connection whose pong is 1 s late.
    for interval in ["0", "70ms"] {
        let Some(server) = EchoServer::start_websockets(
            "the_servers_pings_are_answered_idle_or_busy",
            &["--ping-interval", "0.2"],
        ) else {
            return;
        };
        let (code, j) = load(
            &server.addr,
            "ws-ping",
            &[
                "--protocol",
                "websocket",
                "--connections",
                "50",
                "--interval",
                interval,
                "--duration",
                "2s",
            ],
        );
        assert_eq!(j["ok"], true, "interval {interval}: {j:#}");
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(n(&j, "connections.alive"), 50);
        let pings = n(&j, "websocket.pings_received");
        assert!(pings >= 50 * 5, "{pings} pings for 50 connections in 2 s");
        // Every ping is answered, except one that arrived as the run ended.
        assert!(n(&j, "websocket.pongs_sent") + 50 >= pings, "{j:#}");
    }
}

#[test]
fn a_corrupted_message_is_a_mismatch() {
    let _g = serial();
    let Some(server) =
        EchoServer::start_websockets("a_corrupted_message_is_a_mismatch", &["--corrupt"])
    else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ws-corrupt",
        &[
            "--protocol",
            "websocket",
            "--connections",
            "20",
            "--interval",
            "200ms",
            "--duration",
            "1500ms",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.mismatch"), 20, "{j:#}");
    assert_eq!(
        n(&j, "heartbeats.echoed"),
        20,
        "the first message of each came back intact"
    );
}

#[test]
fn a_close_frame_from_the_server_counts_as_closed_by_server() {
    let _g = serial();
    let Some(server) = EchoServer::start_websockets(
        "a_close_frame_from_the_server_counts_as_closed_by_server",
        &["--close-after", "2"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ws-close",
        &[
            "--protocol",
            "websocket",
            "--connections",
            "20",
            "--interval",
            "200ms",
            "--duration",
            "1500ms",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.closed_by_server"), 20, "{j:#}");
    assert_eq!(n(&j, "heartbeats.echoed"), 40);
}

#[test]
fn a_refused_or_missing_upgrade_is_a_handshake_failure() {
    let _g = serial();
    let Some(server) = EchoServer::start_websockets(
        "a_refused_or_missing_upgrade_is_a_handshake_failure",
        &["--refuse"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ws-refuse",
        &[
            "--protocol",
            "websocket",
            "--connections",
            "10",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.handshake"), 10, "{j:#}");
    assert!(j["hints"]["handshake"]
        .as_str()
        .is_some_and(|h| h.contains("WebSocket server")));
    // A raw TCP echo server sends the request back instead of a 101.
    let Some(server) =
        EchoServer::start("a_refused_or_missing_upgrade_is_a_handshake_failure", &[])
    else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ws-raw",
        &[
            "--protocol",
            "websocket",
            "--connections",
            "10",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "failures.handshake"), 10, "{j:#}");
    assert_eq!(n(&j, "websocket.upgrades"), 0);
}
