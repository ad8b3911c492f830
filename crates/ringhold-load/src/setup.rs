//! Socket addresses in kernel form, and the `--setup syscall` path: make a socket with plain system
//! calls, bind it to its source, register it into the ring's fixed-file table and close the process
//! fd, so that the connection holds no process fd however many there are.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::IoUring;

/// A socket address as the kernel reads it. Kept at a stable address for as long as operations
/// that point to it may be prepared.
#[derive(Clone, Copy)]
pub struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in6>(),
                        sin6,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub fn source(ip: Ipv4Addr) -> RawAddr {
        RawAddr::new(SocketAddr::new(ip.into(), 0))
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        std::ptr::addr_of!(self.storage).cast()
    }

    pub fn domain(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }
}

/// The int `1`, for setsockopt operations that read it when they run.
pub static ONE: libc::c_int = 1;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Makes a socket for `domain`, binds it to `source` (address only, port chosen at connect) and puts
/// it into fixed-file slot `slot` of `ring`. The process fd is closed before returning.
pub fn socket_into_slot(
    ring: &IoUring,
    slot: u32,
    domain: i32,
    source: Option<&RawAddr>,
) -> io::Result<()> {
    // SAFETY: plain syscall; the result is checked.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket() and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(src) = source {
        // SAFETY: optval points to a live c_int of the given length.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                std::ptr::addr_of!(ONE).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        // SAFETY: the address points to `len` valid bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), src.as_ptr(), src.len) })?;
    }
    ring.submitter()
        .register_files_update(slot, &[fd.as_raw_fd()])?;
    drop(fd); // the ring holds its own reference now
    Ok(())
}

/// Checks before the run that every source address belongs to this host: binds a throwaway socket to
/// each (address only, like the connections). A missing one would otherwise fail every connection
/// from it as "no address", which reads like port exhaustion.
pub fn check_sources(sources: &[Ipv4Addr]) -> Result<(), String> {
    let mut missing = Vec::new();
    for ip in sources {
        let src = RawAddr::source(*ip);
        // SAFETY: plain syscall; the result is checked.
        let fd = match cvt(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        }) {
            Ok(fd) => fd,
            Err(e) => return Err(format!("checking --sources: socket: {e}")),
        };
        // SAFETY: fd was just returned by socket() and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: optval points to a live c_int of the given length.
        let _ = cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                std::ptr::addr_of!(ONE).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        });
        // SAFETY: the address points to `len` valid bytes.
        if let Err(e) = cvt(unsafe { libc::bind(fd.as_raw_fd(), src.as_ptr(), src.len) }) {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                missing.push(*ip);
            } else {
                return Err(format!("checking --sources: binding {ip}: {e}"));
            }
        }
    }
    match missing.as_slice() {
        [] => Ok(()),
        [first, ..] => Err(format!(
            "{} of the --sources are not addresses of this host (first: {first}): add them (e.g. `ip addr add {first}/32 dev lo` \
             for a local test, or secondary addresses the servers route back to), or pick sources this host owns; in \
             Kubernetes the pod needs hostNetwork to use the node's addresses",
            missing.len()
        )),
    }
}

/// Every IPv4 address of this host's interfaces (getifaddrs), in interface order.
pub fn host_ipv4_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says how long it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
