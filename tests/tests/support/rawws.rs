//! WebSocket by hand for tests/tests/websocket.rs: client frames (masked or not), a plain TCP
//! connection that upgrades and reads the server's frames one by one, counting every byte both ways.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringhold_tests::Server;

/// The RFC 6455 §1.3 example key and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub fn upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A client frame: FIN bit, opcode, payload, masked with `mask` (or sent unmasked: `None`).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some(rand::random()))
}

/// A frame the server sent.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// Its length on the wire (header included).
    pub wire: usize,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A plain TCP connection that speaks WebSocket by hand.
pub struct RawWs {
    pub s: TcpStream,
    /// Bytes written and read so far (handshake included).
    pub written: usize,
    pub read: usize,
    /// Frames read so far.
    pub frames_read: usize,
    /// A read timed out (only while [`frames_timed`] reads; elsewhere a timeout panics).
    timed_out: bool,
    tolerate_timeout: bool,
}

impl RawWs {
    pub fn connect(server: &Server) -> RawWs {
        let s = server.connect();
        s.set_nodelay(true).expect("nodelay");
        RawWs {
            s,
            written: 0,
            read: 0,
            frames_read: 0,
            timed_out: false,
            tolerate_timeout: false,
        }
    }

    /// Connects and completes the upgrade (checks 101 and the accept value).
    pub fn open(server: &Server) -> RawWs {
        let mut ws = RawWs::connect(server);
        ws.send(&upgrade_request(server.addr));
        let head = ws.read_head();
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "upgrade answered with {head:?}"
        );
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "no or a wrong Sec-WebSocket-Accept in {head:?}"
        );
        ws
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to ringhold");
        self.written += b.len();
    }

    pub fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return None,
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if self.tolerate_timeout
                        && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    self.timed_out = true;
                    return None;
                }
                Err(e) => panic!("read from ringhold: {e}"),
            }
        }
        self.read += n;
        Some(buf)
    }

    /// An HTTP response head, byte by byte up to its blank line (nothing after it is consumed).
    pub fn read_head(&mut self) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            match self.read_exact(1) {
                Some(b) => head.extend_from_slice(&b),
                None => panic!(
                    "EOF inside the response head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
            assert!(head.len() < 64 * 1024, "response head too long");
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// The next frame, or `None` at EOF (panics on EOF inside a frame, or on a masked server frame).
    pub fn frame(&mut self) -> Option<Frame> {
        let h = self.read_exact(2)?;
        assert_eq!(h[1] & 0x80, 0, "the server masked a frame: {h:?}");
        assert_eq!(h[0] & 0x70, 0, "the server set RSV bits: {h:?}");
        let mut wire = 2;
        let len = match h[1] & 0x7F {
            126 => {
                wire += 2;
                let b = self.read_exact(2).expect("EOF in a frame header");
                u64::from(u16::from_be_bytes([b[0], b[1]]))
            }
            127 => {
                wire += 8;
                let b = self.read_exact(8).expect("EOF in a frame header");
                u64::from_be_bytes(b.try_into().expect("8 bytes"))
            }
            n => u64::from(n),
        };
        let payload = self
            .read_exact(len as usize)
            .expect("EOF inside a frame's payload");
        self.frames_read += 1;
        Some(Frame {
            fin: h[0] & 0x80 != 0,
            opcode: h[0] & 0x0F,
            payload,
            wire: wire + len as usize,
        })
    }

    /// Frames until EOF (at most `max`).
    pub fn frames_to_eof(&mut self, max: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.frame() {
            out.push(f);
            assert!(out.len() <= max, "more than {max} frames: {out:?}");
        }
        out
    }

    /// Reads the echo of one data message (possibly fragmented; control frames in between are
    /// returned separately).
    pub fn message(&mut self) -> (u8, Vec<u8>, Vec<Frame>) {
        let mut opcode = None;
        let mut data = Vec::new();
        let mut control = Vec::new();
        loop {
            let f = self.frame().expect("EOF instead of an echo");
            if f.opcode >= 0x8 {
                control.push(f);
                continue;
            }
            match (opcode, f.opcode) {
                (None, OP_TEXT | OP_BINARY) => opcode = Some(f.opcode),
                (Some(_), OP_CONT) => {}
                (o, op) => panic!("frame with opcode {op} while the message is {o:?}"),
            }
            data.extend_from_slice(&f.payload);
            if f.fin {
                return (opcode.expect("set"), data, control);
            }
        }
    }
}

pub fn close_codes(frames: &[Frame]) -> Vec<Option<u16>> {
    frames
        .iter()
        .filter(|f| f.opcode == OP_CLOSE)
        .map(Frame::close_code)
        .collect()
}

/// Reads frames until EOF, noting when each arrived; panics (with the frames so far) when `limit`
/// passes first.
pub fn frames_timed(ws: &mut RawWs, limit: Duration) -> Vec<(Duration, Frame)> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    ws.tolerate_timeout = true;
    loop {
        let left = limit
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1));
        ws.s.set_read_timeout(Some(left)).expect("read timeout");
        match ws.frame() {
            Some(f) => out.push((t0.elapsed(), f)),
            None if ws.timed_out => {
                panic!("no EOF within {limit:?}; frames so far (time since the upgrade): {out:?}")
            }
            None => return out,
        }
        assert!(out.len() < 100, "{out:?}");
    }
}
