//! Frames after the handshake: the incremental header decoder, the streamed echo, close frames.

use super::{fr, ms, st, CloseCode, WsConn, WsStats, MAX_MESSAGE_CAP};
use crate::protocol::{Closing, Sink, Step};
use crate::ws::WsConfig;

pub(super) const OP_CONT: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Most payload bytes of one echo frame of a text message: a text frame is echoed in fragments of
/// at most this many bytes (plus up to 3 carried from the fragment before), each checked whole
/// before its header is sent (see the module doc of [`crate::ws`]).
pub const TEXT_CHUNK: usize = 4096;

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const TOO_BIG: u16 = 1009;

fn is_control(op: u8) -> bool {
    op & 0x8 != 0
}

/// A close code a peer may send (RFC 6455 §7.4.1 and the IANA registry): 1000–1003, 1007–1014,
/// 3000–4999.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XOR `buf` with the masking key, `mask[0]` applying to `buf[0]`.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(a) ^ m).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so at mask[0].
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A server frame header (unmasked): up to 10 bytes.
fn server_header(b0: u8, len: u64) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = b0;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u64::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&len.to_be_bytes());
        (h, 10)
    }
}

/// Output of one `on_input` call: consecutive in-place ranges of the input are merged into one
/// segment (an echo header written in place and the payload right after it).
struct Out<'s, S: Sink> {
    sink: &'s mut S,
    run: Option<(usize, usize)>,
    /// Something was said in this call.
    said: bool,
}

impl<S: Sink> Out<'_, S> {
    fn input(&mut self, off: usize, len: usize) {
        self.said = true;
        match self.run {
            Some((s, e)) if e == off => self.run = Some((s, off + len)),
            _ => {
                self.flush();
                self.run = Some((off, off + len));
            }
        }
    }

    fn generated(&mut self, bytes: &[u8]) {
        self.said = true;
        self.flush();
        self.sink.generated(bytes);
    }

    /// Past the output budget, having said something: pause here (a frame boundary).
    fn pause(&mut self) -> bool {
        if !self.said {
            return false;
        }
        self.flush();
        self.sink.over_budget()
    }

    fn flush(&mut self) {
        if let Some((s, e)) = self.run.take() {
            if e > s {
                self.sink.input(s, e - s);
            }
        }
    }
}

impl WsConn {
    /// Handle frame bytes from `input[pos..]`.
    pub(super) fn frames<S: Sink>(
        &mut self,
        cfg: &WsConfig,
        input: &mut [u8],
        mut pos: usize,
        sink: &mut S,
        stats: &mut WsStats,
    ) -> Step {
        let limit = cfg.max_message_size.min(MAX_MESSAGE_CAP);
        let mut out = Out {
            sink,
            run: None,
            said: false,
        };
        // Where the frame header being decoded starts, when it started in this input.
        let mut hdr_start = None;
        // Where a text frame's header whole in this input ended: its first echo header may be
        // written over the client's mask bytes.
        let mut hdr_end = None;
        let step = loop {
            if pos >= input.len() {
                break Step::Continue;
            }
            if !self.st_has(st::IN_PAYLOAD) {
                if self.hdr_pos() == 0 {
                    // Between frames: past the output budget, the rest waits for the answers to be
                    // sent (`Step::Pause`).
                    if out.pause() {
                        break Step::Pause { from: pos };
                    }
                    hdr_start = Some(pos);
                }
                let b = input[pos];
                pos += 1;
                match self.header_byte(b, limit) {
                    Ok(false) => {}
                    Ok(true) => {
                        let in_place = hdr_start.take().is_some();
                        hdr_end = in_place.then_some(pos);
                        if let Some(step) = self.header_done(input, in_place, pos, &mut out, stats)
                        {
                            break step;
                        }
                    }
                    Err(code) => break self.fail(code, &mut out, stats),
                }
            } else {
                let in_place = hdr_end.take() == Some(pos);
                if let Some(step) = self.payload(input, &mut pos, in_place, &mut out, stats) {
                    break step;
                }
            }
        };
        out.flush();
        step
    }

    /// Take one header byte. `Ok(true)`: the header is complete. `Err(code)`: close with `code`.
    fn header_byte(&mut self, b: u8, limit: u64) -> Result<bool, u16> {
        let pos = self.hdr_pos();
        let ext_len = match self.ext() {
            0 => 0,
            1 => 2,
            _ => 8,
        };
        match pos {
            0 => {
                let op = b & 0x0F;
                let fin = b & 0x80 != 0;
                if b & 0x70 != 0 {
                    return Err(PROTOCOL_ERROR); // RSV1-3: no extension was negotiated
                }
                match op {
                    OP_CONT if !self.ms_has(ms::OPEN) => return Err(PROTOCOL_ERROR),
                    OP_CONT => {}
                    OP_TEXT | OP_BINARY if self.ms_has(ms::OPEN) => return Err(PROTOCOL_ERROR),
                    OP_TEXT | OP_BINARY => {
                        self.ms_set(ms::TEXT, op == OP_TEXT);
                        self.set_msg_len(0);
                    }
                    OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(PROTOCOL_ERROR),
                    OP_CLOSE | OP_PING | OP_PONG => {}
                    _ => return Err(PROTOCOL_ERROR),
                }
                if !is_control(op) {
                    self.ms_set(ms::OPEN, !fin);
                }
                self.fr = op | if fin { fr::FIN } else { 0 };
            }
            1 => {
                if b & 0x80 == 0 {
                    return Err(PROTOCOL_ERROR); // client frames must be masked
                }
                let len7 = b & 0x7F;
                let op = self.opcode();
                if is_control(op) && len7 > 125 {
                    return Err(PROTOCOL_ERROR);
                }
                if op == OP_CLOSE && len7 == 1 {
                    return Err(PROTOCOL_ERROR); // a close payload is empty or starts with a code
                }
                self.set_rem(0);
                match len7 {
                    126 => self.set_ext(1),
                    127 => self.set_ext(2),
                    n => {
                        self.set_ext(0);
                        self.set_rem(u64::from(n));
                        self.check_size(limit)?;
                    }
                }
            }
            p if p < 2 + ext_len => {
                let i = p - 2;
                if ext_len == 8 && i < 3 {
                    // The top 24 bits of a 64-bit length: beyond MAX_MESSAGE_CAP when not zero.
                    if i == 0 && b & 0x80 != 0 {
                        return Err(PROTOCOL_ERROR);
                    }
                    if b != 0 {
                        return Err(TOO_BIG);
                    }
                } else {
                    self.set_rem(self.rem() << 8 | u64::from(b));
                }
                if i + 1 == ext_len {
                    self.check_size(limit)?;
                }
            }
            p => {
                let i = usize::from(p - 2 - ext_len);
                self.mask[i] = b;
                if i == 3 {
                    self.set_hdr_pos(0);
                    self.st_set(st::IN_PAYLOAD, true);
                    return Ok(true);
                }
            }
        }
        self.set_hdr_pos(pos + 1);
        Ok(false)
    }

    /// The frame's length is known: a data frame must keep its message within `limit`.
    fn check_size(&mut self, limit: u64) -> Result<(), u16> {
        if is_control(self.opcode()) {
            return Ok(());
        }
        let total = self.msg_len() + self.rem();
        if total > limit {
            return Err(TOO_BIG);
        }
        self.set_msg_len(total);
        Ok(())
    }

    /// The header just ended at `pos`: start the echo (its header written over the client's mask
    /// bytes when `in_place`, i.e. the client's header is whole in this input). A frame of a text
    /// message is echoed by [`WsConn::text_chunk`] instead, once its bytes are checked.
    fn header_done<S: Sink>(
        &mut self,
        input: &mut [u8],
        in_place: bool,
        pos: usize,
        out: &mut Out<'_, S>,
        stats: &mut WsStats,
    ) -> Option<Step> {
        stats.frames_in += 1;
        let op = self.opcode();
        let rem = self.rem();
        if self.is_text_data() {
            if rem == 0 {
                let failed = self.text_chunk(input, pos, 0, in_place, out, stats);
                if failed.is_none() {
                    self.frame_end(stats);
                }
                return failed;
            }
            return None;
        }
        let echo_b0 = match op {
            OP_PING => {
                stats.pings_in += 1;
                stats.pongs_out += 1;
                Some(0x80 | OP_PONG)
            }
            OP_PONG => {
                stats.pongs_in += 1;
                None
            }
            OP_CLOSE => None,
            _ => Some(if self.fin() { 0x80 } else { 0 } | op),
        };
        if let Some(b0) = echo_b0 {
            let (h, hl) = server_header(b0, rem);
            stats.frames_out += 1;
            if in_place {
                // The client's header is at least 4 bytes longer (its mask): it ends at `pos`.
                input[pos - hl..pos].copy_from_slice(&h[..hl]);
                out.input(pos - hl, hl);
            } else {
                out.generated(&h[..hl]);
            }
        }
        if rem == 0 {
            return if op == OP_CLOSE {
                Some(self.close_frame(&mut [], out, stats))
            } else {
                self.frame_end(stats);
                None
            };
        }
        None
    }

    /// The current frame is a data frame of a text message.
    pub(super) fn is_text_data(&self) -> bool {
        !is_control(self.opcode()) && self.ms_has(ms::TEXT)
    }

    /// Payload bytes at `*pos` (`in_place`: the client's header ends right there, in this input).
    fn payload<S: Sink>(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
        in_place: bool,
        out: &mut Out<'_, S>,
        stats: &mut WsStats,
    ) -> Option<Step> {
        let rem = self.rem();
        let avail = input.len() - *pos;
        let op = self.opcode();
        if op == OP_CLOSE {
            // Checked whole (≤ 125 bytes): hold until it is all here.
            if (avail as u64) < rem {
                return Some(Step::Hold { from: *pos });
            }
            let end = *pos + rem as usize;
            let p = &mut input[*pos..end];
            unmask(p, self.mask);
            *pos = end;
            return Some(self.close_frame(p, out, stats));
        }
        let n = if self.is_text_data() {
            // Checked before it is echoed, a chunk at a time: hold until the chunk is all here.
            let n = rem.min(TEXT_CHUNK as u64) as usize;
            if avail < n {
                return Some(Step::Hold { from: *pos });
            }
            if let Some(step) = self.text_chunk(input, *pos, n, in_place, out, stats) {
                return Some(step);
            }
            n
        } else {
            let n = rem.min(avail as u64) as usize;
            if op != OP_PONG {
                unmask(&mut input[*pos..*pos + n], self.mask);
                self.mask.rotate_left(n % 4);
                out.input(*pos, n);
            }
            n
        };
        *pos += n;
        self.set_rem(rem - n as u64);
        if rem == n as u64 {
            self.frame_end(stats);
        }
        None
    }

    /// The next `n` payload bytes of a text frame, all in `input` at `pos` (the frame's last bytes,
    /// or [`TEXT_CHUNK`] of them): unmask, check, then echo them as one frame of their own. The
    /// echo frame holds the start of a character the chunk before left unfinished (the carry), then
    /// the chunk up to its last whole character; an unfinished character at its end is carried to
    /// the next chunk. So every echo frame is UTF-8 on its own, and nothing of a chunk that is not
    /// UTF-8 (or of a message that ends inside a character) is sent: close 1007 instead. `None`:
    /// echoed, the caller advances.
    fn text_chunk<S: Sink>(
        &mut self,
        input: &mut [u8],
        pos: usize,
        n: usize,
        in_place: bool,
        out: &mut Out<'_, S>,
        stats: &mut WsStats,
    ) -> Option<Step> {
        let chunk = &mut input[pos..pos + n];
        unmask(chunk, self.mask);
        self.mask.rotate_left(n % 4);
        let (old, old_len) = (self.carry, self.carry_len());
        if !self.utf8_feed(chunk) {
            return Some(self.fail(INVALID_PAYLOAD, out, stats));
        }
        let last = n as u64 == self.rem();
        let fin = last && self.fin();
        let new_len = self.carry_len();
        if fin && new_len > 0 {
            return Some(self.fail(INVALID_PAYLOAD, out, stats)); // the message ends inside a character
        }
        // The carry was completed (all of it is echoed now, then the chunk without its own
        // unfinished end), or the chunk only made it longer (old_len + n == new_len: echo nothing).
        let len = old_len + n - new_len;
        let carried = if len > 0 { old_len } else { 0 };
        let b0 = if fin { 0x80 } else { 0 } | self.opcode();
        let (h, hl) = server_header(b0, len as u64);
        stats.frames_out += 1;
        if in_place && carried == 0 {
            // The client's header (≥ 6 bytes with its mask) ends at `pos`; ours has ≤ 4.
            input[pos - hl..pos].copy_from_slice(&h[..hl]);
            out.input(pos - hl, hl);
        } else {
            let mut g = [0u8; 10 + 3];
            g[..hl].copy_from_slice(&h[..hl]);
            g[hl..hl + carried].copy_from_slice(&old[..carried]);
            out.generated(&g[..hl + carried]);
        }
        if n > new_len {
            out.input(pos, n - new_len);
        }
        // The next echo frame of this client frame continues this one.
        self.fr = (self.fr & !fr::OPCODE) | OP_CONT;
        None
    }

    /// The current (non-close) frame ended.
    fn frame_end(&mut self, stats: &mut WsStats) {
        self.st_set(st::IN_PAYLOAD, false);
        if is_control(self.opcode()) {
            return;
        }
        // A text message that ends inside a character failed in `text_chunk` already.
        debug_assert!(!(self.fin() && self.ms_has(ms::TEXT) && !self.utf8_complete()));
        if self.fin() {
            stats.messages_in += 1;
            stats.messages_out += 1;
            self.ms = 0;
            self.set_msg_len(0);
        }
    }

    /// A whole close frame, unmasked: answer it (same code) or fail.
    fn close_frame<S: Sink>(
        &mut self,
        payload: &mut [u8],
        out: &mut Out<'_, S>,
        stats: &mut WsStats,
    ) -> Step {
        stats.closes_received += 1;
        let code = match payload {
            [] => None,
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !close_code_allowed(code) {
                    return self.fail(PROTOCOL_ERROR, out, stats);
                }
                if simdutf8::basic::from_utf8(reason).is_err() {
                    return self.fail(INVALID_PAYLOAD, out, stats);
                }
                Some(code)
            }
            [_] => return self.fail(PROTOCOL_ERROR, out, stats), // refused in the header already
        };
        stats.frames_out += 1;
        match code {
            None => {
                out.generated(&[0x80 | OP_CLOSE, 0]);
                stats.closes_sent[CloseCode::Empty as usize] += 1;
            }
            Some(c) => {
                let [hi, lo] = c.to_be_bytes();
                out.generated(&[0x80 | OP_CLOSE, 2, hi, lo]);
                stats.closes_sent[CloseCode::of(c) as usize] += 1;
            }
        }
        self.set_phase(st::CLOSED_DONE);
        Step::Close(Closing::Done)
    }

    /// Close with `code` for a protocol error. Only called between frames or at the end of one, so
    /// the close frame never lands inside an echo frame.
    fn fail<S: Sink>(&mut self, code: u16, out: &mut Out<'_, S>, stats: &mut WsStats) -> Step {
        let [hi, lo] = code.to_be_bytes();
        out.generated(&[0x80 | OP_CLOSE, 2, hi, lo]);
        stats.frames_out += 1;
        stats.closes_sent[CloseCode::of(code) as usize] += 1;
        self.set_phase(st::CLOSED_VIOLATION);
        Step::Close(Closing::Violation)
    }
}
