//! In-memory tests of the HTTP protocol: a recording [`Sink`] with an optional output budget, a driver
//! that does what the machine does with [`Step::Hold`] (hand the held bytes in again, followed by the
//! next ones) and [`Step::Pause`] (keep the rest, queue later input behind it, hand it in again alone
//! on [`Driver::resume`]), unit tests of every rule (`unit.rs`) and split-invariance property tests
//! (`split.rs`), with pauses at random points.

use super::*;
use crate::protocol::MAX_GENERATED;

mod split;
mod unit;

pub(super) const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

/// One output segment, as the sink was given it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Input(usize, usize),
    Static(&'static [u8]),
    Generated(Vec<u8>),
}

/// Records what the protocol sends; over budget once `budget` bytes were said in the call.
#[derive(Default)]
pub(super) struct RecSink {
    pub segs: Vec<Seg>,
    pub budget: Option<usize>,
    pub said: usize,
}

impl Sink for RecSink {
    fn input(&mut self, off: usize, len: usize) {
        assert!(len > 0, "empty input segment");
        self.segs.push(Seg::Input(off, len));
        self.said += len;
    }
    fn bytes_static(&mut self, bytes: &'static [u8]) {
        self.segs.push(Seg::Static(bytes));
        self.said += bytes.len();
    }
    fn generated(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= MAX_GENERATED,
            "generated {} bytes",
            bytes.len()
        );
        self.segs.push(Seg::Generated(bytes.to_vec()));
        self.said += bytes.len();
    }
    fn over_budget(&self) -> bool {
        self.budget.is_some_and(|b| self.said >= b)
    }
}

/// Drives one connection the way the machine does.
pub(super) struct Driver {
    pub cfg: HttpConfig,
    pub conn: HttpConn,
    pub stats: HttpStats,
    /// Bytes kept after a `Hold`.
    pub held: Vec<u8>,
    /// Everything sent, in order.
    pub out: Vec<u8>,
    /// Output bytes per call (for streaming checks).
    pub per_call: Vec<Vec<u8>>,
    /// Set once the protocol said `Close`: later input is discarded, as the machine does.
    pub closed: Option<Step>,
    pub last: Step,
    /// Bytes one call may say before the protocol should pause (`None`: no budget).
    pub budget: Option<usize>,
    /// The last call paused: `held` is input not handled yet, and later input queues behind it.
    pub paused: bool,
    /// Pauses so far.
    pub pauses: usize,
}

impl Driver {
    pub fn new(cfg: HttpConfig) -> Driver {
        Driver {
            cfg,
            conn: HttpConn::default(),
            stats: HttpStats::default(),
            held: Vec::new(),
            out: Vec::new(),
            per_call: Vec::new(),
            closed: None,
            last: Step::Continue,
            budget: None,
            paused: false,
            pauses: 0,
        }
    }

    pub fn feed(&mut self, piece: &[u8]) -> Step {
        if let Some(step) = self.closed {
            return step;
        }
        if self.paused {
            // Read while paused (a receive in flight): queued behind the held input, not handed in.
            self.held.extend_from_slice(piece);
            return self.last;
        }
        self.call(piece)
    }

    /// The paused input handed in again alone, until it is all handled or the protocol pauses
    /// again (`once`: one call only).
    pub fn resume(&mut self, once: bool) {
        while self.paused && self.closed.is_none() {
            self.paused = false;
            self.call(&[]);
            if once {
                break;
            }
        }
    }

    fn call(&mut self, piece: &[u8]) -> Step {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(piece);
        let mut sink = RecSink {
            budget: self.budget,
            ..RecSink::default()
        };
        let ctx = Ctx { date: DATE };
        let step = self
            .conn
            .on_input(&self.cfg, &ctx, &mut buf, &mut sink, &mut self.stats);
        let mut call = Vec::new();
        for seg in sink.segs {
            match seg {
                Seg::Input(off, len) => call.extend_from_slice(&buf[off..off + len]),
                Seg::Static(b) => call.extend_from_slice(b),
                Seg::Generated(b) => call.extend_from_slice(&b),
            }
        }
        self.out.extend_from_slice(&call);
        self.per_call.push(call);
        match step {
            Step::Hold { from } => {
                assert!(from < buf.len(), "hold from {from} of {}", buf.len());
                self.held = buf[from..].to_vec();
                assert!(self.held.len() <= self.cfg.max_header_bytes);
            }
            Step::Pause { from } => {
                assert!(self.budget.is_some(), "paused without a budget");
                assert!(
                    from > 0 && from < buf.len(),
                    "pause at {from} of {}",
                    buf.len()
                );
                assert!(
                    self.per_call.last().is_some_and(|c| !c.is_empty()),
                    "paused without an answer"
                );
                assert!(self.conn.is_idle(), "paused inside a request");
                self.held = buf[from..].to_vec();
                self.paused = true;
                self.pauses += 1;
            }
            Step::Close(_) => self.closed = Some(step),
            Step::Continue => {}
        }
        self.last = step;
        step
    }

    pub fn fin(&mut self) -> Step {
        // The machine hands FIN in once the paused input is all handled.
        self.resume(false);
        if let Some(step) = self.closed {
            return step;
        }
        let mut sink = RecSink::default();
        let ctx = Ctx { date: DATE };
        let step = self.conn.on_peer_fin(&ctx, &mut sink, &mut self.stats);
        for seg in sink.segs {
            match seg {
                Seg::Input(..) => panic!("input segment on FIN"),
                Seg::Static(b) => self.out.extend_from_slice(b),
                Seg::Generated(b) => self.out.extend_from_slice(&b),
            }
        }
        self.closed = Some(step);
        self.last = step;
        step
    }
}

/// Runs `input` through a fresh connection in one piece.
pub(super) fn run(input: &[u8]) -> Driver {
    run_with(HttpConfig::default(), input)
}

pub(super) fn run_with(cfg: HttpConfig, input: &[u8]) -> Driver {
    let mut d = Driver::new(cfg);
    d.feed(input);
    d
}

/// The expected 200 head.
pub(super) fn ok_head(framing: &str, conn: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: ringhold\r\nDate: {}\r\nContent-Type: text/plain\r\n{framing}\r\n{conn}\r\n",
        std::str::from_utf8(DATE).unwrap()
    )
    .into_bytes()
}

pub(super) fn cl(n: usize) -> String {
    format!("Content-Length: {n}")
}

pub(super) const CHUNKED: &str = "Transfer-Encoding: chunked";
pub(super) const CLOSE: &str = "Connection: close\r\n";
pub(super) const KEEP: &str = "Connection: keep-alive\r\n";

/// The expected answer to `GET /?length=n`.
pub(super) fn get_answer(n: usize, conn: &str) -> Vec<u8> {
    let mut v = ok_head(&cl(n), conn);
    v.extend_from_slice(&BODY_TEXT[..n]);
    v
}

/// The expected error answer with `status`.
pub(super) fn error_answer(status: u16) -> Vec<u8> {
    let e = HttpError::ALL
        .into_iter()
        .find(|e| e.status() == status)
        .unwrap();
    let (line, body) = response::error_parts(e);
    let mut v = line.to_vec();
    v.extend_from_slice(
        format!(
            "Server: ringhold\r\nDate: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            std::str::from_utf8(DATE).unwrap(),
            body.len()
        )
        .as_bytes(),
    );
    v.extend_from_slice(body);
    v
}

/// Shows bytes readably in assertion messages.
pub(super) fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
