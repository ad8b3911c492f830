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
use crate::group;
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
    /// SQEs handed to the kernel so far.
    submits: u64,
    /// The completion queue's overflow count last logged.
    overflow_seen: u32,
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
            submits: 0,
            overflow_seen: 0,
            batch,
            sweep: Sweep::new(cfg_park_after),
        };
        Ok(Shard { ring, st })
    }

    /// Runs this shard alone on the calling thread until it has drained.
    pub fn run(self) -> io::Result<()> {
        run_group(vec![self])
    }

    /// Arms the listener's accept (submitted with the first turn).
    fn start(&mut self) -> io::Result<()> {
        let Shard { ring, st } = self;
        let (sub, sq, _) = ring.split();
        let mut io = Io {
            sq,
            sub,
            submits: st.submits,
        };
        st.rearm_accept_rate_limited(&mut io)?;
        st.submits = io.submits;
        Ok(())
    }

    /// One loop turn: submit what is queued and wait for completions (`wait`: until the first, or a
    /// batch, or the machine's next deadline; otherwise not at all), hand every completion to the
    /// machine, carry out its actions, run its clocks, publish recycled buffers. Without `wait`, what
    /// the turn queued is submitted before it returns, since the thread may then sleep on other rings.
    /// Returns how many completions it reaped and whether the shard has finished.
    fn turn(&mut self, wait: bool, batch: &mut Vec<cqueue::Entry>) -> io::Result<(usize, bool)> {
        let Shard { ring, st } = self;
        let (sub, sq, mut cq) = ring.split();
        let mut io = Io {
            sq,
            sub,
            submits: st.submits,
        };
        io.sq.sync();
        io.submits += io.sq.len() as u64;
        if wait {
            ring::submit_and_wait_batch(&io.sub, st.next_wakeup(), st.batch)?;
        } else {
            group::enter_nowait(&io.sub)?;
        }
        // Before anything this turn answers: `Date` shows the current second.
        st.machine.set_wall_clock(ring::wall_second());
        io.sq.sync();
        cq.sync();
        let overflow = cq.overflow();
        if overflow != st.overflow_seen {
            warn!(
                "shard {}: completion queue overflowed {} times (kernel kept them)",
                st.id, overflow
            );
            st.overflow_seen = overflow;
        }
        batch.extend(&mut cq);
        let reaped = batch.len();
        st.machine.counters.completions += reaped as u64;
        for cqe in batch.drain(..) {
            st.complete(&mut io, &cqe)?;
        }
        st.tick(&mut io)?;
        st.bufs.publish();
        if !wait {
            io.sq.sync();
            if !io.sq.is_empty() {
                io.submit()?;
            }
        }
        st.submits = io.submits;
        st.machine.counters.submits = io.submits;
        Ok((reaped, st.finished()))
    }

    fn stop(&mut self) {
        let c = self.st.machine.counters().clone();
        (self.st.flush)(&c);
        debug!("shard {} stopped", self.st.id);
    }
}

/// Runs `shards` on the calling thread until every one of them has drained.
///
/// One shard waits in its own `io_uring_enter` (with `--completion-batch` min-wait batching). Several
/// share the thread ([`group`]): the thread sleeps in one `epoll_wait` on the rings' eventfds, or until
/// the earliest deadline of any of them, and then gives a turn to each ring that signalled or whose
/// deadline has come. A shard that fails stops the whole thread with its error.
pub fn run_group(mut shards: Vec<Shard>) -> io::Result<()> {
    let mut batch: Vec<cqueue::Entry> = Vec::with_capacity(ring::CQ_ENTRIES as usize);
    if let [shard] = shards.as_mut_slice() {
        shard.start()?;
        while !shard.turn(true, &mut batch)?.1 {}
        shard.stop();
        return Ok(());
    }
    let mut waiter = group::Waiter::new()?;
    for s in &shards {
        waiter.add(&s.ring.submitter())?;
    }
    for s in &mut shards {
        s.start()?;
    }
    let n = shards.len();
    // Every ring's first turn submits its accept.
    let mut ready = vec![true; n];
    let mut done = vec![false; n];
    let now = Instant::now();
    let mut wake_at = vec![now; n];
    let mut live = n;
    loop {
        let now = Instant::now();
        for i in 0..n {
            if done[i] {
                continue;
            }
            let due = wake_at[i] <= now;
            let wanted = due || ready[i] && group::has_work(&mut shards[i].ring);
            if !wanted {
                ready[i] = false;
                continue;
            }
            ready[i] = false;
            let (reaped, finished) = shards[i].turn(false, &mut batch)?;
            if finished {
                done[i] = true;
                live -= 1;
                shards[i].stop();
                continue;
            }
            // The kernel may have kept deferred work back: go again rather than wait for a signal.
            ready[i] = reaped >= group::TURN_WANT;
            wake_at[i] = Instant::now() + shards[i].st.next_wakeup();
        }
        if live == 0 {
            return Ok(());
        }
        let timeout = if ready.iter().any(|&r| r) {
            Duration::ZERO
        } else {
            (0..n)
                .filter(|&i| !done[i])
                .map(|i| wake_at[i])
                .min()
                .map_or(MAX_WAIT, |at| at.saturating_duration_since(Instant::now()))
        };
        waiter.wait(timeout, &mut ready)?;
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
