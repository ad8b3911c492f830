//! `--protocol websocket`: the client side of RFC 6455 for a worker. The upgrade (`GET /` with a
//! Sec-WebSocket-Key made from the connection id and a per-run salt, so its expected
//! Sec-WebSocket-Accept is recomputed instead of stored), heartbeats as masked binary frames (masks
//! from xorshift64*), echo frames checked byte for byte as they arrive, pongs for the server's pings.
//!
//! Written from RFC 6455 alone (sha1 + base64 + httparse), sharing no code with the server it tests.
//! Per connection it keeps one byte of flags; bytes cut at a frame boundary (an unfinished 101 head,
//! frame header or control frame, ≤ a few hundred bytes) wait in a side map only until the rest
//! arrives.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use io_uring::opcode;
use io_uring::types::Fixed;
use sha1::{Digest, Sha1};

use super::*;
use crate::pattern;
use crate::stats::Cause;

/// Longest client frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;
/// Room for a pong (2 + 4 + 125) and the upgrade request.
pub const MAX_CTRL_SEND: usize = 512;
/// Longest 101 head accepted.
const MAX_HEAD: usize = 8192;

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// splitmix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The upgrade request around the key: (`GET … Sec-WebSocket-Key: `, `\r\n\r\n`).
pub fn request_parts(target: &std::net::SocketAddr) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    );
    (head.into_bytes(), b"\r\n\r\n".to_vec())
}

/// Sec-WebSocket-Accept for `key`: base64(SHA-1(key ‖ GUID)).
pub fn accept_of(key: &[u8]) -> String {
    STANDARD.encode(Sha1::new().chain_update(key).chain_update(GUID).finalize())
}

/// A masked client frame header for `len` payload bytes; returns its length.
fn client_header(out: &mut [u8], b0: u8, len: usize, mask: [u8; 4]) -> usize {
    out[0] = b0;
    let mut n = 2;
    if len < 126 {
        out[1] = 0x80 | len as u8;
    } else if len <= 0xFFFF {
        out[1] = 0x80 | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        n = 4;
    } else {
        out[1] = 0x80 | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        n = 10;
    }
    out[n..n + 4].copy_from_slice(&mask);
    n + 4
}

fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes heartbeat (`id`, `seq`) of `size` payload bytes as one masked binary frame into `buf`;
/// returns the frame's length.
pub fn heartbeat_frame(buf: &mut [u8], size: usize, id: u32, seq: u32, mask: [u8; 4]) -> usize {
    let h = client_header(buf, 0x80 | OP_BINARY, size, mask);
    let payload = &mut buf[h..h + size];
    pattern::fill(payload, id, seq);
    apply_mask(payload, mask);
    h + size
}

/// A decoded server frame header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    rsv: u8,
    op: u8,
    masked: bool,
    len: u64,
    /// Header bytes (payload starts here).
    size: usize,
}

/// Decodes the frame header at the start of `d`; `None` when it is not all there yet.
fn parse_header(d: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (d.first()?, d.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut size) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(d.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(d.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if masked {
        size += 4;
        if d.len() < size {
            return None;
        }
    }
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        op: b0 & 0x0F,
        masked,
        len,
        size,
    })
}

fn has_token(r: &httparse::Response<'_, '_>, name: &str, token: &str) -> bool {
    r.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks the server's answer at the start of `d`: `Ok(Some(head length))` for a valid 101,
/// `Ok(None)` when the head is not complete yet.
fn check_101(d: &[u8], accept: &str) -> Result<Option<usize>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(d) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let count = |name: &str| {
        r.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let accepts: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value.trim_ascii())
        .collect();
    let ok = r.code == Some(101)
        && has_token(&r, "upgrade", "websocket")
        && has_token(&r, "connection", "upgrade")
        && accepts == [accept.as_bytes()]
        // Nothing was offered, so nothing may be answered.
        && count("sec-websocket-extensions") == 0
        && count("sec-websocket-protocol") == 0;
    if ok {
        Ok(Some(n))
    } else {
        Err(())
    }
}

impl Worker {
    pub(super) fn websocket(&self) -> bool {
        self.plan.protocol == crate::plan::LoadProtocol::Websocket
    }

    /// The next masking key (xorshift64*).
    pub(super) fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_rng = x;
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32).to_le_bytes()
    }

    /// Sec-WebSocket-Key of connection `id`: 16 bytes from the salt and the id, in base64.
    fn ws_key(&self, id: u32) -> [u8; 24] {
        let a = mix(self.key_salt ^ u64::from(id));
        let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&a.to_le_bytes());
        nonce[8..].copy_from_slice(&b.to_le_bytes());
        let mut key = [0u8; 24];
        // 16 bytes are always 24 base64 characters.
        let _ = STANDARD.encode_slice(nonce, &mut key);
        key
    }

    /// Connected: send the upgrade and wait for the 101 like for an echo (same timeout).
    pub(super) fn ws_start(&mut self, slot: u32) {
        let key = self.ws_key(self.conn_id(slot));
        let (head, tail) = &self.ws_request;
        let mut req = Vec::with_capacity(head.len() + key.len() + tail.len());
        req.extend_from_slice(head);
        req.extend_from_slice(&key);
        req.extend_from_slice(tail);
        let conn = &mut self.conns[slot as usize];
        conn.flags |= F_AWAIT;
        conn.got = 0;
        let seq = conn.seq;
        self.c.outstanding += 1;
        self.deadlines.push_back(Deadline {
            at_us: self.now_us() + self.plan.echo_timeout.as_micros() as u64,
            slot,
            seq,
        });
        self.send_ctrl(slot, &req);
    }

    /// Sends a handshake or pong (the caller made sure no other send is in flight).
    fn send_ctrl(&mut self, slot: u32, bytes: &[u8]) {
        let b = self.alloc_send(slot, true);
        let sb = &mut self.sends[b as usize];
        let n = bytes.len().min(sb.data.len());
        sb.data[..n].copy_from_slice(&bytes[..n]);
        sb.len = n as u32;
        let e = opcode::Send::new(Fixed(slot), sb.data.as_ptr(), sb.len)
            .build()
            .user_data(ud(OP_SEND, b));
        self.conns[slot as usize].ws |= W_CTRL_SEND;
        self.push(&[e]);
    }

    /// Answers a ping: now, or after the send in flight (frames must not interleave).
    fn send_pong(&mut self, slot: u32, payload: &[u8]) {
        let mask = self.next_mask();
        let mut f = vec![0u8; MAX_HEADER + payload.len()];
        let h = client_header(&mut f, 0x80 | OP_PONG, payload.len(), mask);
        f.truncate(h + payload.len());
        f[h..].copy_from_slice(payload);
        apply_mask(&mut f[h..], mask);
        let conn = &mut self.conns[slot as usize];
        if conn.flags & F_SEND != 0 || conn.ws & W_CTRL_SEND != 0 {
            // Only the latest ping needs an answer (RFC 6455 §5.5.3).
            conn.ws |= W_PONG_WAITS;
            self.ws_pongs.insert(slot, f);
            return;
        }
        self.c.ws_pongs += 1;
        self.send_ctrl(slot, &f);
    }

    /// A send ended: a pong that waited for it goes now.
    pub(super) fn ws_send_waiting_pong(&mut self, slot: u32) {
        let conn = self.conns[slot as usize];
        if conn.ws & W_PONG_WAITS == 0 || conn.flags & F_SEND != 0 || conn.ws & W_CTRL_SEND != 0 {
            return;
        }
        self.conns[slot as usize].ws &= !W_PONG_WAITS;
        if let Some(f) = self.ws_pongs.remove(&slot) {
            self.c.ws_pongs += 1;
            self.send_ctrl(slot, &f);
        }
    }

    /// Keep `bytes` (cut at a frame boundary) for the next receive.
    fn keep(&mut self, slot: u32, bytes: &[u8]) {
        self.conns[slot as usize].ws |= W_KEPT;
        self.ws_kept.insert(slot, bytes.to_vec());
    }

    /// Received bytes of an open connection: the 101, then frames.
    pub(super) fn ws_input(&mut self, slot: u32, input: &[u8]) -> Result<(), Cause> {
        let s = slot as usize;
        let id = self.conn_id(slot);
        let joined;
        let mut data = input;
        if self.conns[s].ws & W_KEPT != 0 {
            self.conns[s].ws &= !W_KEPT;
            if let Some(mut v) = self.ws_kept.remove(&slot) {
                v.extend_from_slice(input);
                joined = v;
                data = &joined;
            }
        }
        if self.conns[s].ws & W_UPGRADED == 0 {
            let accept = accept_of(&self.ws_key(id));
            match check_101(data, &accept) {
                Err(()) => return Err(Cause::Handshake),
                Ok(None) if data.len() > MAX_HEAD => return Err(Cause::Handshake),
                Ok(None) => {
                    self.keep(slot, data);
                    return Ok(());
                }
                Ok(Some(n)) => {
                    let conn = &mut self.conns[s];
                    conn.ws |= W_UPGRADED;
                    conn.flags &= !F_AWAIT;
                    self.c.outstanding = self.c.outstanding.saturating_sub(1);
                    self.c.ws_upgrades += 1;
                    self.start_heartbeats(slot);
                    data = &data[n..];
                }
            }
        }
        let size = self.plan.message_size;
        while !data.is_empty() {
            let conn = self.conns[s];
            if conn.ws & W_IN_ECHO != 0 {
                let got = conn.got as usize;
                let take = (size - got).min(data.len());
                if !pattern::verify(&data[..take], id, conn.seq, got) {
                    return Err(Cause::Mismatch);
                }
                self.conns[s].got += take as u32;
                data = &data[take..];
                if got + take == size {
                    self.conns[s].ws &= !W_IN_ECHO;
                    self.answered(slot);
                }
                continue;
            }
            let Some(h) = parse_header(data) else {
                self.keep(slot, data);
                return Ok(());
            };
            if h.rsv != 0 || h.masked {
                return Err(Cause::Mismatch); // a server frame is never masked; nothing was negotiated
            }
            match h.op {
                OP_BINARY
                    if h.fin
                        && h.len == size as u64
                        && conn.flags & F_AWAIT != 0
                        && conn.seq != 0 =>
                {
                    let c = &mut self.conns[s];
                    c.ws |= W_IN_ECHO;
                    c.got = 0;
                    data = &data[h.size..];
                }
                OP_PING | OP_PONG | OP_CLOSE if h.fin && h.len <= 125 => {
                    let end = h.size + h.len as usize;
                    if data.len() < end {
                        self.keep(slot, data);
                        return Ok(());
                    }
                    match h.op {
                        OP_PING => {
                            self.c.ws_pings += 1;
                            self.send_pong(slot, &data[h.size..end]);
                        }
                        OP_CLOSE => return Err(Cause::Closed),
                        _ => {} // an unsolicited pong
                    }
                    data = &data[end..];
                }
                // Anything else: not the echo of what was sent.
                _ => return Err(Cause::Mismatch),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_of_the_rfc_example() {
        assert_eq!(
            accept_of(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn heartbeat_frames_decode_to_the_pattern() {
        for size in [8usize, 125, 126, 65_535, 65_536, 100_000] {
            let mut buf = vec![0u8; size + MAX_HEADER];
            let mask = [1, 2, 3, 4];
            let n = heartbeat_frame(&mut buf, size, 7, 9, mask);
            let h = parse_header(&buf[..n]).unwrap();
            assert!(h.fin && h.masked && h.op == OP_BINARY && h.rsv == 0);
            assert_eq!(h.len, size as u64);
            assert_eq!(n, h.size + size);
            let mut payload = buf[h.size..n].to_vec();
            apply_mask(&mut payload, mask);
            assert!(pattern::verify(&payload, 7, 9, 0));
        }
    }

    #[test]
    fn headers_cut_short_are_not_decoded() {
        let full = [0x82, 126, 0x01, 0x00];
        for cut in 0..full.len() {
            assert_eq!(parse_header(&full[..cut]), None);
        }
        assert_eq!(parse_header(&full).map(|h| (h.len, h.size)), Some((256, 4)));
    }

    #[test]
    fn the_101_is_checked() {
        let accept = accept_of(b"dGhlIHNhbXBsZSBub25jZQ==");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert_eq!(check_101(good.as_bytes(), &accept), Ok(Some(good.len())));
        assert_eq!(check_101(&good.as_bytes()[..20], &accept), Ok(None));
        let wrong = good.replace(&accept, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(check_101(wrong.as_bytes(), &accept), Err(()));
        let deflate = good.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert_eq!(check_101(deflate.as_bytes(), &accept), Err(()));
        assert_eq!(
            check_101(b"HTTP/1.1 426 Upgrade Required\r\n\r\n", &accept),
            Err(())
        );
    }
}
