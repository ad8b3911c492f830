//! Harness for ringhold's end-to-end tests (tests/tests/*.rs): starts the real `ringhold` binary as a
//! child process on an ephemeral loopback port, drives it with real sockets and real client programs,
//! and reads what the kernel says about it (/proc). Every server test runs on both engines through
//! [`both_engines!`], the way monoio runs each test on both of its drivers.
//!
//! Rules the tests follow: wait for events (EOF, process exit, a kernel socket state, a log line) with a
//! deadline instead of sleeping; bound every loop in count and time; stay far below the fd limit of the
//! test process (heavy tests hold [`serial`] and put more than ~1000 sockets into client subprocesses);
//! scale every deadline by `RINGHOLD_TEST_TIMEOUT_SCALE` ([`secs`], [`scaled`]); skip only what the
//! machine lacks, and say so ([`skip`]). Under `CI` (set to anything non-empty) a skip is a failure,
//! since `.ci/run` installs every tool; the one exception is a kernel built without io_uring at all
//! (see [`uring_usable`]).
//!
//! What this crate must not do: talk to anything but loopback, or leave a server running (the
//! [`Server`] handle kills its child on drop).

pub mod metrics;
pub mod net;
pub mod procfs;
pub mod server;
pub mod sockdiag;
pub mod tools;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use net::{connect, Pattern};
pub use server::{Server, ServerBuilder};

/// The two engines behind `ringhold serve --engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Uring,
    Epoll,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::Uring, Engine::Epoll];

    /// The value of `--engine`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }

    /// Why this engine cannot run on this machine, if it cannot (checked with the kernel directly, not
    /// with ringhold, so that a ringhold bug is never mistaken for a missing kernel feature).
    pub fn unsupported(self) -> Option<procfs::Unavailable> {
        match self {
            Engine::Epoll => None,
            Engine::Uring => procfs::io_uring_unavailable(),
        }
    }
}

/// Whether this is a CI run: `CI` is set to any non-empty value (`.ci/run` sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips what follows for `reason`: prints `SKIP <reason>`, or panics with it under `CI`, where
/// `.ci/run` has installed everything the tests use and a skip would turn a failure into a pass.
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("{reason} (CI is set: a skip is a failure here)");
    }
    eprintln!("SKIP {reason}");
}

/// Whether io_uring can be used here; if not, says why and skips `test`. A kernel that does not have
/// io_uring at all (ENOSYS with no seccomp filter) skips even under `CI`: nothing can run there. A
/// kernel that has it but refuses it (seccomp, `kernel.io_uring_disabled`, RLIMIT_MEMLOCK, …) is a
/// failure under `CI`: half the suite would otherwise pass green without testing anything.
pub fn uring_usable(test: &str) -> bool {
    match Engine::Uring.unsupported() {
        None => true,
        Some(u) if u.kernel_lacks_it => {
            eprintln!(
                "SKIP {test} on uring: {} (the kernel has no io_uring)",
                u.why
            );
            false
        }
        Some(u) => {
            skip(&format!(
                "{test} on uring: this kernel has io_uring but refuses it here: {}",
                u.why
            ));
            false
        }
    }
}

/// Runs `body` on `engine`, or says why it is skipped when the kernel lacks the engine (a failure
/// under `CI` unless the kernel has no io_uring at all, see [`uring_usable`]).
pub fn run_on(engine: Engine, test: &str, body: impl FnOnce(Engine)) {
    if engine == Engine::Uring && !uring_usable(test) {
        return;
    }
    raise_own_nofile();
    body(engine)
}

/// Runs `body` once per engine (each engine that the kernel supports), in this thread.
pub fn for_each_engine(test: &str, mut body: impl FnMut(Engine)) {
    for e in Engine::ALL {
        run_on(e, test, &mut body);
    }
}

/// Turns `fn name(engine: Engine)` items into one `#[test]` per engine: `uring::name` and
/// `epoll::name`, so that a failure names its engine and one engine's failure does not hide the other's.
///
/// ```ignore
/// fn echoes_one_byte(engine: Engine) { /* ... */ }
/// ringhold_tests::both_engines!(echoes_one_byte);
/// ```
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {
        mod uring {
            $(
                #[test]
                fn $name() {
                    $crate::run_on($crate::Engine::Uring, stringify!($name), super::$name);
                }
            )+
        }
        mod epoll {
            $(
                #[test]
                fn $name() {
                    $crate::run_on($crate::Engine::Epoll, stringify!($name), super::$name);
                }
            )+
        }
    };
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Taken by tests that open many sockets or load the machine, so that the test threads of one binary
/// never run two of them at once (test binaries themselves run one after the other). A test that
/// panicked while holding it does not poison the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises this test process's soft RLIMIT_NOFILE to min(hard, 8192): tests hold up to ~1000 sockets
/// (two descriptors each when a reader and a writer thread share one), and the default soft limit is
/// often 1024.
pub fn raise_own_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    let want = r.rlim_max.min(8192);
    if r.rlim_cur < want {
        r.rlim_cur = want;
        // SAFETY: setrlimit only reads the struct we pass; lowering nothing, raising the soft limit to
        // at most the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// Polls `cond` until it is true or `timeout` passes; the wait between polls grows from 1 ms to 50 ms.
/// For states that announce themselves with no event we can block on (a kernel socket queue, a metric,
/// a process's CPU counter). Returns whether the condition became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `RINGHOLD_TEST_TIMEOUT_SCALE` (default 1; any positive number, at most 1000): how much slower than a quiet
/// developer machine this one may be. `.ci/run` sets 3.
pub fn scale() -> f64 {
    std::env::var("RINGHOLD_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .map_or(1.0, |s| s.min(1000.0))
}

/// A deadline `d` stretched by [`scale`]. Every wait of a test goes through this (or [`secs`]); lower
/// bounds ("a limited server cannot be faster than …") are not scaled.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(scale())
}

/// A timeout of `n` seconds scaled by `RINGHOLD_TEST_TIMEOUT_SCALE` (see [`scale`]).
pub fn secs(n: u64) -> Duration {
    scaled(Duration::from_secs(n))
}

/// `d` as a `ringhold serve` duration flag value in whole milliseconds, e.g. `"3000ms"`.
pub fn flag_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}
