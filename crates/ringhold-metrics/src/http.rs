//! A tiny blocking HTTP/1.1 responder for `GET /metrics` on its own thread (std::net only, no async
//! runtime). One request per connection (`Connection: close`), requests served one after another; a
//! client that stalls is dropped after a short timeout so it cannot hold the exporter.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Request heads longer than this are refused (Prometheus sends a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves it from a detached thread; `render` produces the /metrics body.
pub(crate) fn serve<F>(addr: SocketAddr, render: F) -> io::Result<SocketAddr>
where
    F: Fn() -> String + Send + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::Builder::new()
        .name("ringhold-metrics".into())
        .spawn(move || accept_loop(listener, render))?;
    Ok(local)
}

fn accept_loop<F: Fn() -> String>(listener: TcpListener, render: F) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = handle(s, &render) {
                    tracing::debug!("metrics request failed: {e}");
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays.
                tracing::warn!("metrics listener: accept failed: {e}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn handle<F: Fn() -> String>(mut s: TcpStream, render: &F) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut s)?;
    let (status, content_type, body, head_only) = respond(&head, render);
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    s.write_all(out.as_bytes())?;
    if !head_only {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}

/// Reads up to the end of the request head (the body of a GET, if any, is ignored).
fn read_head(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Ok(head);
        }
    }
}

/// (status line, content type, body, HEAD request).
fn respond<F: Fn() -> String>(
    head: &[u8],
    render: &F,
) -> (&'static str, &'static str, String, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t),
        _ => {
            return (
                "400 Bad Request",
                "text/plain",
                "bad request\n".into(),
                false,
            )
        }
    };
    if head.len() > MAX_HEAD {
        return (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".into(),
            false,
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
            false,
        );
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => ("200 OK", CONTENT_TYPE, render(), head_only),
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n".into(),
            head_only,
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
            head_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(head: &str) -> (&'static str, String) {
        let (status, _, body, _) = respond(head.as_bytes(), &|| "m 1\n".to_string());
        (status, body)
    }

    #[test]
    fn routes() {
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("200 OK", "m 1\n".into())
        );
        assert_eq!(r("GET /metrics?x=1 HTTP/1.0\r\n\r\n").0, "200 OK");
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(r("garbage\r\n\r\n").0, "400 Bad Request");
        assert_eq!(r("").0, "400 Bad Request");
        let (_, _, _, head_only) = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &String::new);
        assert!(head_only);
    }

    #[test]
    fn serves_over_tcp() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || "hello 1\n".to_string()).unwrap();
        assert_ne!(addr.port(), 0);
        // Deadlines on every step: a responder bug fails the test instead of hanging it.
        let mut s = TcpStream::connect_timeout(&addr, ringhold_tests::secs(5)).unwrap();
        s.set_read_timeout(Some(ringhold_tests::secs(10))).unwrap();
        s.set_write_timeout(Some(ringhold_tests::secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 8\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nhello 1\n"), "{resp}");
    }
}
