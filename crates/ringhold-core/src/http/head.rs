//! A request head: parsed by httparse, then read for what this server needs (method, version,
//! persistence, body framing, `Expect`, `?length`). The head is parsed whole every time it is handed in
//! (a partial head is held by the machine and handed in again, longer), so nothing here keeps state.

use std::mem::MaybeUninit;

use super::response::BODY_TEXT_LEN;
use super::{HttpConfig, HttpError, Method};

/// Most header fields in one request head (more: 431). httparse needs a fixed array; it lives on the
/// stack, uninitialised, for the duration of one parse.
pub const MAX_HEADERS: usize = 100;

/// `?length` when the request has none.
pub const DEFAULT_LENGTH: u32 = 1024;

/// How the request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// What the server needs to know about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: Method,
    /// `Some(true)` for HTTP/1.1, `Some(false)` for HTTP/1.0.
    pub http11: bool,
    /// The connection ends after this request (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    pub body: Body,
    /// HTTP/1.1 `Expect: 100-continue` on a request with a body.
    pub expect_continue: bool,
    /// GET/HEAD: how many bytes of the body text to answer with.
    pub length: u32,
}

pub(crate) enum Parsed {
    /// The head is not complete yet (and within the limit): hold it.
    Partial,
    /// A complete head of `len` bytes.
    Done(Request, usize),
    /// A head the server answers with an error.
    Fail(Method, HttpError),
}

/// Parses the head at the start of `bytes`. Only the first `max_header_bytes` bytes are ever looked
/// at, so the result depends on those alone and not on how the bytes were split across reads.
pub(crate) fn parse(cfg: &HttpConfig, bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(cfg.max_header_bytes)];
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(window, &mut headers) {
        Ok(httparse::Status::Complete(len)) => match interpret(cfg, &req) {
            Ok(r) => Parsed::Done(r, len),
            Err((m, e)) => Parsed::Fail(m, e),
        },
        Ok(httparse::Status::Partial) if bytes.len() > window.len() => {
            Parsed::Fail(method_of(&req), HttpError::HeaderTooLarge)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Fail(method_of(&req), HttpError::HeaderTooLarge)
        }
        Err(httparse::Error::Version) => Parsed::Fail(method_of(&req), version_error(window)),
        Err(_) => Parsed::Fail(method_of(&req), HttpError::BadRequest),
    }
}

fn method_of(req: &httparse::Request<'_, '_>) -> Method {
    req.method.map_or(Method::Other, Method::from_token)
}

/// httparse reports any bad version token as `Version`. `HTTP/` and a digit is a version we do not
/// speak (505); anything else is not HTTP at all (400). The decision needs only the token's first six
/// bytes, which are in hand whenever httparse reports the error, so it does not depend on splits.
fn version_error(head: &[u8]) -> HttpError {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = head[start..].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let token = line.split(|&b| b == b' ').nth(2).unwrap_or(&[]);
    match token {
        [b'H', b'T', b'T', b'P', b'/', d, ..] if d.is_ascii_digit() => {
            HttpError::VersionNotSupported
        }
        _ => HttpError::BadRequest,
    }
}

fn interpret(
    cfg: &HttpConfig,
    req: &httparse::Request<'_, '_>,
) -> Result<Request, (Method, HttpError)> {
    let method = method_of(req);
    if method == Method::Other {
        return Err((method, HttpError::NotImplemented));
    }
    let bad = |e| Err((method, e));
    let http11 = req.version == Some(1);

    let mut hosts = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut length: Option<u64> = None;
    let mut length_too_large = false;
    let mut te_count = 0;
    let mut te_chunked = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let v = match parse_decimal(h.value) {
                Some(Some(v)) => v,
                Some(None) => {
                    length_too_large = true;
                    u64::MAX
                }
                None => return bad(HttpError::BadRequest),
            };
            // Repeated Content-Length fields must agree (RFC 9112 6.3).
            if length.is_some_and(|l| l != v) {
                return bad(HttpError::BadRequest);
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            te_chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }

    // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is a 400.
    if (http11 && hosts != 1) || hosts > 1 {
        return bad(HttpError::BadRequest);
    }
    let body = if te_count > 0 {
        // Both framings at once is how requests get smuggled; HTTP/1.0 has no chunked coding.
        if length.is_some() || !http11 {
            return bad(HttpError::BadRequest);
        }
        if te_count > 1 || !te_chunked {
            return bad(HttpError::NotImplemented);
        }
        Body::Chunked
    } else {
        match length {
            Some(_) if length_too_large => return bad(HttpError::PayloadTooLarge),
            Some(n) if n > cfg.max_body_bytes => return bad(HttpError::PayloadTooLarge),
            Some(0) | None => Body::None,
            Some(n) => Body::Length(n),
        }
    };
    let close = conn_close || !http11 && !conn_keep_alive;
    let length = match method {
        Method::Get | Method::Head => {
            match query_length(req.path.unwrap_or(""), cfg.length_cap()) {
                Some(n) => n,
                None => return bad(HttpError::BadRequest),
            }
        }
        _ => 0,
    };
    Ok(Request {
        method,
        http11,
        close,
        body,
        expect_continue: expect_continue && http11 && body != Body::None,
        length,
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `None`: not a decimal number; `Some(None)`: a number too large for u64.
fn parse_decimal(v: &[u8]) -> Option<Option<u64>> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    }))
}

/// The `length` query parameter of `target` (the first one), 1..=`cap`; [`DEFAULT_LENGTH`] (at most
/// `cap`) when there is none; `None` when it is not a number in range.
fn query_length(target: &str, cap: u32) -> Option<u32> {
    let default = DEFAULT_LENGTH.min(cap);
    let Some((_, query)) = target.split_once('?') else {
        return Some(default);
    };
    let query = query.split('#').next().unwrap_or("");
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "length" {
            return match parse_decimal(value.as_bytes()) {
                Some(Some(n)) if (1..=u64::from(cap)).contains(&n) => u32::try_from(n).ok(),
                _ => None,
            };
        }
    }
    Some(default)
}

impl HttpConfig {
    /// The largest `?length` answered: `max_length`, within 1..=[`BODY_TEXT_LEN`].
    pub fn length_cap(&self) -> u32 {
        self.max_length.clamp(1, BODY_TEXT_LEN as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_parameter() {
        let cap = 4096;
        assert_eq!(query_length("/", cap), Some(1024));
        assert_eq!(query_length("/x?a=1", cap), Some(1024));
        assert_eq!(query_length("/?length=1", cap), Some(1));
        assert_eq!(query_length("/p?a=b&length=4096&length=9", cap), Some(4096));
        assert_eq!(query_length("/?length=0007#frag", cap), Some(7));
        assert_eq!(query_length("http://h/?length=5", cap), Some(5));
        for bad in [
            "/?length=0",
            "/?length=4097",
            "/?length=",
            "/?length",
            "/?length=-1",
            "/?length=+1",
            "/?length=1x",
            "/?length=99999999999999999999999",
        ] {
            assert_eq!(query_length(bad, cap), None, "{bad}");
        }
        assert_eq!(query_length("/", 10), Some(10));
    }

    #[test]
    fn version_classes() {
        assert_eq!(
            version_error(b"GET / HTTP/2.0\r\n"),
            HttpError::VersionNotSupported
        );
        assert_eq!(
            version_error(b"\r\nGET / HTTP/1.2"),
            HttpError::VersionNotSupported
        );
        assert_eq!(
            version_error(b"GET / HTTP/3 x"),
            HttpError::VersionNotSupported
        );
        assert_eq!(version_error(b"GET / HTTX/1.1\r\n"), HttpError::BadRequest);
        assert_eq!(version_error(b"GET / HTTP/x"), HttpError::BadRequest);
        assert_eq!(version_error(b"GET /\r\n"), HttpError::BadRequest);
    }

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal(b"0"), Some(Some(0)));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(Some(u64::MAX)));
        assert_eq!(parse_decimal(b"18446744073709551616"), Some(None));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1 2"), None);
    }
}
