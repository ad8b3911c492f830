//! Client-side socket helpers: connections with deadlines, a deterministic byte stream to send and
//! check without keeping it in memory, and writer/reader threads that cannot deadlock a test.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a blocking read or write may wait before the test calls it a hang (before scaling by
/// `RINGHOLD_TEST_TIMEOUT_SCALE`: use [`io_timeout`]).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// [`IO_TIMEOUT`] scaled by `RINGHOLD_TEST_TIMEOUT_SCALE`.
pub fn io_timeout() -> Duration {
    crate::scaled(IO_TIMEOUT)
}

/// A blocking client connection with [`io_timeout`] on reads and writes and TCP_NODELAY.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// [`connect`] that returns the error.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, crate::secs(10))?;
    s.set_read_timeout(Some(io_timeout()))?;
    s.set_write_timeout(Some(io_timeout()))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A deterministic pseudo-random byte stream (xorshift64*), so that a writer and a reader can both
/// produce it from a seed and no test keeps megabytes around to compare.
#[derive(Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }

    /// The first `n` bytes of the stream of `seed`.
    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        Pattern::new(seed).fill(&mut v);
        v
    }
}

/// Writes `len` bytes of the stream of `seed` in chunks of at most `chunk`.
pub fn write_pattern(s: &mut impl Write, seed: u64, len: usize, chunk: usize) -> io::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; chunk.clamp(1, 1 << 20).min(len.max(1))];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Reads exactly `len` bytes and checks them against the stream of `seed`. The error says at which
/// offset the echo went wrong or stopped.
pub fn read_pattern(s: &mut impl Read, seed: u64, len: usize) -> Result<(), String> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < len {
        let n = (len - got).min(buf.len());
        let r = match s.read(&mut buf[..n]) {
            Ok(0) => return Err(format!("EOF after {got} of {len} bytes")),
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{e} after {got} of {len} bytes")),
        };
        p.fill(&mut want[..r]);
        if let Some(i) = (0..r).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "wrong byte at offset {} of {len}: got {:#04x}, sent {:#04x}",
                got + i,
                buf[i],
                want[i]
            ));
        }
        got += r;
    }
    Ok(())
}

/// How a connection ended from the client's side.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A clean FIN: read returned 0.
    Eof,
    /// ECONNRESET (the server closed with unread data, or aborted).
    Reset,
    /// Nothing happened within the read timeout.
    Timeout,
    /// More bytes arrived first (how many).
    Data(usize),
    Other(String),
}

/// Reads once more and says how the connection ends (expects no more data).
pub fn read_end(s: &mut TcpStream) -> End {
    let mut b = [0u8; 4096];
    loop {
        return match s.read(&mut b) {
            Ok(0) => End::Eof,
            Ok(n) => End::Data(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                End::Timeout
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => End::Reset,
            Err(e) => End::Other(e.to_string()),
        };
    }
}

/// Sends `msg` and reads exactly its echo back.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    let mut got = 0;
    while got < back.len() {
        match s.read(&mut back[got..]) {
            Ok(0) => return Err(format!("EOF after {got} of {} echoed bytes", msg.len())),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "read after {got} of {} echoed bytes: {e}",
                    msg.len()
                ))
            }
        }
    }
    if back != msg {
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}

/// Echoes `len` bytes of the stream `seed` through `s` with a writer thread and a reader thread, so
/// that neither side waits on the other (the test cannot deadlock however the server buffers).
/// `then_shutdown` half-closes after writing. Returns the reader's verdict.
pub fn echo_stream(
    s: TcpStream,
    seed: u64,
    len: usize,
    chunk: usize,
    then_shutdown: bool,
) -> Result<TcpStream, String> {
    let mut w = s.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    let writer: JoinHandle<io::Result<()>> = thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            write_pattern(&mut w, seed, len, chunk)?;
            if then_shutdown {
                w.shutdown(Shutdown::Write)?;
            }
            Ok(())
        })
        .map_err(|e| format!("spawn writer: {e}"))?;
    let mut r = s;
    let res = read_pattern(&mut r, seed, len);
    if res.is_err() {
        // Unblock the writer if the server stopped reading.
        let _ = r.shutdown(Shutdown::Both);
    }
    let wres = writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())?;
    res?;
    wres.map_err(|e| format!("write: {e}"))?;
    Ok(r)
}

/// Send and receive queue lengths (bytes) of the TCP socket `local -> remote`, from the kernel's
/// sock_diag (exact lookup). Used to wait until the server has read everything a client sent.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let d = crate::sockdiag::lookup(local, remote).ok()??;
    Some((d.wqueue as u64, d.rqueue as u64))
}

/// TCP state of the socket `local -> remote` (1 = ESTABLISHED, 7 = CLOSE, 8 = CLOSE_WAIT, …);
/// `None` when the kernel no longer has it.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    crate::sockdiag::lookup(local, remote)
        .ok()?
        .map(|d| d.state)
}

/// Sets SO_LINGER {on, 0}: close() then sends RST and drops whatever was not sent.
pub fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// Connects with SO_RCVBUF set first (the kernel doubles it and applies a floor), so that the echo
/// cannot all be parked in this client's receive queue.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    sock.connect_timeout(&addr.into(), crate::secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(io_timeout()))
        .expect("read timeout");
    s.set_write_timeout(Some(io_timeout()))
        .expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}
