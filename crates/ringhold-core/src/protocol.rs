//! The protocol seam. The connection machine hands every received buffer to the connection's protocol,
//! which says what to send back through a [`Sink`] and what to do next with a [`Step`]. A protocol never
//! sees a socket, a clock or an engine: it is a sans-IO parser/encoder whose per-connection state is a
//! small `Copy` value kept inside `Conn` (no heap per connection).
//!
//! Output comes from three places, each a [`Sink`] call:
//! - [`Sink::input`]: bytes of the buffer being handed in, in place (echo; an HTTP request body; a
//!   WebSocket payload unmasked in place). No copy: the buffer stays held until those bytes are sent.
//! - [`Sink::bytes_static`]: static bytes owned by the program (a fixed body text, canned responses).
//! - [`Sink::generated`]: bytes the protocol just produced (an HTTP response head, a WebSocket frame
//!   header); the machine copies them into shard-owned memory.
//!
//! Segments are sent in the order they were given, whatever their source.
//!

/// Where a protocol's output goes. Implemented by the connection machine (and by test doubles).
pub trait Sink {
    /// Send `len` bytes at `off` of the input slice being handled, in place.
    fn input(&mut self, off: usize, len: usize);
    /// Send bytes that live for the whole program.
    fn bytes_static(&mut self, bytes: &'static [u8]);
    /// Send a copy of `bytes` (at most [`MAX_GENERATED`] bytes per call).
    fn generated(&mut self, bytes: &[u8]);
}

/// Most bytes one [`Sink::generated`] call may pass (a response head, a frame header).
pub const MAX_GENERATED: usize = 512;

use crate::http::{HttpConfig, HttpConn, HttpStats};
use crate::ws::{WsConfig, WsConn, WsStats};

/// What a protocol tells the machine after handling input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything handed in was consumed; read on.
    Continue,
    /// Bytes from `from` to the end of the input are an incomplete unit that can only be parsed whole
    /// (an HTTP request head or chunk-size line, a WebSocket handshake, close frame or text chunk):
    /// keep them and hand them in again, followed by what arrives next, as one slice (whose in-place
    /// output the machine then copies). The protocol bounds how much it asks to be kept (its own
    /// header limit, 4 KiB of text).
    Hold { from: usize },
    /// Send what was given, then close: shut down the write side and linger (the protocol already
    /// wrote its own error or close answer, if it has one). Input after this point is discarded.
    Close(Closing),
}

/// Why a protocol ends a connection (the `reason` of the close metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer asked for it (HTTP `Connection: close`, HTTP/1.0 without keep-alive, a WebSocket close
    /// handshake). A normal end.
    Done,
    /// The peer broke the protocol; the protocol answered with its error (HTTP 4xx/5xx, WebSocket close
    /// code 1002/1007/1009).
    Violation,
}

/// Per-shard context a protocol may read while handling input (never per connection).
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// Current `Date` header value, IMF-fixdate: the wall-clock second of the engine's loop turn that
    /// handed the input in ([`crate::Machine::set_wall_clock`]).
    pub date: &'a [u8; 29],
}

/// The protocols ringhold speaks (`--protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Raw TCP echo: every byte goes back, unchanged and in order.
    #[default]
    Echo,
    /// HTTP/1.1 keep-alive (the http-kit benchmark handler, [`crate::http`]).
    Http,
    /// RFC 6455 WebSocket echo ([`crate::ws`]).
    Websocket,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Echo, Protocol::Http, Protocol::Websocket];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Echo => "echo",
            Protocol::Http => "http",
            Protocol::Websocket => "websocket",
        }
    }

    /// The state a new connection starts with.
    pub fn start(self) -> ProtoState {
        match self {
            Protocol::Echo => ProtoState::Echo,
            Protocol::Http => ProtoState::Http(HttpConn::default()),
            Protocol::Websocket => ProtoState::Ws(WsConn::default()),
        }
    }
}

/// The protocols' configuration (per shard, read-only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtoConfig {
    pub http: HttpConfig,
    pub ws: WsConfig,
}

/// The protocols' counters (per shard, flushed with the shard's counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtoStats {
    pub http: HttpStats,
    pub ws: WsStats,
}

/// A connection's protocol state: a small `Copy` value inside `Conn`.
#[derive(Clone, Copy, Debug, Default)]
pub enum ProtoState {
    #[default]
    Echo,
    Http(HttpConn),
    Ws(WsConn),
}

impl ProtoState {
    /// Handles `input` (see [`Sink`] and [`Step`]).
    pub fn on_input(
        &mut self,
        cfg: &ProtoConfig,
        ctx: &Ctx<'_>,
        stats: &mut ProtoStats,
        input: &mut [u8],
        sink: &mut impl Sink,
    ) -> Step {
        match self {
            ProtoState::Echo => {
                sink.input(0, input.len());
                Step::Continue
            }
            ProtoState::Http(h) => h.on_input(&cfg.http, ctx, input, sink, &mut stats.http),
            ProtoState::Ws(w) => w.on_input(&cfg.ws, ctx, input, sink, &mut stats.ws),
        }
    }

    /// Whether the protocol can probe a quiet peer (a WebSocket ping), so that the idle clock asks
    /// [`ProtoState::on_quiet`] halfway through before it closes.
    pub fn probes(&self) -> bool {
        matches!(self, ProtoState::Ws(_))
    }

    /// The peer has been quiet for half the idle timeout: send a probe if the protocol has one.
    /// Returns whether it did.
    pub fn on_quiet(&mut self, stats: &mut ProtoStats, sink: &mut impl Sink) -> bool {
        match self {
            ProtoState::Echo | ProtoState::Http(_) => false,
            ProtoState::Ws(w) => w.on_quiet(sink, &mut stats.ws),
        }
    }

    /// The server closes for its own reason (idle timeout, drain): the protocol's goodbye, if it has
    /// one (a WebSocket close frame 1001), goes out before the FIN.
    pub fn on_server_close(&mut self, stats: &mut ProtoStats, sink: &mut impl Sink) {
        match self {
            ProtoState::Echo | ProtoState::Http(_) => {}
            ProtoState::Ws(w) => w.on_server_close(sink, &mut stats.ws),
        }
    }

    /// The peer sent FIN; everything it sent before was handed to `on_input`.
    pub fn on_peer_fin(
        &mut self,
        _cfg: &ProtoConfig,
        ctx: &Ctx<'_>,
        stats: &mut ProtoStats,
        sink: &mut impl Sink,
    ) -> Step {
        match self {
            ProtoState::Echo => Step::Continue,
            ProtoState::Http(h) => h.on_peer_fin(ctx, sink, &mut stats.http),
            ProtoState::Ws(w) => w.on_peer_fin(sink, &mut stats.ws),
        }
    }
}
