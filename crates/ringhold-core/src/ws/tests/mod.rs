//! In-memory tests of the WebSocket echo: a recording [`Sink`], a driver that applies [`Step`]s as
//! the connection machine does, a client frame encoder and an output decoder built on tungstenite's
//! frame header codec (written by others, so the output is checked independently).

mod client;
mod frames;
mod handshake;
mod split;

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;

use super::{WsConfig, WsConn, WsStats};
use crate::protocol::{Closing, Ctx, Sink, Step, MAX_GENERATED};

pub(crate) const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

/// The request of RFC 6455 §1.3 (plus the fields every client sends).
pub(crate) const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// Its answer.
pub(crate) const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// One output segment as the sink saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Input(usize, usize),
    Bytes(Vec<u8>),
}

/// Records every segment of one call; over budget once `budget` bytes were said in it.
#[derive(Default)]
pub(crate) struct Rec {
    pub segs: Vec<Seg>,
    pub budget: Option<usize>,
    pub said: usize,
}

impl Sink for Rec {
    fn input(&mut self, off: usize, len: usize) {
        assert!(len > 0, "empty input segment");
        self.segs.push(Seg::Input(off, len));
        self.said += len;
    }

    fn bytes_static(&mut self, bytes: &'static [u8]) {
        self.segs.push(Seg::Bytes(bytes.to_vec()));
        self.said += bytes.len();
    }

    fn generated(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= MAX_GENERATED);
        self.segs.push(Seg::Bytes(bytes.to_vec()));
        self.said += bytes.len();
    }

    fn over_budget(&self) -> bool {
        self.budget.is_some_and(|b| self.said >= b)
    }
}

/// Drives one [`WsConn`] the way the connection machine does: keeps held bytes and hands them in
/// again followed by the next ones, discards input after a close, collects the output bytes. With a
/// budget, a pause keeps the rest, queues later input behind it, and [`Driver::resume`] hands it
/// in again alone.
pub(crate) struct Driver {
    pub conn: WsConn,
    pub cfg: WsConfig,
    pub held: Vec<u8>,
    pub out: Vec<u8>,
    pub stats: WsStats,
    pub step: Step,
    /// Segments of the last call.
    pub segs: Vec<Seg>,
    /// Bytes one call may say before the protocol should pause (`None`: no budget).
    pub budget: Option<usize>,
    /// The last call paused: `held` is input not handled yet.
    pub paused: bool,
    pub pauses: usize,
}

impl Driver {
    pub fn new(cfg: WsConfig) -> Self {
        Driver {
            conn: WsConn::default(),
            cfg,
            held: Vec::new(),
            out: Vec::new(),
            stats: WsStats::default(),
            step: Step::Continue,
            segs: Vec::new(),
            budget: None,
            paused: false,
            pauses: 0,
        }
    }

    /// A connection past the handshake, output cleared.
    pub fn open() -> Self {
        Self::open_with(WsConfig::default())
    }

    pub fn open_with(cfg: WsConfig) -> Self {
        let mut d = Self::new(cfg);
        assert_eq!(d.feed(REQUEST), Step::Continue);
        assert_eq!(d.take(), RESPONSE);
        d
    }

    pub fn closed(&self) -> bool {
        matches!(self.step, Step::Close(_))
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        if self.closed() {
            return self.step;
        }
        if self.paused {
            // Read while paused: queued behind the held input, not handed in.
            self.held.extend_from_slice(bytes);
            return self.step;
        }
        self.call(bytes)
    }

    /// The paused input handed in again alone, until it is all handled or the protocol pauses
    /// again (`once`: one call only).
    pub fn resume(&mut self, once: bool) {
        while self.paused && !self.closed() {
            self.paused = false;
            self.call(&[]);
            if once {
                break;
            }
        }
    }

    fn call(&mut self, bytes: &[u8]) -> Step {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(bytes);
        let mut rec = Rec {
            budget: self.budget,
            ..Rec::default()
        };
        let ctx = Ctx { date: DATE };
        let step = self
            .conn
            .on_input(&self.cfg, &ctx, &mut buf, &mut rec, &mut self.stats);
        let keep_from = match step {
            Step::Hold { from } => {
                assert!(from <= buf.len());
                from
            }
            Step::Pause { from } => {
                assert!(self.budget.is_some(), "paused without a budget");
                assert!(
                    from > 0 && from < buf.len(),
                    "pause at {from} of {}",
                    buf.len()
                );
                assert!(!rec.segs.is_empty(), "paused without an answer");
                from
            }
            _ => buf.len(),
        };
        for seg in &rec.segs {
            match seg {
                Seg::Input(o, l) => {
                    assert!(
                        o + l <= keep_from,
                        "segment {o}+{l} past the kept bytes {keep_from}"
                    );
                    self.out.extend_from_slice(&buf[*o..o + l]);
                }
                Seg::Bytes(b) => self.out.extend_from_slice(b),
            }
        }
        match step {
            Step::Hold { from } => self.held = buf[from..].to_vec(),
            Step::Pause { from } => {
                self.held = buf[from..].to_vec();
                self.paused = true;
                self.pauses += 1;
            }
            _ => {}
        }
        self.segs = rec.segs;
        self.step = step;
        step
    }

    /// Feed `bytes` cut at `cuts` (sorted offsets).
    pub fn feed_split(&mut self, bytes: &[u8], cuts: &[usize]) -> Step {
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let c = c.clamp(last, bytes.len());
            self.feed(&bytes[last..c]);
            last = c;
        }
        self.step
    }

    /// The output so far, cleared.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn quiet(&mut self) -> bool {
        let mut rec = Rec::default();
        let sent = self.conn.on_quiet(&mut rec, &mut self.stats);
        self.append_bytes(rec);
        sent
    }

    pub fn server_close(&mut self) {
        let mut rec = Rec::default();
        self.conn.on_server_close(&mut rec, &mut self.stats);
        self.append_bytes(rec);
    }

    pub fn peer_fin(&mut self) -> Step {
        // The machine hands FIN in once the paused input is all handled.
        self.resume(false);
        let mut rec = Rec::default();
        let step = self.conn.on_peer_fin(&mut rec, &mut self.stats);
        self.append_bytes(rec);
        step
    }

    fn append_bytes(&mut self, rec: Rec) {
        for seg in rec.segs {
            match seg {
                Seg::Input(..) => panic!("input segment outside on_input"),
                Seg::Bytes(b) => self.out.extend_from_slice(&b),
            }
        }
    }
}

/// A client frame: masked with `mask`, FIN and opcode as given.
pub(crate) fn frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    frame_raw((if fin { 0x80 } else { 0 }) | op, payload, Some(mask))
}

/// A masked final text frame.
pub(crate) fn text(s: &[u8]) -> Vec<u8> {
    frame(true, 0x1, s, [0x37, 0xfa, 0x21, 0x3d])
}

/// A client frame with `b0` as given (RSV bits too) and the mask bit set when `mask` is given.
pub(crate) fn frame_raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![b0];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        v.push(mbit | n as u8);
    } else if n <= 0xFFFF {
        v.push(mbit | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(mbit | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            v.extend_from_slice(&m);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// A server frame as decoded from the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub fin: bool,
    pub op: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(fin: bool, op: u8, payload: &[u8]) -> Self {
        Frame {
            fin,
            op,
            payload: payload.to_vec(),
        }
    }

    /// A close frame with `code`.
    pub fn close(code: u16) -> Self {
        Frame::new(true, 0x8, &code.to_be_bytes())
    }
}

/// Decode server frames with tungstenite's header parser; every frame must be unmasked, without RSV
/// bits, and the output must end on a frame boundary.
pub(crate) fn decode(out: &[u8]) -> Vec<Frame> {
    let mut cur = Cursor::new(out);
    let mut frames = Vec::new();
    while (cur.position() as usize) < out.len() {
        let (h, len) = FrameHeader::parse(&mut cur)
            .expect("server frame header")
            .unwrap_or_else(|| panic!("output ends inside a frame header: {out:02x?}"));
        assert!(h.mask.is_none(), "server frames are not masked");
        assert!(!h.rsv1 && !h.rsv2 && !h.rsv3);
        let start = cur.position() as usize;
        let end = start + len as usize;
        assert!(end <= out.len(), "output ends inside a frame payload");
        frames.push(Frame {
            fin: h.is_final,
            op: u8::from(h.opcode),
            payload: out[start..end].to_vec(),
        });
        cur.set_position(end as u64);
    }
    frames
}

/// Decode the output of `d` (cleared).
pub(crate) fn frames_of(d: &mut Driver) -> Vec<Frame> {
    decode(&d.take())
}

pub(crate) const VIOLATION: Step = Step::Close(Closing::Violation);
pub(crate) const DONE: Step = Step::Close(Closing::Done);
