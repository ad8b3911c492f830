//! One TCP socket's state and queues, looked up by its exact 4-tuple through NETLINK_SOCK_DIAG
//! (what `ss` uses). An exact lookup is a hash probe in the kernel, so it stays cheap on a machine that
//! holds millions of sockets, where reading /proc/net/tcp takes seconds.

use std::io;
use std::net::SocketAddr;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_NOCOOKIE: u32 = !0;

/// What the kernel reports for one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDiag {
    /// TCP state: 1 ESTABLISHED, 7 CLOSE, 8 CLOSE_WAIT, … (include/net/tcp_states.h).
    pub state: u8,
    /// Bytes received and not yet read by the socket's owner.
    pub rqueue: u32,
    /// Bytes written and not yet acknowledged by the peer.
    pub wqueue: u32,
}

/// Looks up the TCP socket whose local address is `local` and remote address `remote`.
/// `Ok(None)` when the kernel has no such socket (closed and gone). IPv4 and IPv6.
///
/// The kernel answers an exact lookup the way it routes a packet: with the connection if it exists,
/// else with the socket listening on `local` (state LISTEN, remote port 0). That answer is not the
/// connection asked for, so it counts as "no such socket" here.
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpDiag>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(io::Error::other("mixed address families")),
    };
    // struct nlmsghdr (16) + struct inet_diag_req_v2 (8 + inet_diag_sockid 48) = 72 bytes.
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
    req[16] = family as u8;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    let id = &mut req[24..72];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    put_ip(&mut id[4..20], local);
    put_ip(&mut id[20..36], remote);
    id[40..44].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    id[44..48].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());

    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    // SAFETY: send reads `req.len()` bytes from a live buffer; the netlink socket is ours.
    let n = unsafe { libc::send(fd.0, req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    // SAFETY: recv writes at most `buf.len()` bytes into a live buffer.
    let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let msg = &buf[..n as usize];
    if msg.len() < 16 {
        return Err(io::Error::other("short netlink reply"));
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty == NLMSG_ERROR {
        let err = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        return match -err {
            0 => Ok(None),
            libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if ty != SOCK_DIAG_BY_FAMILY || msg.len() < 16 + 72 {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {ty}"
        )));
    }
    // struct inet_diag_msg: family, state, timer, retrans, id (48), expires, rqueue, wqueue, …
    let d = &msg[16..];
    // id: sport, dport (2 each), src, dst (16 each), as in the request.
    if d[4..40] != req[24..60] {
        return Ok(None);
    }
    let u32_at = |o: usize| u32::from_ne_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
    Ok(Some(TcpDiag {
        state: d[1],
        rqueue: u32_at(56),
        wqueue: u32_at(60),
    }))
}

fn put_ip(dst: &mut [u8], a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => dst[0..4].copy_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => dst[0..16].copy_from_slice(&v6.ip().octets()),
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor we own.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::lookup;

    #[test]
    fn sees_state_and_unread_bytes_of_one_socket() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, peer) = l.accept().expect("accept");
        c.write_all(&[7u8; 1000]).expect("write");
        let server_side = s.local_addr().expect("addr");
        let ok = crate::wait_until(crate::secs(5), || {
            lookup(server_side, peer)
                .expect("lookup")
                .is_some_and(|d| d.rqueue == 1000)
        });
        assert!(ok, "server side: {:?}", lookup(server_side, peer));
        assert_eq!(
            lookup(server_side, peer).expect("lookup").map(|d| d.state),
            Some(1)
        );
        let client_side = c.local_addr().expect("addr");
        assert_eq!(
            lookup(client_side, server_side)
                .expect("lookup")
                .map(|d| d.rqueue),
            Some(0)
        );
        // Reset and gone while the listener is still there: the kernel would answer with the
        // listener, which is not this connection.
        socket2::SockRef::from(&s)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("SO_LINGER");
        drop(s);
        assert_eq!(lookup(server_side, peer).expect("lookup"), None);
        drop(c);
        let gone = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(lookup(gone, gone).expect("lookup"), None);
    }
}
