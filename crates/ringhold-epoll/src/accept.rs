//! The shard's listener: `accept4` until EAGAIN, the spare-fd trick for EMFILE/ENFILE, and the
//! `--max-conn-rate` bucket. Admission (shutdown, `--max-connections`) and set-up of the accepted socket
//! are the shard's business; this module only hands over descriptors.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ringhold_core::machine::throttle::ceil_ms;
use ringhold_core::shared::log_second;
use ringhold_core::{RejectReason, ShardCounters, Shared};
use tracing::{debug, warn};

use crate::sys;

/// How long to wait before trying again after a resource error that draining cannot fix (no spare fd
/// could be had, ENOBUFS, ENOMEM).
const RETRY_MS: u64 = 100;

/// Serialises `accept4` across the shards of the process. Shards share one descriptor table, so without
/// it the descriptor one shard frees for its spare-fd trick can be taken by another shard's accept at
/// the same instant, leaving the first without a spare and its backlog stuck until some descriptor is
/// closed. Taken once per accept (not per message), uncontended but for accept bursts on two shards.
static ACCEPT_LOCK: Mutex<()> = Mutex::new(());

fn accept_lock() -> MutexGuard<'static, ()> {
    ACCEPT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one accept attempt gave.
pub enum Step {
    /// A new connection for the shard.
    Socket(OwnedFd),
    /// Nothing for the shard (refused or aborted); try the next one.
    Next,
    /// Stop for now: the backlog is empty (`ready` cleared) or accepting is paused (`resume_at` set).
    Stop,
}

pub struct Acceptor {
    shard: usize,
    listener: OwnedFd,
    /// `/dev/null`, closed to make room for one accept when the process is out of descriptors.
    spare: Option<OwnedFd>,
    /// The backlog may hold connections (edge-triggered: set by an edge, cleared by EAGAIN).
    pub ready: bool,
    /// Accepting is paused until this shard-clock millisecond.
    pub resume_at: Option<u64>,
}

impl Acceptor {
    pub fn new(shard: usize, listener: OwnedFd) -> io::Result<Acceptor> {
        Ok(Acceptor {
            shard,
            listener,
            spare: Some(sys::open_spare()?),
            ready: true,
            resume_at: None,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// May `next` be called at `now_ms`?
    pub fn can_accept(&self, now_ms: u64) -> bool {
        self.ready && !matches!(self.resume_at, Some(t) if t > now_ms)
    }

    /// The deadline the poll timeout must honour, if any.
    pub fn deadline(&self) -> Option<u64> {
        self.resume_at.filter(|_| self.ready)
    }

    /// One accept. `Err` only for errors that mean the listener itself is broken.
    pub fn next(
        &mut self,
        now_ms: u64,
        counters: &mut ShardCounters,
        shared: &Shared,
    ) -> io::Result<Step> {
        self.resume_at = None;
        if let Err(wait) = shared.accept_reserve(Instant::now()) {
            // Leave the rest in the backlog until the listener's bucket has a token again.
            counters.accepts_deferred += 1;
            self.resume_at = Some(now_ms + ceil_ms(wait));
            return Ok(Step::Stop);
        }
        // Held until the end of any spare-fd trick below.
        let _guard = accept_lock();
        match sys::accept(self.fd()) {
            Ok(fd) => {
                shared.accept_used();
                Ok(Step::Socket(fd))
            }
            Err(e) => {
                shared.accept_refund(Instant::now());
                self.on_error(e, now_ms, counters, shared)
            }
        }
    }

    fn on_error(
        &mut self,
        e: io::Error,
        now_ms: u64,
        counters: &mut ShardCounters,
        shared: &Shared,
    ) -> io::Result<Step> {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                self.ready = false;
                Ok(Step::Stop)
            }
            // The connection died in the backlog, or a transient condition: go on with the next one.
            Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => Ok(Step::Next),
            Some(code @ (libc::EMFILE | libc::ENFILE)) => {
                Ok(self.out_of_fds(code, now_ms, counters, shared))
            }
            Some(libc::ENOBUFS | libc::ENOMEM) => {
                if shared.log_allowed(log_second()) {
                    warn!(
                        "shard {}: accept failed: {e}; retrying in {RETRY_MS} ms",
                        self.shard
                    );
                }
                self.resume_at = Some(now_ms + RETRY_MS);
                Ok(Step::Stop)
            }
            _ => Err(io::Error::new(
                e.kind(),
                format!("accept on the listener failed: {e}"),
            )),
        }
    }

    /// EMFILE/ENFILE: close the spare to make room, accept the connection and close it at once (so the
    /// client sees a clean close instead of hanging in the backlog), take the spare back. Repeated until
    /// the backlog is empty. Runs under the accept lock. Without a spare (another thread of the process
    /// took the freed descriptor), retry a bit later: the spare is reopened once a descriptor is free.
    fn out_of_fds(
        &mut self,
        code: i32,
        now_ms: u64,
        counters: &mut ShardCounters,
        shared: &Shared,
    ) -> Step {
        if shared.log_allowed(log_second()) {
            let which = if code == libc::EMFILE {
                "the process descriptor limit (EMFILE, RLIMIT_NOFILE): raise it with `ulimit -n` or LimitNOFILE="
            } else {
                "the system descriptor limit (ENFILE): raise fs.file-max / fs.nr_open"
            };
            warn!(
                "shard {}: out of file descriptors, refusing new connections; reached {which}",
                self.shard
            );
        }
        let step = match self.spare.take() {
            Some(spare) => {
                drop(spare);
                match sys::accept(self.fd()) {
                    Ok(refused) => {
                        drop(refused);
                        shared.accept_paid(Instant::now());
                        counters.reject(RejectReason::FdLimit);
                        Step::Next
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        self.ready = false;
                        Step::Stop
                    }
                    Err(e) => {
                        debug!(
                            "shard {}: accept with the spare descriptor freed: {e}",
                            self.shard
                        );
                        self.resume_at = Some(now_ms + RETRY_MS);
                        Step::Stop
                    }
                }
            }
            None => {
                self.resume_at = Some(now_ms + RETRY_MS);
                Step::Stop
            }
        };
        self.spare = sys::open_spare().ok();
        step
    }

    /// At shutdown: accept what waits in the backlog and close it at once, counted (at most `max`).
    pub fn refuse_backlog(&mut self, counters: &mut ShardCounters, max: usize) {
        for _ in 0..max {
            let accepted = {
                let _guard = accept_lock();
                sys::accept(self.fd())
            };
            match accepted {
                Ok(fd) => {
                    drop(fd);
                    counters.reject(RejectReason::Shutdown);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(_) => break,
            }
        }
    }
}
