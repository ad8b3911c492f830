//! The syscalls the epoll engine makes, each behind a safe function that returns `io::Result`.
//!
//! All `unsafe` of the engine lives here. Descriptors the engine owns are `OwnedFd`s; a connection's fd
//! is the exception: its ownership moves into the shard's slot table (slot index = fd) with
//! [`OwnedFd::into_raw_fd`] and comes back out with [`take_owned`] when the connection is closed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use ringhold_core::Keepalive;

/// Calls a libc function and turns `-1` into `Err(io::Error::last_os_error())` (as mio does).
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every call site passes descriptors it owns or borrows for the duration of the call and
        // pointers to live memory of the size it passes along (see the comment at each call site).
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Takes back ownership of a connection's descriptor so that dropping the result closes it.
///
/// # Safety
/// `fd` must be an open descriptor that the caller owns (it came from [`OwnedFd::into_raw_fd`]) and that
/// nothing uses or closes after this call.
pub unsafe fn take_owned(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller (see above).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: only called with a descriptor the kernel has just returned to us, which nothing else holds.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

/// The zeroed event array `Epoll::wait` fills.
pub fn event_buffer(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        Ok(Epoll { fd: owned(fd) })
    }

    /// Registers `fd` for `events`, tagged with `data`.
    pub fn add(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY (syscall!): `ev` lives across the call; the kernel copies it.
        syscall!(epoll_ctl(
            self.fd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            &mut ev
        ))?;
        Ok(())
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY (syscall!): a null event pointer is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        syscall!(epoll_ctl(
            self.fd.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            ptr::null_mut()
        ))?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns how many entries of `events` were filled.
    /// An interrupted wait returns 0.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY (syscall!): `events` is a live, writable array of `max` entries.
        match syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            events.as_mut_ptr(),
            max,
            timeout_ms
        )) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` without the peer address.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY (syscall!): null address pointers ask the kernel not to report the peer address.
    let fd = syscall!(accept4(
        listener,
        ptr::null_mut(),
        ptr::null_mut(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    Ok(owned(fd))
}

/// Receives into `buf`; `Ok(0)` is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY (syscall!): `buf` is writable for `buf.len()` bytes during the call.
    let n = syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))?;
    Ok(n as usize)
}

/// Sends from `buf` with MSG_NOSIGNAL, so that a closed peer gives EPIPE rather than SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY (syscall!): `buf` is readable for `buf.len()` bytes during the call.
    let n = syscall!(send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY (syscall!): the option value points at a live c_int of the size passed.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const i32).cast(),
        std::mem::size_of::<i32>() as libc::socklen_t
    ))?;
    Ok(())
}

pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

fn secs(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}

/// SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT.
pub fn set_keepalive(fd: RawFd, k: &Keepalive) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(k.idle))?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(k.interval))?;
    set_int_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        k.count.min(i32::MAX as u32) as i32,
    )
}

/// The pending socket error (SO_ERROR), 0 if none. Reading it clears it.
pub fn so_error(fd: RawFd) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY (syscall!): value and len are live and writable; len holds the size of value.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut value as *mut i32).cast(),
        &mut len
    ))?;
    Ok(value)
}

/// The spare descriptor of the EMFILE trick: `/dev/null`, read-only.
pub fn open_spare() -> io::Result<OwnedFd> {
    // SAFETY (syscall!): the path is a NUL-terminated static string.
    let fd = syscall!(open(
        c"/dev/null".as_ptr(),
        libc::O_RDONLY | libc::O_CLOEXEC
    ))?;
    Ok(owned(fd))
}

/// SO_LINGER {on, 0}: the next close sends an RST and frees the socket's queues at once.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY (syscall!): the option value points at a live `linger` of the size passed.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&l as *const libc::linger).cast(),
        std::mem::size_of::<libc::linger>() as libc::socklen_t
    ))?;
    Ok(())
}

/// Shuts down the write side (FIN), for a lingering close.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY (syscall!): plain integer arguments.
    syscall!(shutdown(fd, libc::SHUT_WR))?;
    Ok(())
}

/// Whole seconds since the Unix epoch by the coarse wall clock: `CLOCK_REALTIME_COARSE` is read from
/// the vDSO (no system call, a few ns) and lags `CLOCK_REALTIME` by at most one kernel tick (≤ 4 ms).
/// Read once per loop turn for the `Date` header. `SystemTime` if the coarse clock is unavailable.
pub fn wall_second() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        return u64::try_from(ts.tv_sec).unwrap_or(0);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_errors_carry_errno() {
        let e = syscall!(close(-1)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn spare_opens_and_closes() {
        let a = open_spare().unwrap();
        assert!(a.as_raw_fd() >= 0);
    }
}
