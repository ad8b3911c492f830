//! The opening handshake (RFC 6455 §4.2): the request head parsed with httparse, the answer
//! (`101` with `Sec-WebSocket-Accept` from sha1 + base64, or `400` / `426` / `431`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::WsStats;
use crate::protocol::{Ctx, Sink};

/// Most header fields in a request head (more → 431). Browsers send about 15.
const MAX_HEADERS: usize = 64;

/// The GUID of RFC 6455 §1.3 appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a request head says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not complete yet (and within the limit): hold it.
    Partial,
    /// A valid upgrade whose head is `len` bytes; `accept` is the `Sec-WebSocket-Accept` value.
    Upgrade { len: usize, accept: [u8; 28] },
    /// Refused.
    Reject(Reject),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reject {
    /// 400: an upgrade request that breaks RFC 6455 §4.2.1, or not HTTP at all.
    BadRequest,
    /// 426: not an upgrade to WebSocket, or another `Sec-WebSocket-Version`. `head`: a HEAD request
    /// (no body in the answer).
    UpgradeRequired { head: bool },
    /// 431: the head is longer than `max_header_bytes` or has too many fields.
    TooLarge,
}

/// Parse the request head at the start of `input`; only its first `max` bytes are looked at, so the
/// verdict does not depend on how the head was split.
pub(super) fn parse(input: &[u8], max: usize) -> Head {
    let window = &input[..input.len().min(max)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => match check(&req) {
            Ok(accept) => Head::Upgrade { len, accept },
            Err(r) => Head::Reject(r),
        },
        // The head needs more than `max` bytes.
        Ok(httparse::Status::Partial) if input.len() >= max => Head::Reject(Reject::TooLarge),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Reject(Reject::TooLarge),
        Err(_) => Head::Reject(Reject::BadRequest),
    }
}

/// Split a header value into its comma-separated tokens.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|t| t.trim_ascii())
}

fn has_token(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
}

/// The value of a header that must appear exactly once (`Err` when it is missing or repeated).
fn single<'a>(req: &httparse::Request<'_, 'a>, name: &str) -> Result<&'a [u8], ()> {
    let mut found = None;
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
    {
        if found.is_some() {
            return Err(());
        }
        found = Some(h.value.trim_ascii());
    }
    found.ok_or(())
}

fn check(req: &httparse::Request<'_, '_>) -> Result<[u8; 28], Reject> {
    let method = req.method.unwrap_or("");
    if !has_token(req, "upgrade", "websocket") {
        return Err(Reject::UpgradeRequired {
            head: method == "HEAD",
        });
    }
    if method != "GET" || req.version != Some(1) || !has_token(req, "connection", "upgrade") {
        return Err(Reject::BadRequest);
    }
    if single(req, "host").is_err() {
        return Err(Reject::BadRequest);
    }
    match single(req, "sec-websocket-version") {
        Ok(b"13") => {}
        Ok(_) => return Err(Reject::UpgradeRequired { head: false }),
        Err(()) => return Err(Reject::BadRequest),
    }
    // No body: bytes after the head are frames.
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    });
    if has_body {
        return Err(Reject::BadRequest);
    }
    let key = single(req, "sec-websocket-key").map_err(|()| Reject::BadRequest)?;
    let mut nonce = [0u8; 18];
    match STANDARD.decode_slice(key, &mut nonce) {
        Ok(16) => {}
        _ => return Err(Reject::BadRequest),
    }
    Ok(accept_key(key))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2): base64(SHA-1(key ‖ GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    let mut out = [0u8; 28];
    // 20 bytes are always 28 base64 characters.
    let _ = STANDARD.encode_slice(digest, &mut out);
    out
}

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";

/// Send the `101` answer.
pub(super) fn switching_protocols(accept: &[u8; 28], sink: &mut impl Sink) {
    let mut buf = [0u8; SWITCHING.len() + 28 + 4];
    buf[..SWITCHING.len()].copy_from_slice(SWITCHING);
    buf[SWITCHING.len()..SWITCHING.len() + 28].copy_from_slice(accept);
    buf[SWITCHING.len() + 28..].copy_from_slice(b"\r\n\r\n");
    sink.generated(&buf);
}

/// A refusal: status line up to `Date: `, the date, the rest of the head, the body.
struct Answer {
    status: &'static [u8],
    rest: &'static [u8],
    body: &'static [u8],
}

const BAD_REQUEST: Answer = Answer {
    status: b"HTTP/1.1 400 Bad Request\r\nDate: ",
    rest: b"\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\r\n",
    body: b"Bad WebSocket handshake (RFC 6455 4.2.1).\n",
};

const UPGRADE_REQUIRED: Answer = Answer {
    status: b"HTTP/1.1 426 Upgrade Required\r\nDate: ",
    rest: b"\r\nConnection: close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nContent-Type: text/plain\r\nContent-Length: 65\r\n\r\n",
    body: b"This is a WebSocket server: send a WebSocket upgrade (RFC 6455).\n",
};

const TOO_LARGE: Answer = Answer {
    status: b"HTTP/1.1 431 Request Header Fields Too Large\r\nDate: ",
    rest: b"\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\r\n",
    body: b"Request header fields too large.\n",
};

impl Reject {
    /// Send the refusal and count it.
    pub(super) fn respond(self, ctx: &Ctx<'_>, sink: &mut impl Sink, stats: &mut WsStats) {
        let (a, body) = match self {
            Reject::BadRequest => {
                stats.rejected_400 += 1;
                (&BAD_REQUEST, true)
            }
            Reject::UpgradeRequired { head } => {
                stats.rejected_426 += 1;
                (&UPGRADE_REQUIRED, !head)
            }
            Reject::TooLarge => {
                stats.rejected_431 += 1;
                (&TOO_LARGE, true)
            }
        };
        sink.bytes_static(a.status);
        sink.generated(ctx.date);
        sink.bytes_static(a.rest);
        if body {
            sink.bytes_static(a.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content-Length of every canned answer matches its body.
    #[test]
    fn canned_lengths() {
        for a in [&BAD_REQUEST, &UPGRADE_REQUIRED, &TOO_LARGE] {
            let rest = std::str::from_utf8(a.rest).unwrap();
            let n: usize = rest
                .split("Content-Length: ")
                .nth(1)
                .and_then(|s| s.split("\r\n").next())
                .and_then(|s| s.parse().ok())
                .unwrap();
            assert_eq!(
                n,
                a.body.len(),
                "{}",
                std::str::from_utf8(a.status).unwrap()
            );
        }
    }

    /// The example of RFC 6455 §1.3.
    #[test]
    fn accept_key_of_rfc_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
