//! The shard loop: one io_uring, one listener, one buffer ring, one connection machine.
//!
//! Each turn: submit and wait (at most until the machine's next deadline), hand every completion to the
//! machine as an event ([`crate::conn`] for connections, [`crate::accept`] for the listener), carry out
//! the actions the machine queued, publish recycled buffers to the kernel, let the machine's clocks run,
//! flush counters about once a second, and watch for shutdown. Policy lives in the machine; this crate
//! only turns actions into SQEs and completions into events.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, IoUring};
use ringhold_core::{EngineConfig, Flush, Machine, ShardSpec, Shared};
use tracing::{debug, info, warn};

use crate::bufring::BufRing;
use crate::park::Sweep;
use crate::ring::{self, Io};
use crate::token::{Op, Token};

/// Longest wait for completions: also how soon a shard notices shutdown.
const MAX_WAIT: Duration = Duration::from_millis(250);
const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub struct Shard {
    // Field order matters: the ring (which holds the registered buffer ring) drops before `st.bufs`.
    ring: IoUring,
    st: State,
}

/// Everything a shard keeps besides its ring.
pub(crate) struct State {
    pub(crate) id: usize,
    pub(crate) listener: TcpListener,
    pub(crate) cfg: Arc<EngineConfig>,
    pub(crate) shared: Arc<Shared>,
    flush: Flush,
    pub(crate) machine: Machine,
    pub(crate) bufs: BufRing,
    /// Accept into the fixed-file table (direct descriptors) rather than plain fds.
    pub(crate) direct: bool,
    start: Instant,
    /// setsockopt values; their addresses are handed to the kernel, so they live in a Box.
    pub(crate) sockopt_vals: Box<[libc::c_int; 4]>,
    /// SO_LINGER {on, 0} for aborted closes; its address is handed to the kernel.
    pub(crate) linger_zero: Box<libc::linger>,
    pub(crate) sockopt_supported: bool,
    pub(crate) accept_armed: bool,
    pub(crate) accept_resume_at: Option<Instant>,
    /// `--max-conn-rate`: when an armed accept that holds a reserved token and got no connection is
    /// cancelled, so that the token can go to a shard whose listener has connections waiting.
    pub(crate) accept_release_at: Option<Instant>,
    pub(crate) refused_in_flight: u32,
    last_flush: Instant,
    /// Min-wait batching of completions, where the kernel has it.
    batch: Option<ring::Batch>,
    /// The park sweep (`--park-after`), unless parking is off.
    pub(crate) sweep: Option<Sweep>,
}

impl Shard {
    pub fn new(spec: ShardSpec) -> io::Result<Shard> {
        let ShardSpec {
            id,
            listener,
            config: cfg,
            shared,
            flush,
        } = spec;
        let (ring, _setup) = ring::build(id)?;
        let mut machine = Machine::new(&cfg, shared.clone());
        machine.set_wall_clock(ring::wall_second());
        let bufs = BufRing::new(cfg.buffers, cfg.buffer_size, 0, machine.initial_buffers())?;
        bufs.register(&ring.submitter())?;
        let mut direct = cfg.direct_descriptors;
        if direct {
            if let Err(e) = ring.submitter().register_files_sparse(cfg.fixed_files) {
                match e.raw_os_error() {
                    Some(libc::EINVAL) => {
                        warn!("shard {id}: this kernel has no sparse fixed-file tables ({e}); using plain fds");
                        direct = false;
                    }
                    _ => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "cannot register {} fixed-file slots: {e} (each table is capped by the \
                                 RLIMIT_NOFILE soft limit: lower --fixed-files or raise the limit)",
                                cfg.fixed_files
                            ),
                        ))
                    }
                }
            }
        }
        let now = Instant::now();
        let ka = cfg.keepalive.unwrap_or(ringhold_core::Keepalive {
            idle: Duration::ZERO,
            interval: Duration::ZERO,
            count: 0,
        });
        let batch = cfg
            .completion_batch
            .filter(|_| ring.params().is_feature_min_timeout())
            .map(|(want, usec)| ring::Batch {
                want: want as usize,
                min_wait_usec: usec,
            });
        let cfg_park_after = cfg.park_after.filter(|d| !d.is_zero());
        let st = State {
            id,
            listener,
            machine,
            linger_zero: Box::new(libc::linger {
                l_onoff: 1,
                l_linger: 0,
            }),
            sockopt_vals: Box::new([
                1,
                ka.idle.as_secs() as libc::c_int,
                ka.interval.as_secs() as libc::c_int,
                ka.count as libc::c_int,
            ]),
            cfg,
            shared,
            flush,
            bufs,
            direct,
            start: now,
            sockopt_supported: true,
            accept_armed: false,
            accept_resume_at: None,
            accept_release_at: None,
            refused_in_flight: 0,
            last_flush: now,
            batch,
            sweep: Sweep::new(cfg_park_after),
        };
        Ok(Shard { ring, st })
    }

    pub fn run(mut self) -> io::Result<()> {
        let Shard { ring, st } = &mut self;
        let (sub, sq, mut cq) = ring.split();
        let mut io = Io {
            sq,
            sub,
            submits: 0,
        };
        st.rearm_accept_rate_limited(&mut io)?;
        let mut batch: Vec<cqueue::Entry> = Vec::with_capacity(ring::CQ_ENTRIES as usize);
        let mut overflow_seen = 0;
        loop {
            io.sq.sync();
            io.submits += io.sq.len() as u64;
            ring::submit_and_wait_batch(&io.sub, st.next_wakeup(), st.batch)?;
            // Before anything this turn answers: `Date` shows the current second.
            st.machine.set_wall_clock(ring::wall_second());
            io.sq.sync();
            cq.sync();
            let overflow = cq.overflow();
            if overflow != overflow_seen {
                warn!(
                    "shard {}: completion queue overflowed {} times (kernel kept them)",
                    st.id, overflow
                );
                overflow_seen = overflow;
            }
            batch.extend(&mut cq);
            st.machine.counters.completions += batch.len() as u64;
            for cqe in batch.drain(..) {
                st.complete(&mut io, &cqe)?;
            }
            st.tick(&mut io)?;
            st.bufs.publish();
            st.machine.counters.submits = io.submits;
            if st.finished() {
                break;
            }
        }
        let c = st.machine.counters().clone();
        (st.flush)(&c);
        debug!("shard {} stopped", st.id);
        Ok(())
    }
}

impl State {
    /// Shard time: milliseconds since the shard started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn next_wakeup(&self) -> Duration {
        let now_ms = self.now_ms();
        let mut d = MAX_WAIT;
        if let Some(at) = self.machine.next_deadline() {
            d = d.min(Duration::from_millis(at.saturating_sub(now_ms)));
        }
        if let Some(sw) = &self.sweep {
            d = d.min(Duration::from_millis(sw.due_ms().saturating_sub(now_ms)));
        }
        if let Some(at) = self.accept_resume_at.or(self.accept_release_at) {
            d = d.min(at.saturating_duration_since(Instant::now()));
        }
        d.max(Duration::from_millis(1))
    }

    fn finished(&self) -> bool {
        self.machine.finished() && !self.accept_armed && self.refused_in_flight == 0
    }

    fn complete(&mut self, io: &mut Io<'_>, cqe: &cqueue::Entry) -> io::Result<()> {
        let Some(t) = Token::decode(cqe.user_data()) else {
            return Ok(());
        };
        let res = cqe.result();
        match t.op {
            Op::Accept => self.on_accept(io, res, cqe.flags())?,
            Op::Recv => self.on_recv(io, t, res, cqe.flags())?,
            Op::Send => self.on_send(io, t, res)?,
            Op::Shutdown | Op::Cancel | Op::SockOpt => self.on_aux(io, t, res)?,
            Op::Poll => self.on_poll(io, t, res)?,
            Op::Close => self.on_close(t, res),
            Op::CloseRefused => self.refused_in_flight -= 1,
            Op::CancelAccept => {}
        }
        self.apply(io)
    }

    /// The machine's clocks, the deferred accept, the shutdown drain and the counters' flush.
    fn tick(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        let now = Instant::now();
        // Flush before the clocks run: the loop mostly wakes because a throttled connection's pause is
        // over, so a flush after resuming it would almost always report it as not throttled.
        if now - self.last_flush >= FLUSH_EVERY {
            self.last_flush = now;
            let c = self.machine.counters().clone();
            (self.flush)(&c);
        }
        if self.accept_resume_at.is_some_and(|at| at <= now) {
            self.accept_resume_at = None;
            self.rearm_accept_rate_limited(io)?;
        }
        if self.accept_release_at.is_some_and(|at| at <= now) {
            self.accept_release_at = None;
            self.cancel_accept(io)?;
        }
        if !self.machine.draining() && self.shared.shutting_down() {
            self.begin_drain(io)?;
        }
        let now_ms = self.now_ms();
        self.machine.tick(now_ms);
        self.apply(io)?;
        self.park_sweep(io)
    }

    fn begin_drain(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        info!(
            "shard {}: draining {} connections",
            self.id,
            self.machine.live()
        );
        self.accept_resume_at = None;
        self.accept_release_at = None;
        self.cancel_accept(io)?;
        let now_ms = self.now_ms();
        self.machine.shutdown(now_ms);
        Ok(())
    }

    /// A warning at most once a second across the process.
    pub(crate) fn warn_limited(&self, msg: std::fmt::Arguments<'_>) {
        if self.shared.log_allowed(ringhold_core::shared::log_second()) {
            warn!("shard {}: {msg}", self.id);
        }
    }
}
