//! The chunked body scanner (RFC 9112 7.1): follows the framing byte by byte, so that it can stop and
//! resume at any byte, to find where the body ends. It never copies: chunk data is skipped in runs, and
//! the caller passes the scanned bytes through (or drops them) as they are.
//!
//! httparse has `parse_chunk_size`, but it needs a whole size line in one slice; holding size lines
//! would make the body path depend on where reads split, so the few states are written out here.

use super::{HttpConn, HttpError, Phase};

/// How a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// All bytes scanned; the body goes on.
    More,
    /// The body ended with the last scanned byte.
    Done,
    /// The byte after the scanned ones breaks the framing (400) or the body limit (413).
    Error(HttpError),
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
    /// being read or the bytes left of the chunk's data. Returns how many bytes are valid body bytes.
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
        }
        (i, Scan::More)
    }
}
