//! Whether netfilter connection tracking applies here: one loopback connection, then a look at the
//! namespace's conntrack table. Only 127.0.0.1 is touched.

use std::net::{TcpListener, TcpStream};

use super::sys::sysctl_u64;

/// `None` when the module is not loaded or the probe could not run; `Some(true)` when this
/// network namespace tracks connections (an entry appeared for the probe, or entries exist).
pub fn conntrack_applies() -> Option<bool> {
    let before = sysctl_u64("net.netfilter.nf_conntrack_count")?;
    if before > 0 {
        return Some(true);
    }
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    let client = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let (server, _) = listener.accept().ok()?;
    let after = sysctl_u64("net.netfilter.nf_conntrack_count").unwrap_or(0);
    let listed = std::fs::read_to_string("/proc/net/nf_conntrack")
        .map(|t| t.contains(&format!("dport={port} ")))
        .unwrap_or(false);
    drop((client, server));
    Some(after > before || listed)
}
