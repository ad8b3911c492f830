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
