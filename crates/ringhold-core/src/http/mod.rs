//! `--protocol http`: a sans-IO HTTP/1.1 server protocol with the http-kit benchmark handler.
//!
//! - `GET`/`HEAD` on any path: 200 `text/plain` with the first N bytes of [`BODY_TEXT`], N from the
//!   `?length=N` query parameter (1 ≤ N ≤ [`HttpConfig::length_cap`]; default
//!   [`DEFAULT_LENGTH`]), sent as static bytes (no copy). HEAD gets the same head and no body.
//! - `POST`/`PUT`: the request body echoed, streamed as it arrives (never buffered whole): with
//!   `Content-Length` the response has the same `Content-Length`; a chunked request gets a
//!   `Transfer-Encoding: chunked` response whose body is the request's chunked body verbatim
//!   (size lines, extensions and trailers included).
//! - A request with a chunked body is answered once its first chunk-size line has arrived and parsed
//!   (held until then, like a head, up to [`HttpConfig::max_header_bytes`]): a malformed or oversized
//!   first line gets its 400 or 413 like any bad request. `Expect: 100-continue` is answered at once.
//! - Persistent connections and pipelining: HTTP/1.1 keeps the connection unless `Connection: close`;
//!   HTTP/1.0 closes unless `Connection: keep-alive`, and then the response says so.
//!   `Expect: 100-continue` gets `100 Continue` before the final response.
//! - Errors get their status with `Connection: close`, then the connection closes
//!   ([`Closing::Violation`]): see [`HttpError`]. A chunked body that breaks its framing or the body
//!   limit after the 200 head went out cannot get a status any more: the echo stops before the unit
//!   that broke (a chunk-size line, or the last chunk with its trailers, is only echoed once it is
//!   complete and valid), so it never has its last chunk and every client sees an incomplete
//!   message; then the connection closes as after any error (the write side shut down after what was
//!   sent, input read and dropped until the peer's FIN: no RST).
//!
//! Pipelining is bounded by the connection's output budget ([`Sink::over_budget`]): once the answers
//! given in one call used it up, the call stops before the next request head and returns
//! [`Step::Pause`] with the rest of the input, which the machine hands in again once those answers
//! were sent. A call always answers at least one request before it pauses (a pause only ever comes
//! between requests, so the connection's state is `Phase::Head`, nothing held), and the answers are
//! byte for byte those of an unbounded run.
//!
//! Request heads are parsed by httparse, whole: a head split across reads is held by the machine
//! ([`Step::Hold`]) and handed in again, longer, up to [`HttpConfig::max_header_bytes`]. Chunked
//! framing is held the same way, a unit at a time (`chunked.rs`); bodies' data streams as it comes.
//! The per-connection state is [`HttpConn`], 16 bytes, `Copy`, no heap.

mod chunked;
mod head;
mod response;
mod stats;

#[cfg(test)]
mod tests;

pub use head::{DEFAULT_LENGTH, MAX_HEADERS};
pub use response::{format_date, format_unix_secs, BODY_TEXT, BODY_TEXT_LEN};
pub use stats::{HttpError, HttpStats, Method, STATUS_CLASS_LABELS};

use crate::protocol::{Closing, Ctx, Sink, Step};
use chunked::{Scan, Unit};
use head::{Body, Parsed, Request};
use response::{ConnHeader, Framing, Head};

/// Limits of the HTTP protocol (per server, shared by every connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Most bytes of a request head (request line and headers, up to and including the empty line).
    /// Longer: 431. Default 8 KiB (nginx's `large_client_header_buffers` line size, Node's default).
    pub max_header_bytes: usize,
    /// Most bytes of a request body: its `Content-Length` (more: 413, before anything is echoed), or
    /// for a chunked request the whole chunked body as sent (chunk data plus framing and trailers; more:
    /// the connection is cut, see the module doc). Default 1 MiB (nginx's `client_max_body_size`). The
    /// echo streams, so the limit bounds the work per request, not memory.
    pub max_body_bytes: u64,
    /// Largest `?length=N` answered (more: 400); at most [`BODY_TEXT_LEN`] (64 KiB), the default.
    pub max_length: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            max_length: BODY_TEXT_LEN as u32,
        }
    }
}

/// Where a connection is in its request stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    #[default]
    Head,
    /// In a `Content-Length` body; `left` bytes to come.
    Body,
    /// A chunked request's head is in, its answer waits for the first chunk-size line: `left` holds
    /// the request's method, `chunk` its `?length`.
    Pending,
    // In a chunked body (see chunked.rs): the state names say which byte comes next.
    ChunkSize0,
    ChunkSize,
    ChunkWs,
    ChunkExt,
    ChunkSizeLf,
    ChunkData,
    ChunkDataCr,
    ChunkDataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    /// The protocol said `Close`; nothing more is handled.
    Closed,
}

/// Bits of [`HttpConn::flags`].
mod flag {
    /// The body being read is echoed (POST/PUT); otherwise it is dropped (a GET with a body).
    pub const ECHO: u8 = 1 << 0;
    /// Close once the current request is answered.
    pub const CLOSE_AFTER: u8 = 1 << 1;
    /// The last call returned `Hold`: part of a head is kept by the machine.
    pub const HELD: u8 = 1 << 2;
    /// Closed with `Closing::Violation` (else `Done`).
    pub const VIOLATION: u8 = 1 << 3;
    /// The answer says `Connection: keep-alive` (an HTTP/1.0 client asked for it).
    pub const KEEP_ALIVE: u8 = 1 << 4;
}

/// One connection's HTTP state: a few integers, kept inside the machine's `Conn`.
#[derive(Clone, Copy, Default, Debug)]
pub struct HttpConn {
    /// `Content-Length` body: bytes still to come. Chunked body: bytes still allowed (the budget).
    left: u64,
    /// Chunked body: the chunk size being read, then the bytes of its data still to come.
    chunk: u32,
    phase: Phase,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<HttpConn>() <= 16);

impl HttpConn {
    /// Handles received bytes `input`: answers every request they complete, in order, through `sink`,
    /// and says what to do next. Call it as bytes arrive, split at any byte; after [`Step::Hold`] hand
    /// in the held bytes followed by the next ones. Adds what happened to `stats`. Never panics.
    pub fn on_input(
        &mut self,
        cfg: &HttpConfig,
        ctx: &Ctx<'_>,
        input: &mut [u8],
        sink: &mut impl Sink,
        stats: &mut HttpStats,
    ) -> Step {
        self.flags &= !flag::HELD;
        let mut pos = 0;
        // A request was answered in this call: past the output budget, the next one waits.
        let mut answered = false;
        loop {
            match self.phase {
                Phase::Closed => return Step::Close(self.closing()),
                Phase::Head => {
                    // Empty lines before a request are skipped (RFC 9112 2.2).
                    while let [b'\r', b'\n', ..] | [b'\n', ..] = &input[pos..] {
                        pos += if input[pos] == b'\r' { 2 } else { 1 };
                    }
                    if pos == input.len() {
                        return Step::Continue;
                    }
                    if answered && sink.over_budget() {
                        return Step::Pause { from: pos };
                    }
                    match head::parse(cfg, &input[pos..]) {
                        Parsed::Partial => {
                            self.flags |= flag::HELD;
                            return Step::Hold { from: pos };
                        }
                        Parsed::Fail(method, e) => return self.fail(ctx, sink, stats, method, e),
                        Parsed::Done(req, len) => {
                            pos += len;
                            answered = true;
                            if let Some(step) = self.respond(ctx, sink, stats, &req) {
                                return step;
                            }
                        }
                    }
                }
                Phase::Body => {
                    let n = self.left.min((input.len() - pos) as u64) as usize;
                    if n > 0 && self.flags & flag::ECHO != 0 {
                        sink.input(pos, n);
                    }
                    pos += n;
                    self.left -= n as u64;
                    if self.left > 0 {
                        return Step::Continue;
                    }
                    if let Some(step) = self.end_request() {
                        return step;
                    }
                }
                Phase::Pending | Phase::ChunkSize0 => {
                    // Framing goes through a unit at a time, whole (chunked.rs).
                    let pending = self.phase == Phase::Pending;
                    if pos == input.len() {
                        return Step::Continue;
                    }
                    let budget = if pending {
                        cfg.max_body_bytes
                    } else {
                        self.left
                    };
                    match chunked::probe(budget, cfg.max_header_bytes, &input[pos..]) {
                        Unit::Partial => {
                            self.flags |= flag::HELD;
                            return Step::Hold { from: pos };
                        }
                        Unit::Error(e) if pending => {
                            let method = self.pending_method();
                            return self.fail(ctx, sink, stats, method, e);
                        }
                        Unit::Error(e) => {
                            // The 200 head is out: the echo ends before this unit, without its last
                            // chunk, and the connection closes.
                            stats.error(e);
                            return self.close(Closing::Violation);
                        }
                        Unit::Complete { len, last, after } => {
                            if pending {
                                if let Some(step) = self.answer_chunked(ctx, sink, stats) {
                                    return step;
                                }
                            }
                            if self.flags & flag::ECHO != 0 {
                                sink.input(pos, len);
                            }
                            pos += len;
                            self.left = after.left;
                            self.chunk = after.chunk;
                            self.phase = after.phase;
                            if last {
                                if let Some(step) = self.end_request() {
                                    return step;
                                }
                            }
                        }
                    }
                }
                _ => {
                    // Chunk data and the CRLF after it, up to the next size line.
                    let (n, scan) = self.scan_chunked(&input[pos..]);
                    if n > 0 && self.flags & flag::ECHO != 0 {
                        sink.input(pos, n);
                    }
                    pos += n;
                    match scan {
                        Scan::More => return Step::Continue,
                        Scan::Boundary => {}
                        Scan::Done => {
                            if let Some(step) = self.end_request() {
                                return step;
                            }
                        }
                        Scan::Error(e) => {
                            stats.error(e);
                            return self.close(Closing::Violation);
                        }
                    }
                }
            }
        }
    }

    /// The peer sent FIN. Between requests: close ([`Closing::Done`]). In the middle of a head, or
    /// of a chunked request not answered yet: 400 and close; in the middle of a body: close
    /// ([`Closing::Violation`] for all three).
    pub fn on_peer_fin(
        &mut self,
        ctx: &Ctx<'_>,
        sink: &mut impl Sink,
        stats: &mut HttpStats,
    ) -> Step {
        match self.phase {
            Phase::Closed => Step::Close(self.closing()),
            Phase::Head if self.flags & flag::HELD == 0 => self.close(Closing::Done),
            Phase::Head => {
                stats.truncated += 1;
                self.fail(ctx, sink, stats, Method::Other, HttpError::BadRequest)
            }
            Phase::Pending => {
                stats.truncated += 1;
                let method = self.pending_method();
                self.fail(ctx, sink, stats, method, HttpError::BadRequest)
            }
            _ => {
                stats.truncated += 1;
                self.close(Closing::Violation)
            }
        }
    }

    /// The connection is between requests (nothing of a request received). For the machine's idle
    /// and drain decisions.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Head && self.flags & flag::HELD == 0
    }

    /// Answers a complete request head. `Some(step)` when the call must end with `step`.
    fn respond(
        &mut self,
        ctx: &Ctx<'_>,
        sink: &mut impl Sink,
        stats: &mut HttpStats,
        req: &Request,
    ) -> Option<Step> {
        if req.expect_continue {
            sink.bytes_static(response::CONTINUE);
            stats.continues += 1;
        }
        let echo = matches!(req.method, Method::Post | Method::Put);
        self.flags = 0;
        if req.close {
            self.flags |= flag::CLOSE_AFTER;
        } else if !req.http11 {
            self.flags |= flag::KEEP_ALIVE;
        }
        if echo {
            self.flags |= flag::ECHO;
        }
        let length = match (echo, req.body) {
            (_, Body::Chunked) => {
                // Answered once the first chunk-size line parsed (a malformed one gets its 400).
                self.phase = Phase::Pending;
                self.left = req.method as u64;
                self.chunk = req.length;
                return None;
            }
            (false, _) => u64::from(req.length),
            (true, Body::None) => 0,
            (true, Body::Length(n)) => n,
        };
        self.send_ok(
            ctx,
            sink,
            stats,
            req.method,
            req.length,
            Framing::Length(length),
        );
        if !echo && req.close {
            // A body nobody echoes need not be read before closing.
            return Some(self.close(Closing::Done));
        }
        match req.body {
            Body::Length(n) => {
                self.phase = Phase::Body;
                self.left = n;
                None
            }
            Body::None | Body::Chunked => self.end_request(),
        }
    }

    /// The first chunk-size line of a pending chunked request parsed: its answer goes out, and the
    /// chunked body begins (the caller sets the scanner's state). `Some(step)` when the call must end.
    fn answer_chunked(
        &mut self,
        ctx: &Ctx<'_>,
        sink: &mut impl Sink,
        stats: &mut HttpStats,
    ) -> Option<Step> {
        let method = self.pending_method();
        let length = self.chunk;
        let echo = self.flags & flag::ECHO != 0;
        let framing = if echo {
            Framing::Chunked
        } else {
            Framing::Length(u64::from(length))
        };
        self.send_ok(ctx, sink, stats, method, length, framing);
        if !echo && self.flags & flag::CLOSE_AFTER != 0 {
            return Some(self.close(Closing::Done));
        }
        None
    }

    /// The 200 answer's head (and a GET's body).
    fn send_ok(
        &self,
        ctx: &Ctx<'_>,
        sink: &mut impl Sink,
        stats: &mut HttpStats,
        method: Method,
        length: u32,
        framing: Framing,
    ) {
        let conn = if self.flags & flag::CLOSE_AFTER != 0 {
            ConnHeader::Close
        } else if self.flags & flag::KEEP_ALIVE != 0 {
            ConnHeader::KeepAlive
        } else {
            ConnHeader::None
        };
        sink.generated(Head::new(response::OK, ctx.date, framing, conn).bytes());
        if method == Method::Get {
            sink.bytes_static(&BODY_TEXT[..length as usize]);
        }
        stats.response(method, 200);
    }

    /// The method of a [`Phase::Pending`] request.
    fn pending_method(&self) -> Method {
        Method::ALL
            .get(self.left as usize)
            .copied()
            .unwrap_or(Method::Other)
    }

    /// The current request is complete: on to the next one, or close.
    fn end_request(&mut self) -> Option<Step> {
        if self.flags & flag::CLOSE_AFTER != 0 {
            return Some(self.close(Closing::Done));
        }
        *self = HttpConn::default();
        None
    }

    /// Answers with error `e` and closes.
    fn fail(
        &mut self,
        ctx: &Ctx<'_>,
        sink: &mut impl Sink,
        stats: &mut HttpStats,
        method: Method,
        e: HttpError,
    ) -> Step {
        let (status_line, body) = response::error_parts(e);
        let head = Head::new(
            status_line,
            ctx.date,
            Framing::Length(body.len() as u64),
            ConnHeader::Close,
        );
        sink.generated(head.bytes());
        if method != Method::Head {
            sink.bytes_static(body);
        }
        stats.response(method, e.status());
        stats.error(e);
        self.close(Closing::Violation)
    }

    fn close(&mut self, why: Closing) -> Step {
        self.phase = Phase::Closed;
        self.flags = if why == Closing::Violation {
            flag::VIOLATION
        } else {
            0
        };
        Step::Close(why)
    }

    fn closing(&self) -> Closing {
        if self.flags & flag::VIOLATION != 0 {
            Closing::Violation
        } else {
            Closing::Done
        }
    }
}
