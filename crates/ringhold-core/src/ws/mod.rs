//! WebSocket (RFC 6455) echo, sans-IO: the HTTP/1.1 upgrade handshake, then every message echoed
//! back, streamed frame by frame. The connection machine hands received bytes to
//! [`WsConn::on_input`] and carries out what comes back through the [`Sink`] and the [`Step`].
//!
//! What it must not do: buffer a message, allocate, panic on any input, or keep more than the 20
//! bytes of [`WsConn`] per connection.
//!
//! # Handshake
//! A request head is parsed whole with httparse; a head split across inputs is kept by the machine
//! ([`Step::Hold`]) up to [`WsConfig::max_header_bytes`] (more → `431`). A valid upgrade
//! (`GET`, HTTP/1.1, `Host`, `Upgrade: websocket`, `Connection: upgrade` as tokens in any case,
//! `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key` of 16 bytes in base64, no body) gets `101` with
//! `Sec-WebSocket-Accept`. No extension and no subprotocol is ever answered (permessage-deflate is
//! declined by not answering it, as RFC 6455 §9.1 allows). A request without `Upgrade: websocket`,
//! or with another `Sec-WebSocket-Version`, gets `426` with `Sec-WebSocket-Version: 13`; any other bad
//! handshake gets `400`. Every refusal closes (`Closing::Violation`). Bytes after the head in the same
//! input are frames.
//!
//! # Frames: a streamed echo
//! A frame header may be split at any byte across inputs: it is decoded byte by byte into the state.
//! Payload bytes are unmasked in place and sent back with a server header (unmasked, ≤ 10 bytes);
//! when the client's header lies whole in the current input, the echo's header is written in place
//! over the client's mask bytes, so header and payload leave as one segment. No message is ever held
//! whole, so memory stays bounded whatever the message size. Ping → pong with the same payload
//! (streamed like binary); pong → nothing (the machine counts it as activity). Control frames may
//! come between the frames of a fragmented message.
//!
//! - Binary: the echo's header (same FIN and opcode, same length) is sent as soon as the client's
//!   header is complete, then the payload as it arrives ([`Sink::input`]), frame by frame: the echo
//!   has the client's framing.
//! - Text: the server must never send a text frame that is not UTF-8 (RFC 6455 §5.6, §8.1), and an
//!   echo header, once sent, promises its whole length, so no byte is echoed before it is checked.
//!   A text frame is cut into chunks of at most [`TEXT_CHUNK`] (4 KiB) payload bytes, at fixed
//!   offsets from the frame's start; a chunk is held ([`Step::Hold`], at most 4 KiB − 1 bytes) until
//!   it is all in the input, then unmasked, checked with simdutf8, and echoed as a frame of its own:
//!   the first with the client frame's opcode, the others continuations, FIN on the last chunk of a
//!   final frame. An echo frame ends on a character boundary: the ≤ 3 bytes of a character the chunk
//!   (or the client's frame) cuts are kept in [`WsConn`] and sent at the start of the next echo
//!   frame of the message. So every echo frame is UTF-8 on its own, and the client has read a prefix
//!   of a valid message whenever the check fails. What a client sees: a text frame up to 4 KiB
//!   comes back with its framing (bytes of a character cut by the client's fragments move to the
//!   next fragment); a longer one comes back as fragments of 4 KiB; the messages are the same. The
//!   price: a chunk that straddles two reads is copied by the machine (held bytes are handed in
//!   again with the next read), where binary goes out from the receive buffer.
//!
//! A close frame is the one frame that is held whole (≤ 125 bytes, through [`Step::Hold`]): its code
//! and reason are checked before answering. A valid close is answered with the same code (reason not
//! echoed; an empty close with an empty close), then [`Closing::Done`].
//!
//! # Errors (each sends a close frame with its code, then [`Closing::Violation`])
//! - `1002`: an unmasked client frame, RSV bits, an unknown opcode, a fragmented or > 125 B control
//!   frame, a continuation without a message, a new data frame inside a fragmented message, a close
//!   payload of 1 byte or with a code that may not be sent (allowed: 1000–1003, 1007–1014,
//!   3000–4999), a 64-bit length with its top bit set.
//! - `1007`: a text message that is not UTF-8 (checked across frame and input boundaries, carrying at
//!   most 3 bytes of an unfinished character), or a close reason that is not UTF-8. Nothing of the
//!   chunk holding the bad bytes is echoed (nor a character the message ends inside of).
//! - `1009`: a message longer than [`WsConfig::max_message_size`] (known from the frame headers,
//!   before anything of the offending frame is echoed).
//!
//! Every error is found between echo frames (in a frame header, or in a text chunk before its echo),
//! so the close frame never lands inside one and the framing the client reads is never broken.
//!
//! # Timers and ends
//! [`WsConn::on_quiet`] sends a ping (the machine calls it when a socket was silent for part of the
//! idle timeout, as uWebSockets does); [`WsConn::on_server_close`] sends close `1001`. Neither can be
//! sent while a binary or pong echo frame is half sent (the bytes would land inside it): then
//! nothing is sent. (Text echo frames are never half sent.)
//!
//! Between frames, once the echo said in a call has used up the connection's output budget
//! ([`Sink::over_budget`]; tiny frames each take a queue node), the call stops with
//! [`Step::Pause`]: the rest is handed in again once the echo was sent.
//!
//! The output for a byte stream does not depend on how it is split into inputs (tested for every
//! split point), nor on where it pauses (tested at random budgets and resume points).

mod frame;
mod handshake;
mod stats;
mod utf8;

#[cfg(test)]
mod tests;

pub use frame::TEXT_CHUNK;
pub use stats::{CloseCode, WsStats};

use crate::protocol::{Closing, Ctx, Sink, Step};

/// WebSocket settings (per shard, read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// Longest message accepted, in bytes (sum of its frames' payloads); longer → close `1009`.
    /// Values past [`MAX_MESSAGE_CAP`] act as that cap.
    pub max_message_size: u64,
    /// Longest handshake request head, in bytes; longer → `431`.
    pub max_header_bytes: usize,
}

/// The largest `max_message_size` in effect (2^40 − 1 bytes, 1 TiB): message and frame lengths are
/// kept in 40 bits of [`WsConn`].
pub const MAX_MESSAGE_CAP: u64 = (1 << 40) - 1;

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_size: 16 << 20,
            max_header_bytes: 8 << 10,
        }
    }
}

/// Per-connection WebSocket state: 20 bytes, `Copy`, no heap. `Default` is a connection waiting for
/// its handshake.
#[derive(Clone, Copy, Default, Debug)]
pub struct WsConn {
    /// Masking key of the current frame, rotated so that `mask[0]` applies to the next payload byte.
    mask: [u8; 4],
    /// Payload bytes left in the current frame (while its header is decoded: the length so far).
    rem: [u8; 5],
    /// Payload bytes of the current data message, counting the whole current frame.
    msg: [u8; 5],
    /// The start of a UTF-8 character cut by an input or frame boundary (`carry_len` bytes).
    carry: [u8; 3],
    /// [`st`] bits: phase, head held, in payload, header byte position.
    st: u8,
    /// [`fr`] bits: the current frame's opcode (for a text frame, once its first chunk is echoed:
    /// the continuation opcode of the next echo frame) and FIN, its extended-length size.
    fr: u8,
    /// [`ms`] bits: the current data message.
    ms: u8,
}

const _: () = assert!(std::mem::size_of::<WsConn>() <= 20);

/// Bits of `WsConn::st`.
mod st {
    /// Phase (2 bits): [`HANDSHAKE`], [`OPEN`], [`CLOSED_DONE`], [`CLOSED_VIOLATION`].
    pub const PHASE: u8 = 0b11;
    pub const HANDSHAKE: u8 = 0;
    pub const OPEN: u8 = 1;
    pub const CLOSED_DONE: u8 = 2;
    pub const CLOSED_VIOLATION: u8 = 3;
    /// A partial request head is held by the machine.
    pub const HEAD_HELD: u8 = 1 << 2;
    /// The current frame's header is complete: payload bytes come next.
    pub const IN_PAYLOAD: u8 = 1 << 3;
    /// Position in the frame header being decoded (4 bits, 0..=13).
    pub const HDR_SHIFT: u8 = 4;
}

/// Bits of `WsConn::fr`.
mod fr {
    pub const OPCODE: u8 = 0x0F;
    pub const FIN: u8 = 1 << 4;
    /// Extended payload length bytes (2 bits): 0, 1 = two bytes, 2 = eight bytes.
    pub const EXT_SHIFT: u8 = 5;
    pub const EXT: u8 = 0b11 << EXT_SHIFT;
}

/// Bits of `WsConn::ms`.
mod ms {
    /// A data message is open: its first frame had no FIN and its last has not ended.
    pub const OPEN: u8 = 1 << 0;
    /// The current data message is text.
    pub const TEXT: u8 = 1 << 1;
    /// Bytes in `carry` (2 bits).
    pub const CARRY_SHIFT: u8 = 3;
    pub const CARRY: u8 = 0b11 << CARRY_SHIFT;
}

fn get40(b: [u8; 5]) -> u64 {
    let mut a = [0u8; 8];
    a[..5].copy_from_slice(&b);
    u64::from_le_bytes(a)
}

fn put40(v: u64) -> [u8; 5] {
    debug_assert!(v <= MAX_MESSAGE_CAP);
    let a = v.to_le_bytes();
    [a[0], a[1], a[2], a[3], a[4]]
}

impl WsConn {
    fn phase(&self) -> u8 {
        self.st & st::PHASE
    }

    fn set_phase(&mut self, p: u8) {
        self.st = (self.st & !st::PHASE) | p;
    }

    fn st_has(&self, bit: u8) -> bool {
        self.st & bit != 0
    }

    fn st_set(&mut self, bit: u8, on: bool) {
        if on {
            self.st |= bit
        } else {
            self.st &= !bit
        }
    }

    fn hdr_pos(&self) -> u8 {
        self.st >> st::HDR_SHIFT
    }

    fn set_hdr_pos(&mut self, p: u8) {
        self.st = (self.st & 0x0F) | (p << st::HDR_SHIFT);
    }

    fn opcode(&self) -> u8 {
        self.fr & fr::OPCODE
    }

    fn fin(&self) -> bool {
        self.fr & fr::FIN != 0
    }

    fn ext(&self) -> u8 {
        (self.fr & fr::EXT) >> fr::EXT_SHIFT
    }

    fn set_ext(&mut self, e: u8) {
        self.fr = (self.fr & !fr::EXT) | (e << fr::EXT_SHIFT);
    }

    fn ms_has(&self, bit: u8) -> bool {
        self.ms & bit != 0
    }

    fn ms_set(&mut self, bit: u8, on: bool) {
        if on {
            self.ms |= bit
        } else {
            self.ms &= !bit
        }
    }

    fn carry_len(&self) -> usize {
        usize::from((self.ms & ms::CARRY) >> ms::CARRY_SHIFT)
    }

    fn set_carry_len(&mut self, n: usize) {
        debug_assert!(n <= 3);
        self.ms = (self.ms & !ms::CARRY) | ((n as u8 & 0b11) << ms::CARRY_SHIFT);
    }

    fn rem(&self) -> u64 {
        get40(self.rem)
    }

    fn set_rem(&mut self, v: u64) {
        self.rem = put40(v);
    }

    fn msg_len(&self) -> u64 {
        get40(self.msg)
    }

    fn set_msg_len(&mut self, v: u64) {
        self.msg = put40(v);
    }

    /// The handshake is done and no close was sent or received.
    pub fn is_open(&self) -> bool {
        self.phase() == st::OPEN
    }

    /// An echo frame is half sent: its header went out and part of its payload has not. Nothing else
    /// may be sent until it ends. (Never inside a text frame: its echo frames are sent whole.)
    pub fn mid_echo(&self) -> bool {
        self.phase() == st::OPEN
            && self.st_has(st::IN_PAYLOAD)
            && !matches!(self.opcode(), frame::OP_CLOSE | frame::OP_PONG)
            && !self.is_text_data()
    }

    /// Handle received bytes. Output goes through `sink`, in order; `input` is changed in place
    /// (payloads unmasked, echo headers written over the client's mask bytes).
    pub fn on_input(
        &mut self,
        cfg: &WsConfig,
        ctx: &Ctx<'_>,
        input: &mut [u8],
        sink: &mut impl Sink,
        stats: &mut WsStats,
    ) -> Step {
        match self.phase() {
            st::HANDSHAKE => match handshake::parse(input, cfg.max_header_bytes) {
                handshake::Head::Partial => {
                    self.st_set(st::HEAD_HELD, true);
                    Step::Hold { from: 0 }
                }
                handshake::Head::Reject(r) => {
                    r.respond(ctx, sink, stats);
                    self.st_set(st::HEAD_HELD, false);
                    self.set_phase(st::CLOSED_VIOLATION);
                    Step::Close(Closing::Violation)
                }
                handshake::Head::Upgrade { len, accept } => {
                    handshake::switching_protocols(&accept, sink);
                    stats.upgrades += 1;
                    self.st_set(st::HEAD_HELD, false);
                    self.set_phase(st::OPEN);
                    self.frames(cfg, input, len, sink, stats)
                }
            },
            st::OPEN => self.frames(cfg, input, 0, sink, stats),
            st::CLOSED_DONE => Step::Close(Closing::Done),
            _ => Step::Close(Closing::Violation),
        }
    }

    /// The socket has been quiet for part of the idle timeout: send a ping with an empty payload.
    /// Returns whether it was sent (not before the handshake, after a close, or while an echo frame
    /// is half sent).
    pub fn on_quiet(&mut self, sink: &mut impl Sink, stats: &mut WsStats) -> bool {
        if self.phase() != st::OPEN || self.mid_echo() {
            return false;
        }
        sink.bytes_static(&[0x80 | frame::OP_PING, 0]);
        stats.pings_out += 1;
        stats.frames_out += 1;
        true
    }

    /// The server closes for its own reason (idle timeout, shutdown): send close `1001` (going away).
    /// Nothing is sent before the handshake, after a close, or while an echo frame is half sent
    /// (the peer then sees the connection end without a close frame). Later input is ignored.
    pub fn on_server_close(&mut self, sink: &mut impl Sink, stats: &mut WsStats) {
        match self.phase() {
            st::OPEN => {
                if !self.mid_echo() {
                    sink.bytes_static(&[0x80 | frame::OP_CLOSE, 2, 0x03, 0xE9]);
                    stats.frames_out += 1;
                    stats.closes_sent[CloseCode::GoingAway as usize] += 1;
                }
                self.set_phase(st::CLOSED_DONE);
            }
            st::HANDSHAKE => self.set_phase(st::CLOSED_DONE),
            _ => {}
        }
    }

    /// The peer sent FIN. Nothing is sent (a WebSocket ends with a close frame; a peer that half
    /// closes without one gets no more answers). [`Closing::Done`] when the peer left at a clean
    /// point (before any request byte, between messages, or after the close handshake);
    /// [`Closing::Violation`] when it cut a request head, a frame or a fragmented message short.
    pub fn on_peer_fin(&mut self, _sink: &mut impl Sink, _stats: &mut WsStats) -> Step {
        let clean = match self.phase() {
            st::HANDSHAKE => !self.st_has(st::HEAD_HELD),
            st::OPEN => {
                !self.st_has(st::IN_PAYLOAD) && self.hdr_pos() == 0 && !self.ms_has(ms::OPEN)
            }
            p => p == st::CLOSED_DONE,
        };
        if self.phase() == st::HANDSHAKE || self.phase() == st::OPEN {
            self.set_phase(if clean {
                st::CLOSED_DONE
            } else {
                st::CLOSED_VIOLATION
            });
        }
        Step::Close(if clean {
            Closing::Done
        } else {
            Closing::Violation
        })
    }
}
