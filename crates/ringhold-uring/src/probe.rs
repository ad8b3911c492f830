//! Start-up check: can this process use io_uring the way ringhold needs? The error names the cause.

use io_uring::{opcode, IoUring, Probe};

/// Ok if io_uring works with the opcodes and features ringhold needs; otherwise the cause, in words.
pub fn probe() -> Result<(), String> {
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".into(),
                Some(libc::EPERM) => {
                    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!(
                        "io_uring_setup was refused (EPERM): kernel.io_uring_disabled = {disabled} \
                         (0 allows it), or a seccomp filter blocks it (containers: use an io_uring-aware \
                         seccomp profile)"
                    )
                }
                Some(libc::ENOMEM) => {
                    "io_uring_setup failed with ENOMEM: raise the locked-memory limit (ulimit -l)"
                        .into()
                }
                _ => format!("io_uring_setup failed: {e}"),
            })
        }
    };
    if !ring.params().is_feature_ext_arg() {
        return Err("this kernel's io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+ needed)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("cannot probe io_uring opcodes: {e}"))?;
    let needed = [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ];
    for (code, name) in needed {
        if !p.is_supported(code) {
            return Err(format!("this kernel's io_uring lacks IORING_OP_{name}"));
        }
    }
    Ok(())
}

/// Whether this kernel caps a multishot receive's total bytes (`sqe->optlen`, Linux 6.17+: the
/// receive ends, without `IORING_CQE_F_MORE`, once that many bytes arrived). Older kernels refuse a
/// nonzero `optlen` with EINVAL at prep time, so it is asked once, on a socket pair: a capped receive
/// on a buffer group that does not exist fails with ENOBUFS where the cap is known.
pub fn multishot_recv_cap() -> bool {
    static CAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| ask_multishot_recv_cap().unwrap_or(false))
}

fn ask_multishot_recv_cap() -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    b.write_all(b"x")?;
    let mut ring = IoUring::new(2)?;
    let e = with_recv_cap(
        opcode::RecvMulti::new(io_uring::types::Fd(a.as_raw_fd()), u16::MAX).build(),
        1,
    );
    // SAFETY: the entry refers to `a`, which outlives the ring's use of it (the ring is dropped,
    // cancelling anything armed, before `a`).
    unsafe { ring.submission().push(&e.user_data(1)) }.map_err(std::io::Error::other)?;
    ring.submit_and_wait(1)?;
    let res = ring.completion().next().map_or(0, |c| c.result());
    drop(ring);
    Ok(res == -libc::ENOBUFS)
}

/// Sets a multishot receive's total-bytes cap (`sqe->optlen`, bytes 44..48 of the 64-byte SQE; the
/// io-uring crate has no builder method for it yet). Only for kernels where
/// [`multishot_recv_cap`] is true.
pub fn with_recv_cap(e: io_uring::squeue::Entry, cap: u32) -> io_uring::squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`; any bytes
    // are a valid `[u8; 64]`, and rewriting the 4-byte `optlen` field keeps it a valid SQE.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&cap.to_ne_bytes());
    // SAFETY: the same 64 bytes back into the `#[repr(C)]` wrapper they came from.
    unsafe { std::mem::transmute::<[u8; 64], io_uring::squeue::Entry>(raw) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_caps_multishot_receives() {
        // Linux 6.17+ (this machine and CI run 6.18): the cap must be found, or the engine falls back
        // to multishot receives that can take many buffers before a pause lands.
        let v = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut it = v
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        assert_eq!(
            super::multishot_recv_cap(),
            (major, minor) >= (6, 17),
            "kernel {v}"
        );
    }
}
