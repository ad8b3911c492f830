//! `ringhold serve --protocol websocket` end to end, on both engines, with WebSocket clients nobody
//! here wrote: python `websockets` (strict about what a server may send) and node `ws`
//! (tests/clients/ws_client.py, tests/clients/node/ws_client.js), plus raw frames through a plain
//! socket for what no well-behaved client sends (unmasked frames, invalid UTF-8, silence) and for
//! byte-exact accounting of the server's counters.
//!
//! Clients: python `websockets` from `RINGHOLD_PY_WEBSOCKETS` (set by .ci/run), else
//! `~/.cache/ringhold-ci/ws/bin/python`; node `ws` from `RINGHOLD_NODE_MODULES` (set by .ci/run), else
//! `~/.cache/ringhold-ci/node/node_modules`. A missing one is a SKIP, and a failure under `CI`.

#[path = "support/rawws.rs"]
mod rawws;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rawws::{
    close_codes, frame, frames_timed, masked, RawWs, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING,
    OP_PONG, OP_TEXT,
};
use ringhold_tests::tools::{clients_dir, require, Client};
use ringhold_tests::{both_engines, flag_ms, scaled, secs, serial, skip, Engine, Server};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------
// Finding the clients

/// The exit code of both client scripts when their library is not installed.
const NOT_INSTALLED: i32 = 3;

fn home_cache(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/ringhold-ci").join(rel))
        .filter(|p| p.exists())
}

/// The python that has `websockets`, or `None` after a skip.
fn py_websockets(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("RINGHOLD_PY_WEBSOCKETS")
        .map(PathBuf::from)
        .or_else(|| home_cache("ws/bin/python"));
    let Some(python) = python else {
        skip(&format!(
            "{test}: python `websockets` not found (RINGHOLD_PY_WEBSOCKETS unset, no \
             ~/.cache/ringhold-ci/ws; `bash .ci/run` installs it)"
        ));
        return None;
    };
    Some(python)
}

/// `node` and the node_modules that hold `ws`, or `None` after a skip.
fn node_ws(test: &str) -> Option<(PathBuf, PathBuf)> {
    let node = require("node", "nodejs", test)?;
    let modules = std::env::var_os("RINGHOLD_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| home_cache("node/node_modules"));
    match modules {
        Some(m) if m.join("ws/package.json").exists() => Some((node, m)),
        _ => {
            skip(&format!(
                "{test}: node `ws` not found (RINGHOLD_NODE_MODULES unset, no \
                 ~/.cache/ringhold-ci/node/node_modules/ws; `bash .ci/run` installs it with npm ci)"
            ));
            None
        }
    }
}

/// Which client library runs a scenario.
#[derive(Clone, Copy, Debug)]
enum Lib {
    Python,
    Node,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Python => "python websockets",
            Lib::Node => "node ws",
        }
    }
}

/// Runs `scenario` of `lib`'s client script against `server` (extra `args`), waits for it (bounded)
/// and returns its exit success and its JSON line; `None` after a skip (library missing).
fn scenario(
    lib: Lib,
    test: &str,
    server: &Server,
    scenario: &str,
    args: &[&str],
) -> Option<(bool, Value)> {
    let deadline = secs(100);
    let mut cmd = match lib {
        Lib::Python => {
            let python = py_websockets(test)?;
            let mut c = Command::new(python);
            c.arg("-u").arg(clients_dir().join("ws_client.py"));
            c
        }
        Lib::Node => {
            let (node, modules) = node_ws(test)?;
            let mut c = Command::new(node);
            c.arg(clients_dir().join("node/ws_client.js"))
                .env("NODE_PATH", modules);
            c
        }
    };
    cmd.arg(scenario)
        .args(["--port", &server.addr.port().to_string()])
        .args(["--deadline", &deadline.as_secs().to_string()])
        .args(args);
    let mut client = Client::spawn(cmd);
    let status = client.wait(deadline + secs(20));
    if status.code() == Some(NOT_INSTALLED) {
        skip(&format!(
            "{test}: {} is not installed (`bash .ci/run` installs it)",
            lib.name()
        ));
        return None;
    }
    let out = client.rest(secs(5));
    let json = out
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "{} {scenario}: no JSON line ({status}); stdout {out:?}; stderr:\n{}",
                lib.name(),
                client.stderr()
            )
        });
    eprintln!(
        "{}: {} {scenario}: {json}",
        server.engine.name(),
        lib.name()
    );
    if !status.success() && !client.stderr().is_empty() {
        eprintln!("{} stderr:\n{}", lib.name(), client.stderr());
    }
    Some((status.success(), json))
}

/// Runs a scenario that must succeed.
fn expect_ok(lib: Lib, test: &str, server: &mut Server, name: &str, args: &[&str]) {
    let Some((ok, j)) = scenario(lib, test, server, name, args) else {
        return;
    };
    assert!(
        ok,
        "{} ({}): {} {name} failed: {j}",
        test,
        server.engine.name(),
        lib.name()
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------------
// The clients' scenarios

const SIZES: &str = "0,1,125,126,65535,65536,1048576";

/// Text and binary messages of 0 B, 1 B, 125, 126, 65535, 65536 and 1 MiB (each length encoding on
/// both sides of its boundary), one at a time and all in flight at once, byte for byte.
fn python_sizes(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(
        Lib::Python,
        "python_sizes",
        &mut server,
        "sizes",
        &["--sizes", SIZES],
    );
}

fn node_sizes(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(
        Lib::Node,
        "node_sizes",
        &mut server,
        "sizes",
        &["--sizes", SIZES],
    );
}

/// Fragmented messages (python sends an iterable and an async iterable of fragments; node sends
/// `fin: false` frames): empty fragments, 170 KB over three fragments, a character split across
/// fragments, a ping between two fragments.
fn python_fragments(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(
        Lib::Python,
        "python_fragments",
        &mut server,
        "fragments",
        &[],
    );
}

fn node_fragments(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(Lib::Node, "node_fragments", &mut server, "fragments", &[]);
}

/// A client's ping gets a pong with the same payload (0, 5 and 125 bytes; ten in flight).
fn python_ping_pong(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(Lib::Python, "python_ping_pong", &mut server, "ping", &[]);
}

fn node_ping_pong(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    expect_ok(Lib::Node, "node_ping_pong", &mut server, "ping", &[]);
}

/// The client closes with 4001 (and 1000, 3000): the server answers with the same code.
fn python_close_code_echoed(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    for code in ["4001", "1000", "3000"] {
        expect_ok(
            Lib::Python,
            "python_close_code_echoed",
            &mut server,
            "close",
            &["--code", code],
        );
    }
}

fn node_close_code_echoed(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    for code in ["4001", "1000"] {
        expect_ok(
            Lib::Node,
            "node_close_code_echoed",
            &mut server,
            "close",
            &["--code", code],
        );
    }
}

/// A text message that is not UTF-8 ends the connection with the server's close 1007, and nothing of
/// it comes back (python `websockets` would fail the connection itself, with its own 1007, on an
/// echo that is not UTF-8).
fn python_invalid_utf8_fails_with_1007(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let Some((_, j)) = scenario(
        Lib::Python,
        "python_invalid_utf8_fails_with_1007",
        &server,
        "invalid-utf8",
        &[],
    ) else {
        return;
    };
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["rcvd"], 1007, "the server's close 1007: {j}");
    assert_eq!(j["got_message"], false, "no echo of the invalid text: {j}");
    server.assert_running();
}

fn node_invalid_utf8_fails_with_1007(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let Some((_, j)) = scenario(
        Lib::Node,
        "node_invalid_utf8_fails_with_1007",
        &server,
        "invalid-utf8",
        &[],
    ) else {
        return;
    };
    assert_eq!(j["ok"], true, "{j}");
    // The server's 1007; node `ws` would fail the connection itself on an echo that is not UTF-8
    // (close code 1006 locally, error "invalid UTF-8 sequence").
    assert_eq!(j["close_code"], 1007, "the server's close 1007: {j}");
    assert!(j["error_seen"].is_null(), "no client-side error: {j}");
    server.assert_running();
}

/// A message over `--max-message-size` gets close 1009.
fn python_too_big_gets_1009(engine: Engine) {
    let mut server = Server::start(
        engine,
        &["--protocol", "websocket", "--max-message-size", "64KiB"],
    );
    let Some((_, j)) = scenario(
        Lib::Python,
        "python_too_big_gets_1009",
        &server,
        "too-big",
        &["--size", "100000"],
    ) else {
        return;
    };
    assert_eq!(j["rcvd"], 1009, "{j}");
    // A message at the limit still echoes.
    expect_ok(
        Lib::Python,
        "python_too_big_gets_1009",
        &mut server,
        "sizes",
        &["--sizes", "65536"],
    );
}

fn node_too_big_gets_1009(engine: Engine) {
    let mut server = Server::start(
        engine,
        &["--protocol", "websocket", "--max-message-size", "64KiB"],
    );
    let Some((_, j)) = scenario(
        Lib::Node,
        "node_too_big_gets_1009",
        &server,
        "too-big",
        &["--size", "100000"],
    ) else {
        return;
    };
    assert_eq!(j["close_code"], 1009, "{j}");
    server.assert_running();
}

/// With `--idle-timeout 2s` (scaled), a client that sends nothing but answers the server's pings stays
/// connected for 6 s (scaled) and still echoes; the server pinged it meanwhile.
fn python_idle_client_answering_pings_stays(engine: Engine) {
    let idle = scaled(Duration::from_secs(2));
    let hold = scaled(Duration::from_secs(6));
    let mut server = Server::start(
        engine,
        &["--protocol", "websocket", "--idle-timeout", &flag_ms(idle)],
    );
    let Some((ok, j)) = scenario(
        Lib::Python,
        "python_idle_client_answering_pings_stays",
        &server,
        "idle",
        &["--hold", &format!("{:.3}", hold.as_secs_f64())],
    ) else {
        return;
    };
    assert!(ok, "a client answering pings was closed: {j}");
    // A ping at half the idle timeout: at least two in 3 idle timeouts.
    let pings = j["pings"].as_u64().unwrap_or(0);
    assert!(pings >= 2, "{pings} server pings in {hold:?}: {j}");
    server.assert_running();
}

/// 1000 python clients open at once, three echoes each (text and binary, 0..4 KiB), a normal close
/// each; then the server's byte counters hold at least every payload byte both ways.
fn python_1000_connections(engine: Engine) {
    let _g = serial();
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let Some((ok, j)) = scenario(
        Lib::Python,
        "python_1000_connections",
        &server,
        "many",
        &["--connections", "1000", "--messages", "3"],
    ) else {
        return;
    };
    assert!(ok, "{j}");
    assert_eq!(j["ok"], 1000, "{j}");
    assert_eq!(j["messages"], 3000, "{j}");
    let payload = j["payload_bytes"].as_f64().expect("payload_bytes");
    // Each message is at least its payload plus a 6-byte masked header in, a 2-byte header out; the
    // handshakes add more.
    server.expect_metric(
        "ringhold_bytes_received_total",
        &[],
        "every payload byte received",
        |v| v >= payload + 3000.0 * 6.0,
    );
    server.expect_metric(
        "ringhold_bytes_sent_total",
        &[],
        "every payload byte echoed",
        |v| v >= payload + 3000.0 * 2.0,
    );
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        "every connection closed",
        |v| v == 0.0,
    );
    server.assert_running();
}

fn node_1000_connections(engine: Engine) {
    let _g = serial();
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let Some((ok, j)) = scenario(
        Lib::Node,
        "node_1000_connections",
        &server,
        "many",
        &["--connections", "1000", "--messages", "3"],
    ) else {
        return;
    };
    assert!(ok, "{j}");
    assert_eq!(j["ok"], 1000, "{j}");
    server.expect_metric(
        "ringhold_connections_active",
        &[],
        "every connection closed",
        |v| v == 0.0,
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------------
// Raw sockets

/// A plain GET (no upgrade) gets 426 with `Sec-WebSocket-Version: 13`, then EOF; curl sees 426 too.
fn non_upgrade_get_gets_426(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::connect(&server);
    ws.send(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes());
    let head = ws.read_head();
    assert!(head.starts_with("HTTP/1.1 426 "), "{head:?}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head:?}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("Content-Length"))
        })
        .unwrap_or(0);
    ws.read_exact(len).expect("the 426 body");
    assert!(ws.read_exact(1).is_none(), "EOF after the 426");
    if let Some(curl) = require("curl", "curl", "non_upgrade_get_gets_426") {
        let out = Command::new(curl)
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
            .arg(secs(30).as_secs().to_string())
            .arg(format!("http://{}/", server.addr))
            .output()
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "426", "curl: {out:?}");
    }
    server.assert_running();
}

/// An unmasked client frame gets close 1002 (nothing of it echoed), then EOF.
fn unmasked_frame_gets_1002(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::open(&server);
    // A masked message first: it echoes.
    ws.send(&masked(true, OP_BINARY, b"masked"));
    let (op, data, _) = ws.message();
    assert_eq!((op, data.as_slice()), (OP_BINARY, &b"masked"[..]));
    ws.send(&frame(true, OP_BINARY, b"unmasked", None));
    let frames = ws.frames_to_eof(4);
    assert_eq!(close_codes(&frames), [Some(1002)], "{frames:?}");
    assert_eq!(frames.len(), 1, "only the close frame: {frames:?}");
    server.assert_running();
}

/// A masked text frame that is not UTF-8 gets close 1007, then EOF.
fn raw_invalid_utf8_gets_1007(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::open(&server);
    ws.send(&masked(true, OP_TEXT, b"ok \xff\xfe bad"));
    let frames = ws.frames_to_eof(4);
    assert_eq!(
        close_codes(&frames),
        [Some(1007)],
        "one close frame, 1007: {frames:?}"
    );
    assert_eq!(
        frames.last().map(|f| f.opcode),
        Some(OP_CLOSE),
        "{frames:?}"
    );
    server.assert_running();
}

/// The same, strictly: RFC 6455 §5.6 and §8.1 — a text frame's payload is UTF-8, and an endpoint
/// that finds it is not fails the connection; so the server must not send the invalid bytes back as
/// a text frame of its own (a strict client then fails the connection itself, on the server's frame:
/// python `websockets` sends 1007 and never sees the server's; node `ws` reports "invalid UTF-8
/// sequence" and closes with 1006). Text is checked before it is echoed, in chunks of 4 KiB: here
/// only a close 1007 comes back.
fn raw_invalid_utf8_is_not_echoed(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::open(&server);
    ws.send(&masked(true, OP_TEXT, b"ok \xff\xfe bad"));
    let frames = ws.frames_to_eof(4);
    assert_eq!(
        frames.iter().map(|f| f.opcode).collect::<Vec<_>>(),
        [OP_CLOSE],
        "only a close 1007, no echo of the invalid text: {frames:?}"
    );
    assert_eq!(frames[0].close_code(), Some(1007));
    server.assert_running();
}

/// A text message whose valid start (10 000 B, characters of 1 to 4 bytes, longer than one read)
/// is echoed, in fragments that are each UTF-8 on their own (4 KiB text chunks; a character cut by a
/// chunk goes with the next fragment); then a continuation with a surrogate in it, written in two
/// pieces cut inside the bad sequence: nothing of it comes back, only a close 1007, then EOF.
fn raw_invalid_utf8_after_valid_text_across_reads(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::open(&server);
    // 10 bytes a cycle: the first 9 999 bytes end inside "𝄞", 3 of its 4 bytes in.
    let text: String = "a€ñ𝄞".chars().cycle().take(4000).collect();
    let start = &text.as_bytes()[..9_999];
    ws.send(&masked(false, OP_TEXT, start));
    let mut back = Vec::new();
    // Its whole characters come back before the rest of the message is seen.
    let whole = start.len() - 3;
    while back.len() < whole {
        let f = ws.frame().expect("an echo fragment");
        assert!(!f.fin, "{f:?}");
        let want_op = if back.is_empty() { OP_TEXT } else { OP_CONT };
        assert_eq!(f.opcode, want_op, "{f:?}");
        assert!(
            std::str::from_utf8(&f.payload).is_ok(),
            "an echo fragment that is not UTF-8 on its own: {} B",
            f.payload.len()
        );
        back.extend_from_slice(&f.payload);
    }
    assert_eq!(back, start[..whole]);
    let mut rest = text.as_bytes()[9_999..10_000].to_vec();
    rest.extend_from_slice(" ok \u{e9}".as_bytes());
    let at = rest.len();
    rest.extend_from_slice(b"\xed\xa0\x80 never echoed");
    let f = masked(true, OP_CONT, &rest);
    let cut = f.len() - rest.len() + at + 2; // inside the surrogate
    ws.send(&f[..cut]);
    ws.send(&f[cut..]);
    let frames = ws.frames_to_eof(4);
    assert_eq!(
        frames.iter().map(|f| f.opcode).collect::<Vec<_>>(),
        [OP_CLOSE],
        "only a close 1007, no echo of the invalid fragment: {frames:?}"
    );
    assert_eq!(frames[0].close_code(), Some(1007));
    server.assert_running();
}

/// `--max-message-size 64KiB`: a fragmented message whose fragments add up to more gets close 1009
/// as soon as the frame header that crosses the limit arrives (the fragments before were echoed).
fn raw_fragmented_message_over_the_limit_gets_1009(engine: Engine) {
    let mut server = Server::start(
        engine,
        &["--protocol", "websocket", "--max-message-size", "64KiB"],
    );
    let mut ws = RawWs::open(&server);
    let part = vec![7u8; 40_000];
    ws.send(&masked(false, OP_BINARY, &part));
    let first = ws.frame().expect("the first fragment's echo");
    assert_eq!(
        (first.fin, first.opcode, first.payload.len()),
        (false, OP_BINARY, 40_000)
    );
    ws.send(&masked(true, OP_CONT, &part));
    let frames = ws.frames_to_eof(4);
    assert_eq!(close_codes(&frames), [Some(1009)], "{frames:?}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    server.assert_running();
}

/// A client that never answers the server's pings (a raw socket) is pinged, then closed with a close
/// frame 1001, then EOF, with a short `--send-timeout` too (twice the idle timeout): the ping in
/// flight and the send clock do not change how it ends. When it ends:
/// [`raw_silent_client_is_closed_at_its_idle_timeout`].
fn raw_silent_client_gets_ping_then_1001(engine: Engine) {
    let idle = scaled(Duration::from_secs(2));
    let mut server = Server::start(
        engine,
        &[
            "--protocol",
            "websocket",
            "--idle-timeout",
            &flag_ms(idle),
            "--send-timeout",
            &flag_ms(idle * 2),
        ],
    );
    let mut ws = RawWs::open(&server);
    let frames = frames_timed(&mut ws, idle * 4 + secs(10));
    let ops: Vec<u8> = frames.iter().map(|(_, f)| f.opcode).collect();
    assert!(
        ops.len() >= 2 && ops[0] == OP_PING && *ops.last().expect("2") == OP_CLOSE,
        "expected ping(s), then a close frame, then EOF: {frames:?}"
    );
    assert!(
        ops[..ops.len() - 1].iter().all(|&o| o == OP_PING),
        "{frames:?}"
    );
    assert_eq!(frames.last().expect("close").1.close_code(), Some(1001));
    server.assert_running();
}

/// The same without `--send-timeout`: the close comes at the idle timeout (the ping at half of it;
/// nothing answered it), not at the 60 s send timeout (it once did: the ping's send left the
/// connection on the send clock).
fn raw_silent_client_is_closed_at_its_idle_timeout(engine: Engine) {
    let idle = scaled(Duration::from_secs(2));
    let mut server = Server::start(
        engine,
        &["--protocol", "websocket", "--idle-timeout", &flag_ms(idle)],
    );
    let mut ws = RawWs::open(&server);
    // Generous: the idle timeout plus a wheel tick plus 3 s (scaled) for a loaded machine; the
    // default send timeout (60 s) is far later.
    let frames = frames_timed(&mut ws, idle + secs(3));
    let ops: Vec<u8> = frames.iter().map(|(_, f)| f.opcode).collect();
    assert_eq!(
        ops,
        [OP_PING, OP_CLOSE],
        "one ping at half the idle timeout, a close 1001 at the idle timeout, then EOF: {frames:?}"
    );
    assert_eq!(frames[1].1.close_code(), Some(1001));
    assert!(
        frames[1].0 >= idle.mul_f64(0.9),
        "closed before the idle timeout: {frames:?}"
    );
    server.assert_running();
}

/// A client's close with a reason is answered with the same code and no reason, then EOF; a close
/// with no payload with an empty close.
fn raw_close_handshake(engine: Engine) {
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let mut ws = RawWs::open(&server);
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    ws.send(&masked(true, OP_CLOSE, &payload));
    let frames = ws.frames_to_eof(2);
    assert_eq!(close_codes(&frames), [Some(4001)], "{frames:?}");
    let mut ws = RawWs::open(&server);
    ws.send(&masked(true, OP_CLOSE, b""));
    let frames = ws.frames_to_eof(2);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0].opcode, frames[0].payload.len()),
        (OP_CLOSE, 0),
        "{frames:?}"
    );
    server.assert_running();
}

/// The server's byte counters equal what crossed the wire, exactly: 20 connections, each with its
/// handshake, messages of 0 B to 70 000 B (all three length encodings), a fragmented message, a ping
/// and a close handshake; `ringhold_bytes_received_total` must equal every byte the clients wrote and
/// `ringhold_bytes_sent_total` every byte they read, and the WebSocket counters (upgrades, frames,
/// messages, pings, pongs, closes) what the clients sent and got (frames out: every frame the clients
/// read; text is echoed in fragments of 4 KiB, so the two long text messages come back in 16 and 18).
fn metrics_bytes_match_the_wire(engine: Engine) {
    let server = Server::start(engine, &["--protocol", "websocket"]);
    let (mut written, mut read) = (0usize, 0usize);
    let (mut frames_in, mut frames_out) = (0u32, 0usize);
    for i in 0..20usize {
        let mut ws = RawWs::open(&server);
        for (k, n) in [0usize, 1, 125, 126, 1000, 65535, 65536, 70_000]
            .into_iter()
            .enumerate()
        {
            let payload: Vec<u8> = (0..n).map(|j| (i + k + j) as u8).collect();
            let op = if k % 2 == 0 { OP_BINARY } else { OP_TEXT };
            let payload = if op == OP_TEXT {
                payload.iter().map(|b| b'a' + b % 26).collect()
            } else {
                payload
            };
            ws.send(&masked(true, op, &payload));
            frames_in += 1;
            let (o, back, ctl) = ws.message();
            assert!(ctl.is_empty(), "{ctl:?}");
            assert_eq!((o, back == payload), (op, true), "message of {n} B");
        }
        ws.send(&masked(false, OP_TEXT, b"frag"));
        ws.send(&masked(true, OP_PING, b"in between"));
        ws.send(&masked(true, OP_CONT, b"mented"));
        frames_in += 3;
        let (_, back, ctl) = ws.message();
        assert_eq!(back, b"fragmented");
        // The pong comes between the two echoed fragments.
        assert_eq!(ctl.len(), 1, "{ctl:?}");
        assert_eq!(
            (ctl[0].opcode, ctl[0].payload.as_slice()),
            (OP_PONG, &b"in between"[..])
        );
        ws.send(&masked(true, OP_CLOSE, &1000u16.to_be_bytes()));
        frames_in += 1;
        let end = ws.frames_to_eof(2);
        assert_eq!(close_codes(&end), [Some(1000)]);
        assert_eq!(end[0].wire, 4);
        // 8 messages (text of 65 535 and 70 000 B in 16 and 18 fragments of at most 4096 B), 2
        // fragments, a pong, a close.
        assert_eq!(ws.frames_read, 6 + 16 + 18 + 2 + 1 + 1);
        written += ws.written;
        read += ws.read;
        frames_out += ws.frames_read;
    }
    eprintln!(
        "{}: {frames_in} client frames, {frames_out} server frames, {written} B written, {read} B read",
        engine.name()
    );
    let (w, r) = (written as f64, read as f64);
    server.expect_metric(
        "ringhold_bytes_received_total",
        &[],
        &format!("{written} (every byte the clients wrote)"),
        |v| v == w,
    );
    server.expect_metric(
        "ringhold_bytes_sent_total",
        &[],
        &format!("{read} (every byte the clients read)"),
        |v| v == r,
    );
    // Per connection: 12 frames in (8 messages, 2 fragments, a ping, a close) and 44 out (the long
    // text messages in fragments), 9 messages each way, one ping in and one pong out, one close each
    // way (code 1000).
    let n = 20.0;
    /// A counter's name, labels and expected value.
    type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let counters: [Expected<'_>; 13] = [
        ("ringhold_ws_upgrades_total", &[], n),
        (
            "ringhold_ws_frames_total",
            &[("direction", "in")],
            f64::from(frames_in),
        ),
        (
            "ringhold_ws_frames_total",
            &[("direction", "out")],
            frames_out as f64,
        ),
        (
            "ringhold_ws_messages_total",
            &[("direction", "in")],
            9.0 * n,
        ),
        (
            "ringhold_ws_messages_total",
            &[("direction", "out")],
            9.0 * n,
        ),
        ("ringhold_ws_pings_total", &[("direction", "in")], n),
        ("ringhold_ws_pings_total", &[("direction", "out")], 0.0),
        ("ringhold_ws_pongs_total", &[("direction", "out")], n),
        ("ringhold_ws_pongs_total", &[("direction", "in")], 0.0),
        ("ringhold_ws_closes_received_total", &[], n),
        ("ringhold_ws_closes_sent_total", &[("code", "1000")], n),
        ("ringhold_ws_closes_sent_total", &[], n),
        ("ringhold_ws_rejected_total", &[], 0.0),
    ];
    for (name, labels, want) in counters {
        server.expect_metric(name, labels, &format!("{want}"), |v| v == want);
    }
}

/// 10 × 1000 raw connections at once, each upgrading, echoing one message, then closing with 1000:
/// each must get back exactly the server's close frame `88 02 03 e8`, then EOF
/// (tests/clients/ws_close_storm.py).
fn close_storm_every_close_echo_intact(engine: Engine) {
    close_storm(engine, 10);
}

fn close_storm(engine: Engine, rounds: u32) {
    let Some(python) = ringhold_tests::tools::python3("close_storm_every_close_echo_intact") else {
        return;
    };
    let _g = serial();
    let mut server = Server::start(engine, &["--protocol", "websocket"]);
    let port = server.addr.port().to_string();
    let deadline = secs(20 + 5 * u64::from(rounds)).as_secs().to_string();
    let args = [
        "--port",
        &port,
        "--connections",
        "1000",
        "--rounds",
        &rounds.to_string(),
        "--deadline",
        &deadline,
    ];
    let mut c = Client::python(&python, "ws_close_storm.py", &args.map(String::from));
    let status = c.wait(secs(50 + 5 * u64::from(rounds)));
    let out = c.rest(secs(5));
    eprintln!("{}: close storm of {rounds} × 1000: {out:?}", engine.name());
    assert!(
        status.success(),
        "close storm ({status}): {out:?}; stderr:\n{}",
        c.stderr()
    );
    server.assert_running();
}

both_engines!(
    python_sizes,
    node_sizes,
    python_fragments,
    node_fragments,
    python_ping_pong,
    node_ping_pong,
    python_close_code_echoed,
    node_close_code_echoed,
    python_invalid_utf8_fails_with_1007,
    node_invalid_utf8_fails_with_1007,
    python_too_big_gets_1009,
    node_too_big_gets_1009,
    python_idle_client_answering_pings_stays,
    python_1000_connections,
    node_1000_connections,
    close_storm_every_close_echo_intact,
    non_upgrade_get_gets_426,
    unmasked_frame_gets_1002,
    raw_invalid_utf8_gets_1007,
    raw_invalid_utf8_is_not_echoed,
    raw_invalid_utf8_after_valid_text_across_reads,
    raw_fragmented_message_over_the_limit_gets_1009,
    raw_silent_client_gets_ping_then_1001,
    raw_silent_client_is_closed_at_its_idle_timeout,
    raw_close_handshake,
    metrics_bytes_match_the_wire,
);
