//! `--protocol http`: GET requests formatted into the worker's send buffers, and each answer checked
//! as it arrives: status 200, `Content-Length` equal to the `?length` asked for, then exactly that
//! many body bytes (nothing after them: one request is in flight per connection). The head is parsed
//! by httparse; a head split across receive buffers is kept per slot until it is complete.

use std::io::Write;

use super::*;
use crate::plan::HttpPlan;
use crate::stats::Cause;

/// Longest answer head accepted (more: `mismatch`).
const MAX_HEAD: usize = 16 * 1024;

/// Header fields an answer may have (more: `mismatch`).
const MAX_FIELDS: usize = 32;

/// Bytes a request of `plan` can take.
pub(super) fn request_capacity(plan: &HttpPlan) -> usize {
    plan.path.len() + plan.host.len() + 64
}

/// Writes `GET <path>?length=<length> HTTP/1.1` with `Host` into `buf`; returns its length.
pub(super) fn write_request(buf: &mut [u8], plan: &HttpPlan, length: u32) -> usize {
    let sep = if plan.path.contains('?') { '&' } else { '?' };
    let cap = buf.len();
    let mut w = &mut buf[..];
    // The buffer was sized by `request_capacity`, so this cannot run short.
    let _ = write!(
        w,
        "GET {}{sep}length={length} HTTP/1.1\r\nHost: {}\r\n\r\n",
        plan.path, plan.host
    );
    cap - w.len()
}

/// A seed for the http-kit draws that differs per worker and per run.
pub(super) fn seed(worker: u32) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(worker) << 48) ^ 0x9e37_79b9_7f4a_7c15
}

/// A uniform draw from `lo..=hi` (splitmix64; the tiny modulo bias does not matter here).
pub(super) fn draw(state: &mut u64, lo: u64, hi: u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let span = hi.saturating_sub(lo).saturating_add(1);
    if span == 0 {
        z
    } else {
        lo + z % span
    }
}

/// What an answer head says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not complete yet.
    Partial,
    /// 200 with `Content-Length`; the head is `len` bytes.
    Ok { len: usize, content_length: u64 },
    /// A complete head with another status.
    Status(u16),
    /// Not an HTTP/1.x answer we can check (malformed, chunked, no length).
    Bad,
}

pub(super) fn parse_head(bytes: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(bytes) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Bad,
        Ok(httparse::Status::Complete(len)) => {
            let code = resp.code.unwrap_or(0);
            if code != 200 {
                return Head::Status(code);
            }
            let mut content_length = None;
            for f in resp.headers.iter() {
                if f.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Head::Bad;
                }
                if f.name.eq_ignore_ascii_case("content-length") {
                    content_length = std::str::from_utf8(f.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if content_length.is_none() {
                        return Head::Bad;
                    }
                }
            }
            match content_length {
                Some(content_length) => Head::Ok {
                    len,
                    content_length,
                },
                None => Head::Bad,
            }
        }
    }
}

impl Worker {
    /// Checks `n` received bytes in buffer `bid` against the answer `slot` is waiting for.
    pub(super) fn check_http(&mut self, slot: u32, bid: u16, n: usize) -> Result<(), Cause> {
        let conn = self.conns[slot as usize];
        if conn.flags & F_AWAIT == 0 {
            return Err(Cause::Mismatch); // bytes nobody asked for
        }
        let data = self.bufs.data(bid, n);
        let body = if conn.flags & F_BODY != 0 {
            n
        } else {
            let held = self.partial.get_mut(&slot);
            let is_held = held.is_some();
            let head: &[u8] = match held {
                Some(h) => {
                    h.extend_from_slice(data);
                    h
                }
                None => data,
            };
            match parse_head(head) {
                Head::Partial if head.len() > MAX_HEAD => return Err(Cause::Mismatch),
                Head::Partial => {
                    if !is_held {
                        self.partial.insert(slot, data.to_vec());
                    }
                    return Ok(());
                }
                Head::Bad => return Err(Cause::Mismatch),
                Head::Status(code) => {
                    self.c.last_status = code;
                    return Err(Cause::BadStatus);
                }
                Head::Ok {
                    len,
                    content_length,
                } => {
                    if content_length != u64::from(conn.want) {
                        return Err(Cause::Mismatch);
                    }
                    let body = head.len() - len;
                    if is_held {
                        self.partial.remove(&slot);
                    }
                    self.conns[slot as usize].flags |= F_BODY;
                    body
                }
            }
        };
        let conn = &mut self.conns[slot as usize];
        let got = u64::from(conn.got) + body as u64;
        if got > u64::from(conn.want) {
            return Err(Cause::Mismatch);
        }
        conn.got = got as u32;
        if conn.got == conn.want {
            self.answered(slot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(path: &str) -> HttpPlan {
        HttpPlan {
            path: path.into(),
            host: "127.0.0.1:7000".into(),
            kit: None,
        }
    }

    #[test]
    fn requests() {
        let p = plan("/");
        let mut buf = vec![0u8; request_capacity(&p)];
        let n = write_request(&mut buf, &p, 4096);
        assert_eq!(
            &buf[..n],
            b"GET /?length=4096 HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n\r\n"
        );
        let p = plan(&format!(
            "/{}?a=b",
            "x".repeat(crate::plan::MAX_HTTP_PATH - 5)
        ));
        let mut buf = vec![0u8; request_capacity(&p)];
        let n = write_request(&mut buf, &p, u32::MAX);
        assert!(
            buf[..n].ends_with(b"?a=b&length=4294967295 HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n\r\n")
        );
    }

    #[test]
    fn heads() {
        let ok = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_head(ok),
            Head::Ok {
                len: ok.len() - 5,
                content_length: 5
            }
        );
        assert_eq!(parse_head(&ok[..20]), Head::Partial);
        assert_eq!(
            parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Head::Status(404)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Head::Bad
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n"), Head::Bad);
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n"), Head::Bad);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut s = seed(3);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = draw(&mut s, 10, 14);
            assert!((10..=14).contains(&v));
            seen[(v - 10) as usize] = true;
        }
        assert!(seen.iter().all(|&x| x));
        assert_eq!(draw(&mut s, 7, 7), 7);
    }
}
