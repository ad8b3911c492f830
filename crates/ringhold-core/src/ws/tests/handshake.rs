//! The opening handshake: 101, 400, 426, 431, held heads.

use super::*;

fn response_of(req: &[u8]) -> (Vec<u8>, Step, WsStats) {
    let mut d = Driver::new(WsConfig::default());
    let step = d.feed(req);
    (d.take(), step, d.stats)
}

fn status_of(req: &[u8]) -> u16 {
    let (out, step, _) = response_of(req);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    if code == 101 {
        assert_eq!(step, Step::Continue);
    } else {
        assert_eq!(step, VIOLATION, "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.contains(std::str::from_utf8(DATE).unwrap()), "{text}");
    }
    code
}

/// A request built from the minimal valid one with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> Vec<u8> {
    let base = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert!(base.contains(from), "{from}");
    base.replacen(from, to, 1).into_bytes()
}

#[test]
fn upgrade_answers_101_with_the_accept_key_and_no_extension_or_subprotocol() {
    let (out, step, stats) = response_of(REQUEST);
    assert_eq!(out, RESPONSE);
    assert_eq!(step, Step::Continue);
    assert_eq!(stats.upgrades, 1);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.to_ascii_lowercase().contains("extensions"));
    assert!(!text.to_ascii_lowercase().contains("protocol:"));
    assert!(Driver::open().conn.is_open());
}

#[test]
fn header_tokens_and_names_are_case_insensitive_lists() {
    let req = b"GET /x?y=1 HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nsec-websocket-version: 13\r\n\r\n";
    let (out, step, _) = response_of(req);
    assert_eq!(out, RESPONSE);
    assert_eq!(step, Step::Continue);
    // Connection split over two fields.
    let req = edited(
        "Connection: Upgrade\r\n",
        "Connection: keep-alive\r\nConnection: upgrade\r\n",
    );
    assert_eq!(status_of(&req), 101);
}

#[test]
fn a_head_split_anywhere_is_held_then_answered_once() {
    for cut in 1..REQUEST.len() {
        let mut d = Driver::new(WsConfig::default());
        assert_eq!(d.feed(&REQUEST[..cut]), Step::Hold { from: 0 });
        assert!(d.out.is_empty());
        assert_eq!(d.feed(&REQUEST[cut..]), Step::Continue);
        assert_eq!(d.take(), RESPONSE, "cut at {cut}");
    }
}

#[test]
fn frames_right_after_the_head_are_echoed() {
    let mut input = REQUEST.to_vec();
    input.extend(text(b"hello"));
    input.extend(text(b"again"));
    let mut d = Driver::new(WsConfig::default());
    assert_eq!(d.feed(&input), Step::Continue);
    let out = d.take();
    assert_eq!(&out[..RESPONSE.len()], RESPONSE);
    assert_eq!(
        decode(&out[RESPONSE.len()..]),
        vec![Frame::new(true, 1, b"hello"), Frame::new(true, 1, b"again")]
    );
}

#[test]
fn a_plain_request_gets_426_with_the_version() {
    let (out, _, stats) = response_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    assert!(text.contains("\r\nUpgrade: websocket\r\n"));
    assert!(text.ends_with("(RFC 6455).\n"));
    assert_eq!(stats.rejected_426, 1);
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 426);
    assert_eq!(status_of(b"POST /form HTTP/1.0\r\n\r\n"), 426);
    // HEAD: the same head, no body.
    let (out, _, _) = response_of(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("Content-Length: 65\r\n\r\n"));
}

#[test]
fn another_websocket_version_gets_426() {
    let req = edited("Version: 13", "Version: 8");
    let (out, _, _) = response_of(&req);
    assert!(out.starts_with(b"HTTP/1.1 426 "));
    assert_eq!(status_of(&req), 426);
}

#[test]
fn bad_upgrades_get_400() {
    let cases: Vec<Vec<u8>> = vec![
        edited("GET", "POST"),
        edited("HTTP/1.1", "HTTP/1.0"),
        edited("Connection: Upgrade\r\n", ""),
        edited("Connection: Upgrade", "Connection: keep-alive"),
        edited("Host: h\r\n", ""),
        edited("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        edited("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j"), // 12 bytes
        edited("dGhlIHNhbXBsZSBub25jZQ==", "not base64 at all!!!!!!!"),
        edited(
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
        edited("Sec-WebSocket-Version: 13\r\n", ""),
        edited("Host: h\r\n", "Host: h\r\nContent-Length: 5\r\n"),
        edited("Host: h\r\n", "Host: h\r\nTransfer-Encoding: chunked\r\n"),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // TLS ClientHello
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
    ];
    for req in cases {
        let (_, _, stats) = response_of(&req);
        assert_eq!(status_of(&req), 400, "{}", String::from_utf8_lossy(&req));
        assert_eq!(stats.rejected_400, 1);
    }
    // Content-Length: 0 is no body.
    assert_eq!(
        status_of(&edited("Host: h\r\n", "Host: h\r\nContent-Length: 0\r\n")),
        101
    );
}

#[test]
fn a_head_over_the_limit_gets_431_however_it_arrives() {
    let cfg = WsConfig {
        max_header_bytes: REQUEST.len(),
        ..WsConfig::default()
    };
    // Exactly at the limit: fine.
    let mut d = Driver::new(cfg);
    assert_eq!(d.feed(REQUEST), Step::Continue);
    // One byte over, whole or split.
    let long = edited("Host: h", "Host: hh");
    let cfg = WsConfig {
        max_header_bytes: long.len() - 1,
        ..WsConfig::default()
    };
    for cut in [0, 1, 40, long.len() - 2, long.len() - 1] {
        let mut d = Driver::new(cfg);
        d.feed_split(&long, &[cut]);
        let out = d.take();
        assert!(out.starts_with(b"HTTP/1.1 431 "), "cut {cut}");
        assert_eq!(d.step, VIOLATION);
        assert_eq!(d.stats.rejected_431, 1);
    }
    // Too many header fields.
    let many = edited("Host: h\r\n", &"X-A: b\r\n".repeat(70));
    assert_eq!(status_of(&many), 431);
}

#[test]
fn fin_during_a_held_head_is_a_violation_and_before_any_byte_is_not() {
    let mut d = Driver::new(WsConfig::default());
    assert_eq!(d.peer_fin(), DONE);
    let mut d = Driver::new(WsConfig::default());
    d.feed(&REQUEST[..10]);
    assert_eq!(d.peer_fin(), VIOLATION);
    assert!(d.take().is_empty());
}
