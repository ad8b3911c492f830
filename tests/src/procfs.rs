//! What the kernel says about a process: resident memory, CPU time, open descriptors; and whether
//! io_uring is available at all.

use std::io;

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS line"))
}

/// utime + stime of `pid` (all threads), in clock ticks (see [`clock_ticks_per_sec`]).
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')').ok_or_else(|| io::Error::other("bad stat"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (get(14), get(15)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(io::Error::other("bad stat")),
    }
}

/// sysconf(_SC_CLK_TCK), usually 100.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Whether `pid` has exited (a zombie not reaped yet counts as exited).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                == Some("Z")
        }
        Err(_) => true,
    }
}

/// Number of open descriptors of `pid`.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Why io_uring cannot be used here, if it cannot: disabled by sysctl, or refused by the kernel
/// (ENOSYS: too old or compiled out; EPERM: seccomp or io_uring_disabled).
pub fn io_uring_unavailable() -> Option<String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Some("kernel.io_uring_disabled = 2".into());
        }
    }
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: io_uring_setup(2) writes at most sizeof(struct io_uring_params) = 120 bytes into `params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Some(format!("io_uring_setup failed: {e}"));
    }
    // SAFETY: closing the ring descriptor we just created.
    unsafe { libc::close(fd as libc::c_int) };
    None
}
