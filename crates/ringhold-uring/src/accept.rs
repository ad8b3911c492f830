//! The listener: multishot accept straight into the fixed-file table (direct descriptors: connections
//! take no process fd), re-armed when the kernel ends it (after 100 ms for resource errors, so a full
//! table never makes the shard spin). With `--max-conn-rate`, single-shot accepts gated by the token
//! bucket, so that connections wait in the backlog instead of being accepted and closed.
//!
//! Admission (shutdown, `--max-connections`) is the machine's decision; this file carries it out.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::{DestinationSlot, Fd};
use io_uring::{cqueue, opcode};
use ringhold_core::RejectReason;
use tracing::debug;

use crate::ring::Io;
use crate::shard::State;
use crate::token::{Op, Token};
use crate::with_fd;

/// Re-arm delay after an accept failed for lack of a resource (fds, table slots, memory).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl State {
    fn arm_accept(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if self.accept_armed || self.machine.draining() {
            return Ok(());
        }
        let lfd = Fd(self.listener.as_raw_fd());
        let ud = Token::new(Op::Accept, 0, 0).encode();
        let e = if self.shared.conn_rate_limited() {
            let mut a = opcode::Accept::new(lfd, std::ptr::null_mut(), std::ptr::null_mut());
            if self.direct {
                a = a.file_index(Some(DestinationSlot::auto_target()));
            } else {
                a = a.flags(libc::SOCK_CLOEXEC);
            }
            a.build()
        } else {
            let a = opcode::AcceptMulti::new(lfd).allocate_file_index(self.direct);
            if self.direct {
                a.build()
            } else {
                a.flags(libc::SOCK_CLOEXEC).build()
            }
        };
        io.push(e.user_data(ud))?;
        self.accept_armed = true;
        self.accept_resume_at = None;
        Ok(())
    }

    pub(crate) fn on_accept(&mut self, io: &mut Io<'_>, res: i32, flags: u32) -> io::Result<()> {
        let single_shot = self.shared.conn_rate_limited();
        if single_shot || !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            if single_shot {
                self.shared.accept_refund(Instant::now());
            }
            self.accept_release_at = None;
            let errno = -res;
            let retry_later = match errno {
                libc::ECANCELED => {
                    // Released its token for other shards (or shutdown): try again a little later.
                    if !self.machine.draining() {
                        self.accept_resume_at = Some(Instant::now() + self.accept_hold() / 2);
                    }
                    return Ok(());
                }
                libc::ENFILE if self.direct => {
                    self.machine.counters.reject(RejectReason::TableFull);
                    self.warn_limited(format_args!(
                        "fixed-file table full ({} slots per shard): connection refused; raise \
                         --fixed-files (≤ RLIMIT_NOFILE) or --shards",
                        self.cfg.fixed_files
                    ));
                    true
                }
                libc::EMFILE | libc::ENFILE => {
                    self.machine.counters.reject(RejectReason::FdLimit);
                    self.warn_limited(format_args!(
                        "out of file descriptors (RLIMIT_NOFILE): connection left in the backlog; raise \
                         the limit or use direct descriptors"
                    ));
                    true
                }
                libc::ENOMEM | libc::ENOBUFS => true,
                _ => {
                    debug!(
                        "shard {}: accept failed: {}",
                        self.id,
                        io::Error::from_raw_os_error(errno)
                    );
                    false
                }
            };
            if !self.accept_armed && !self.machine.draining() {
                if retry_later {
                    self.accept_resume_at = Some(Instant::now() + ACCEPT_RETRY);
                } else {
                    self.rearm_accept_rate_limited(io)?;
                }
            }
            return Ok(());
        }
        let idx = res as u32;
        if single_shot {
            self.accept_release_at = None;
            self.shared.accept_used();
        }
        self.admit(io, idx)?;
        if !self.accept_armed && !self.machine.draining() {
            self.rearm_accept_rate_limited(io)?;
        }
        Ok(())
    }

    /// Re-arms the accept now, or later when `--max-conn-rate`'s bucket is empty. The armed accept
    /// holds a reserved token (used when a connection arrives, refunded when the accept ends without
    /// one); held tokens count against the listener's burst.
    pub(crate) fn rearm_accept_rate_limited(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if self.accept_armed || self.machine.draining() {
            return Ok(());
        }
        let now = Instant::now();
        if let Err(wait) = self.shared.accept_reserve(now) {
            self.machine.counters.accepts_deferred += 1;
            self.accept_resume_at = Some(now + wait);
            return Ok(());
        }
        if self.shared.conn_rate_limited() {
            self.accept_release_at = Some(now + self.accept_hold());
        }
        self.arm_accept(io)
    }

    /// How long an armed accept may hold a reserved `--max-conn-rate` token without a connection
    /// before it gives it back: the time the bucket takes to make a token, 10 ms to 1 s.
    fn accept_hold(&self) -> Duration {
        self.shared
            .conn_rate_period()
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Cancels the armed accept (shutdown, or a reserved token to give back); its completion says
    /// ECANCELED and refunds the token.
    pub(crate) fn cancel_accept(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if !self.accept_armed {
            return Ok(());
        }
        let target = Token::new(Op::Accept, 0, 0).encode();
        let e = opcode::AsyncCancel::new(target).build();
        io.push(e.user_data(Token::new(Op::CancelAccept, 0, 0).encode()))
    }

    /// A connection arrived in `idx`: the machine admits or refuses it.
    fn admit(&mut self, io: &mut Io<'_>, idx: u32) -> io::Result<()> {
        let now_ms = self.now_ms();
        let gen = match self.machine.accept(idx, now_ms) {
            Ok(gen) => gen,
            Err(reason) => {
                if reason == RejectReason::MaxConnections {
                    self.warn_limited(format_args!(
                        "--max-connections {} reached, refusing new connections",
                        self.shared.max_connections()
                    ));
                }
                let e = with_fd!(self.direct, idx, |f| opcode::Close::new(f).build());
                io.push(e.user_data(Token::new(Op::CloseRefused, 0, idx).encode()))?;
                self.refused_in_flight += 1;
                return Ok(());
            }
        };
        if self.sockopt_supported {
            self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_NODELAY, 0)?;
            if self.cfg.keepalive.is_some() {
                self.sockopt(io, idx, gen, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2)?;
                self.sockopt(io, idx, gen, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
            }
        }
        Ok(())
    }

    /// setsockopt through IORING_OP_URING_CMD (a direct descriptor has no fd for the syscall).
    fn sockopt(
        &mut self,
        io: &mut Io<'_>,
        idx: u32,
        gen: u32,
        level: i32,
        name: i32,
        val: usize,
    ) -> io::Result<()> {
        let ptr = &self.sockopt_vals[val] as *const libc::c_int as *const libc::c_void;
        let len = std::mem::size_of::<libc::c_int>() as u32;
        let e = with_fd!(self.direct, idx, |f| opcode::SetSockOpt::new(
            f,
            level as u32,
            name as u32,
            ptr,
            len
        )
        .build());
        io.push(e.user_data(Token::new(Op::SockOpt, gen, idx).encode()))?;
        if let Some(c) = self.machine.conn_mut(idx, gen) {
            c.inflight += 1;
        }
        Ok(())
    }
}
