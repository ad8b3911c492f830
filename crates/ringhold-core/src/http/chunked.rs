//! The chunked body scanner (RFC 9112 7.1): follows the framing byte by byte, to find where the body
//! ends. It never copies: chunk data is skipped in runs, and the caller passes the scanned bytes
//! through (or drops them) as they are.
//!
//! Framing goes through in *units* ([`probe`]): a chunk-size line (extensions included), or the last
//! chunk's size line with the trailer section and the final CRLF. A unit is checked whole before any
//! of it is passed on (held across reads, at most `max_header_bytes`), so that a request's answer can
//! wait for its first size line, and an echo never carries framing the request did not complete: a
//! body that breaks off leaves an echo without its last chunk, which every HTTP client reads as an
//! incomplete message. Chunk data streams byte by byte. httparse's `parse_chunk_size` would do for a
//! size line, but not for extensions' characters or trailers, so the few states are written out here.

use super::{HttpConn, HttpError, Phase};

/// How a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// All bytes scanned; the body goes on.
    More,
    /// A unit boundary was just crossed: a size line ended (its data follows), or a chunk's data and
    /// its CRLF ended (a size line follows). The scan stops there so the caller can probe what follows.
    Boundary,
    /// The body ended with the last scanned byte.
    Done,
    /// The byte after the scanned ones breaks the framing (400) or the body limit (413).
    Error(HttpError),
}

/// What [`probe`] found at the start of a chunk-size line.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    /// The unit is not complete yet and shorter than the bound: hold it.
    Partial,
    /// A valid unit of `len` bytes; `after` is the scanner's state after it (the budget it took, the
    /// chunk's size to come); `last` when it was the last chunk and the trailer section (the body ends).
    Complete {
        len: usize,
        last: bool,
        after: HttpConn,
    },
    /// The unit breaks the framing (400), the body limit (413), or is longer than the bound (400).
    Error(HttpError),
}

/// Checks the unit at the start of `bytes` (a chunk-size line begins there) against the body budget
/// `left`, looking at no more than its first `max` bytes, so the result does not depend on how the
/// bytes were split across reads.
pub(crate) fn probe(left: u64, max: usize, bytes: &[u8]) -> Unit {
    let mut p = HttpConn {
        left,
        chunk: 0,
        phase: Phase::ChunkSize0,
        flags: 0,
    };
    let window = &bytes[..bytes.len().min(max)];
    match p.scan_chunked(window) {
        (_, Scan::Error(e)) => Unit::Error(e),
        (len, Scan::Boundary) => Unit::Complete {
            len,
            last: false,
            after: p,
        },
        (len, Scan::Done) => Unit::Complete {
            len,
            last: true,
            after: p,
        },
        (_, Scan::More) if window.len() >= max => Unit::Error(HttpError::BadRequest),
        (_, Scan::More) => Unit::Partial,
    }
}

/// Largest chunk size taken (a u32 keeps the connection state small; 4 GiB per chunk is plenty).
const MAX_CHUNK: u64 = u32::MAX as u64;

fn hex(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

/// A byte allowed inside a chunk extension or a trailer line: visible ASCII, space, tab, obs-text.
fn text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// tchar (RFC 9110 5.6.2): the first byte of a trailer field name.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HttpConn {
    /// Scans `bytes` of a chunked body. `self.left` is the body budget (every byte of the chunked body,
    /// framing and trailers included, counts against `max_body_bytes`), `self.chunk` the chunk size
    /// being read or the bytes left of the chunk's data. Returns how many bytes are valid body bytes;
    /// stops after a unit boundary ([`Scan::Boundary`]).
    pub(crate) fn scan_chunked(&mut self, bytes: &[u8]) -> (usize, Scan) {
        let mut i = 0;
        while i < bytes.len() {
            if self.left == 0 {
                return (i, Scan::Error(HttpError::PayloadTooLarge));
            }
            if self.phase == Phase::ChunkData {
                // Data in one run; `chunk` ≤ `left` was checked when the size was read, but the size
                // line's end took budget since, so bound by both.
                let n = u64::from(self.chunk)
                    .min((bytes.len() - i) as u64)
                    .min(self.left);
                i += n as usize;
                self.left -= n;
                self.chunk -= n as u32;
                if self.chunk == 0 {
                    self.phase = Phase::ChunkDataCr;
                }
                continue;
            }
            let b = bytes[i];
            let next = match (self.phase, b) {
                (Phase::ChunkSize0 | Phase::ChunkSize, _) if hex(b).is_some() => {
                    let size = (u64::from(self.chunk) << 4) | u64::from(hex(b).unwrap_or(0));
                    if size > MAX_CHUNK || size > self.left {
                        return (i, Scan::Error(HttpError::PayloadTooLarge));
                    }
                    self.chunk = size as u32;
                    Phase::ChunkSize
                }
                (Phase::ChunkSize | Phase::ChunkWs, b' ' | b'\t') => Phase::ChunkWs,
                (Phase::ChunkSize | Phase::ChunkWs, b';') => Phase::ChunkExt,
                (Phase::ChunkSize | Phase::ChunkWs | Phase::ChunkExt, b'\r') => Phase::ChunkSizeLf,
                (Phase::ChunkExt, _) if text(b) => Phase::ChunkExt,
                (Phase::ChunkSizeLf, b'\n') if self.chunk == 0 => Phase::TrailerStart,
                (Phase::ChunkSizeLf, b'\n') => Phase::ChunkData,
                (Phase::ChunkDataCr, b'\r') => Phase::ChunkDataLf,
                (Phase::ChunkDataLf, b'\n') => Phase::ChunkSize0,
                (Phase::TrailerStart, b'\r') => Phase::EndLf,
                (Phase::TrailerStart, _) if tchar(b) => Phase::Trailer,
                (Phase::Trailer, b'\r') => Phase::TrailerLf,
                (Phase::Trailer, _) if text(b) => Phase::Trailer,
                (Phase::TrailerLf, b'\n') => Phase::TrailerStart,
                (Phase::EndLf, b'\n') => {
                    self.left -= 1;
                    return (i + 1, Scan::Done);
                }
                _ => return (i, Scan::Error(HttpError::BadRequest)),
            };
            self.phase = next;
            self.left -= 1;
            i += 1;
            if matches!(next, Phase::ChunkData | Phase::ChunkSize0) {
                return (i, Scan::Boundary);
            }
        }
        (i, Scan::More)
    }
}
