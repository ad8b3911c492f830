//! What the server writes: the fixed body text, response heads formatted into a stack buffer (no
//! allocation per request), the canned error answers and the `Date` value.

use std::time::SystemTime;

use super::HttpError;
use crate::protocol::MAX_GENERATED;

/// Length of [`BODY_TEXT`]: the largest `?length=N` any configuration can allow.
pub const BODY_TEXT_LEN: usize = 64 * 1024;

const PHRASE: &[u8] =
    b"ringhold holds a million mostly idle connections with the least memory per socket.\n";

const fn body_text() -> [u8; BODY_TEXT_LEN] {
    let mut out = [0u8; BODY_TEXT_LEN];
    let mut i = 0;
    while i < BODY_TEXT_LEN {
        out[i] = PHRASE[i % PHRASE.len()];
        i += 1;
    }
    out
}

/// The fixed text a `GET /?length=N` answer is cut from (its first N bytes), sent without a copy.
pub static BODY_TEXT: [u8; BODY_TEXT_LEN] = body_text();

/// The interim answer to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `Date` header value (IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`) for `t`. Meant for the
/// shard's per-second cache that [`crate::protocol::Ctx::date`] points at; does not allocate.
pub fn format_date(t: SystemTime) -> [u8; 29] {
    use std::io::Write;
    let mut out = [b' '; 29];
    // httpdate panics outside 1970..=9999: clamp (a clock that far off is not worth a panic). Inside,
    // an HttpDate always formats to exactly 29 bytes.
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LAST_DATE_SECS);
    let t = t.clamp(SystemTime::UNIX_EPOCH, last);
    let _ = write!(&mut out[..], "{}", httpdate::HttpDate::from(t));
    out
}

/// [`format_date`] of `unix_secs` seconds after the epoch (saturating at the end of year 9999).
pub fn format_unix_secs(unix_secs: u64) -> [u8; 29] {
    let secs = unix_secs.min(LAST_DATE_SECS);
    format_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// 9999-12-31T23:59:59Z, the last instant an IMF-fixdate can show.
const LAST_DATE_SECS: u64 = 253_402_300_799;

/// The `Connection` header a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnHeader {
    /// None (HTTP/1.1 keep-alive is the default).
    None,
    /// `Connection: close`: the server closes after this response.
    Close,
    /// `Connection: keep-alive`: an HTTP/1.0 client asked to keep the connection.
    KeepAlive,
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

/// A response head being built on the stack. Heads are far below [`MAX_GENERATED`]; a push that
/// would not fit is dropped (never happens with the fixed set of headers written here).
pub(crate) struct Head {
    buf: [u8; MAX_GENERATED],
    len: usize,
}

impl Head {
    pub(crate) fn new(
        status_line: &[u8],
        date: &[u8; 29],
        framing: Framing,
        conn: ConnHeader,
    ) -> Head {
        let mut h = Head {
            buf: [0; MAX_GENERATED],
            len: 0,
        };
        h.push(status_line);
        h.push(b"Server: ringhold\r\nDate: ");
        h.push(date);
        h.push(b"\r\nContent-Type: text/plain\r\n");
        match framing {
            Framing::Length(n) => {
                h.push(b"Content-Length: ");
                h.push(itoa::Buffer::new().format(n).as_bytes());
                h.push(b"\r\n");
            }
            Framing::Chunked => h.push(b"Transfer-Encoding: chunked\r\n"),
        }
        match conn {
            ConnHeader::None => {}
            ConnHeader::Close => h.push(b"Connection: close\r\n"),
            ConnHeader::KeepAlive => h.push(b"Connection: keep-alive\r\n"),
        }
        h.push(b"\r\n");
        h
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            debug_assert!(false, "response head over MAX_GENERATED");
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) const OK: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// Status line and body of the answer to an error.
pub(crate) fn error_parts(e: HttpError) -> (&'static [u8], &'static [u8]) {
    match e {
        HttpError::BadRequest => (b"HTTP/1.1 400 Bad Request\r\n", b"Bad Request\n"),
        HttpError::PayloadTooLarge => (
            b"HTTP/1.1 413 Content Too Large\r\n",
            b"Content Too Large\n",
        ),
        HttpError::HeaderTooLarge => (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"Request Header Fields Too Large\n",
        ),
        HttpError::NotImplemented => (b"HTTP/1.1 501 Not Implemented\r\n", b"Not Implemented\n"),
        HttpError::VersionNotSupported => (
            b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            b"HTTP Version Not Supported\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn date_is_imf_fixdate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(&format_date(t), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            &format_date(SystemTime::UNIX_EPOCH),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
        // Far future saturates instead of producing a 30-byte year.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(&format_date(far), b"Fri, 31 Dec 9999 23:59:59 GMT");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(&format_date(before), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_unix_secs(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_unix_secs(u64::MAX),
            b"Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn body_text_repeats_the_phrase() {
        assert_eq!(&BODY_TEXT[..PHRASE.len()], PHRASE);
        assert_eq!(
            BODY_TEXT[BODY_TEXT_LEN - 1],
            PHRASE[(BODY_TEXT_LEN - 1) % PHRASE.len()]
        );
        assert!(BODY_TEXT.is_ascii());
    }

    #[test]
    fn largest_head_fits() {
        let h = Head::new(
            error_parts(HttpError::HeaderTooLarge).0,
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            Framing::Length(u64::MAX),
            ConnHeader::KeepAlive,
        );
        assert!(h
            .bytes()
            .ends_with(b"Content-Length: 18446744073709551615\r\nConnection: keep-alive\r\n\r\n"));
        assert!(h.bytes().len() < MAX_GENERATED / 2);
    }
}
