//! One SO_REUSEPORT listener per shard, made with socket2, with errors that say what to do.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `n` listeners on `addr`, all with SO_REUSEPORT. With port 0 the first one picks the port and
/// the others join it. Before that, a plain bind (no SO_REUSEPORT) checks that no other process
/// already listens there with SO_REUSEPORT, which would otherwise silently share our traffic.
pub fn bind_all(addr: SocketAddr, n: usize, backlog: i32) -> Result<Vec<TcpListener>, String> {
    if addr.port() != 0 {
        let probe = new_socket(addr).map_err(|e| explain(addr, e))?;
        probe.bind(&addr.into()).map_err(|e| explain(addr, e))?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n {
        let s = new_socket(at).map_err(|e| explain(at, e))?;
        s.set_reuse_port(true).map_err(|e| explain(at, e))?;
        s.bind(&at.into()).map_err(|e| explain(at, e))?;
        s.listen(backlog).map_err(|e| explain(at, e))?;
        s.set_nonblocking(true).map_err(|e| explain(at, e))?;
        let l: TcpListener = s.into();
        if at.port() == 0 {
            at = l.local_addr().map_err(|e| explain(at, e))?;
        }
        out.push(l);
    }
    Ok(out)
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

fn explain(addr: SocketAddr, e: io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (another process listens there: stop it or pick another --listen)"
        }
        Some(libc::EADDRNOTAVAIL) => " (not an address of this host: check --listen)",
        Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (out of file descriptors: see `ringhold doctor`)"
        }
        _ => "",
    };
    format!("cannot listen on {addr}: {e}{hint}")
}

/// net.core.somaxconn, which caps every listen backlog.
pub fn somaxconn() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}
