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

/// Why io_uring cannot be used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub why: String,
    /// The kernel has no io_uring at all (io_uring_setup gives ENOSYS and no seccomp filter is on this
    /// process to fake that), as opposed to a kernel that has it and refuses it (seccomp, the
    /// `kernel.io_uring_disabled` sysctl, a resource limit).
    pub kernel_lacks_it: bool,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Why io_uring cannot be used here, if it cannot: disabled by sysctl, or refused by the kernel
/// (ENOSYS: too old or compiled out, or a seccomp filter; EPERM: seccomp or io_uring_disabled).
pub fn io_uring_unavailable() -> Option<Unavailable> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Some(Unavailable {
                why: "kernel.io_uring_disabled = 2".into(),
                kernel_lacks_it: false,
            });
        }
    }
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: io_uring_setup(2) writes at most sizeof(struct io_uring_params) = 120 bytes into `params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let filtered = seccomp_mode().is_some_and(|m| m != 0);
        return Some(Unavailable {
            why: format!(
                "io_uring_setup failed: {e}{}",
                if filtered {
                    " (a seccomp filter is on this process)"
                } else {
                    ""
                }
            ),
            kernel_lacks_it: e.raw_os_error() == Some(libc::ENOSYS) && !filtered,
        });
    }
    // SAFETY: closing the ring descriptor we just created.
    unsafe { libc::close(fd as libc::c_int) };
    None
}

/// The `Seccomp:` mode of this process (0 none, 1 strict, 2 filter), if the kernel reports it.
fn seccomp_mode() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The scheduler state letter (R running, S sleeping, D disk wait, …) of every thread of `pid`.
pub fn thread_states(pid: u32) -> io::Result<Vec<(u32, char)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread that ended between read_dir and here is simply not counted.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .and_then(|s| s.chars().next())
            .ok_or_else(|| io::Error::other("bad stat"))?;
        out.push((tid, state));
    }
    Ok(out)
}

/// Samples the scheduler state of every thread of a process from a background thread (every 2 ms)
/// until [`SleepWatch::finish`]: which threads were ever seen not running. A thread in a busy loop
/// (e.g. retrying accept on EMFILE) is always runnable (R) and is never seen asleep, however loaded
/// the machine is; a thread that waits for events sleeps (S) between them. This replaces "CPU time
/// below some share of the wall clock", which a loaded machine makes meaningless.
pub struct SleepWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<std::collections::BTreeMap<u32, ThreadSamples>>,
}

/// What [`SleepWatch`] saw of one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSamples {
    /// Samples in which the thread existed.
    pub seen: u32,
    /// Samples in which it was not runnable (any state but R).
    pub asleep: u32,
}

impl SleepWatch {
    pub fn start(pid: u32) -> SleepWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<u32, ThreadSamples>::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(states) = thread_states(pid) {
                    for (tid, state) in states {
                        let e = seen.entry(tid).or_default();
                        e.seen += 1;
                        if state != 'R' {
                            e.asleep += 1;
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            seen
        });
        SleepWatch { stop, handle }
    }

    /// Stops sampling; per thread id, what was seen.
    pub fn finish(self) -> std::collections::BTreeMap<u32, ThreadSamples> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
