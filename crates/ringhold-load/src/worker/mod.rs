//! One worker: a thread with its own io_uring, fixed-file table and provided buffer ring, opening
//! and holding its share of the connections.
//!
//! A connection's fixed-file slot is its index in `conns`; slots are never reused within a run (a
//! failed connection stays failed), so completions need no generation. `user_data` is `op:8 | index:32`
//! where index is the slot, or the send buffer for `OP_SEND`.
//!
//! Per connection the worker keeps a 24-byte `Conn` and one 16-byte schedule entry; receive memory
//! is the shared buffer ring, send memory a small pool of in-flight heartbeats (or HTTP requests).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::Timespec;
use io_uring::{opcode, squeue, IoUring};

use crate::bufring::BufRing;
use crate::plan::{HttpKit, Plan, SetupMode};
use crate::setup::RawAddr;
use crate::stats::{self, Counts, Shared};

mod conn;
mod http;
mod ws;

const OP_SOCKET: u8 = 1;
const OP_SETSOCKOPT: u8 = 2;
const OP_BIND: u8 = 3;
const OP_CONNECT: u8 = 4;
const OP_LINK_TIMEOUT: u8 = 5;
const OP_RECV: u8 = 6;
const OP_SEND: u8 = 7;
const OP_CANCEL: u8 = 8;
const OP_CLOSE: u8 = 9;

fn ud(op: u8, idx: u32) -> u64 {
    (u64::from(op) << 56) | u64::from(idx)
}

fn ud_split(u: u64) -> (u8, u32) {
    ((u >> 56) as u8, u as u32)
}

// Connection states (0: not started yet).
const ST_CONNECTING: u8 = 1;
const ST_OPEN: u8 = 2;
/// Failed (counted once); waiting for its operations to end before the slot is closed.
const ST_DEAD: u8 = 3;
const ST_CLOSED: u8 = 4;

// Connection flags.
const F_RECV: u8 = 1 << 0;
const F_SEND: u8 = 1 << 1;
const F_AWAIT: u8 = 1 << 2;
const F_CANCEL: u8 = 1 << 3;
const F_CLOSING: u8 = 1 << 4;
const F_SETUP_FAILED: u8 = 1 << 5;
/// HTTP: the answer's head has been read; `got` counts body bytes.
const F_BODY: u8 = 1 << 6;

// WebSocket bits (`Conn::ws`, `--protocol websocket`).
/// The upgrade was answered with a valid 101.
const W_UPGRADED: u8 = 1 << 0;
/// Inside the payload of a heartbeat's echo frame (`got` counts its payload bytes).
const W_IN_ECHO: u8 = 1 << 1;
/// Bytes at a frame boundary (or of the 101 head) wait in `Worker::ws_kept`.
const W_KEPT: u8 = 1 << 2;
/// A handshake or pong send is in flight (one send at a time per connection keeps frames whole).
const W_CTRL_SEND: u8 = 1 << 3;
/// A pong waits in `Worker::ws_pongs` for the send in flight to end.
const W_PONG_WAITS: u8 = 1 << 4;

#[derive(Clone, Copy, Default)]
struct Conn {
    state: u8,
    flags: u8,
    /// `W_*` bits.
    ws: u8,
    /// Sequence number of the last heartbeat sent.
    seq: u32,
    /// Bytes of its echo (HTTP: of the answer's body) verified so far.
    got: u32,
    /// Bytes expected: the heartbeat size, or the body length the GET asked for.
    want: u32,
    /// When it was scheduled to go out (µs since start): latency is measured from here.
    intended_us: u64,
}

/// Next heartbeat of a connection (kept in a min-heap: the http-kit pattern's random pauses do not
/// come in time order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at_us: u64,
    slot: u32,
}

/// Echo deadline of one heartbeat. Pushed in send order, so the queue stays sorted.
#[derive(Clone, Copy)]
struct Deadline {
    at_us: u64,
    slot: u32,
    seq: u32,
}

struct SendBuf {
    data: Box<[u8]>,
    /// Bytes of `data` to send (HTTP requests and WebSocket frames vary in length).
    len: u32,
    slot: u32,
    off: u32,
    /// A handshake or pong (`W_CTRL_SEND`), not a heartbeat (`F_SEND`).
    ctrl: bool,
}

pub struct Setup {
    pub id: u32,
    pub plan: Arc<Plan>,
    pub shared: Shared,
    pub stop: Arc<AtomicBool>,
}

pub struct Worker {
    // Field order matters: the ring is dropped (closed) before the memory its operations point to.
    ring: IoUring,
    bufs: BufRing,
    id: u32,
    plan: Arc<Plan>,
    shared: Shared,
    stop: Arc<AtomicBool>,
    setup_in_ring: bool,
    target: RawAddr,
    sources: Vec<RawAddr>,
    connect_ts: Timespec,
    quota: u32,
    next: u32,
    conns: Vec<Conn>,
    sched: BinaryHeap<Reverse<Due>>,
    deadlines: VecDeque<Deadline>,
    sends: Vec<SendBuf>,
    free_sends: Vec<u32>,
    /// Capacity of each send buffer: a heartbeat (websocket: with its frame header, or a handshake
    /// or a pong; http: the longest request).
    send_cap: usize,
    /// `--protocol websocket`: bytes kept across receives (an unfinished 101 head, frame header or
    /// control frame), only for connections with `W_KEPT`.
    ws_kept: HashMap<u32, Vec<u8>>,
    /// `--protocol websocket`: a pong frame waiting for the send in flight (`W_PONG_WAITS`).
    ws_pongs: HashMap<u32, Vec<u8>>,
    /// Fast RNG (xorshift64*) for WebSocket masking keys.
    mask_rng: u64,
    /// Per-run salt of the Sec-WebSocket-Key of each connection.
    key_salt: u64,
    /// The `GET` head up to `Sec-WebSocket-Key: ` and after the key.
    ws_request: (Vec<u8>, Vec<u8>),
    /// A copy of the received bytes being decoded (they live in the buffer ring).
    scratch: Vec<u8>,
    /// Chains that did not fit into the submission queue (rare; flushed first every pass).
    backlog: VecDeque<Vec<squeue::Entry>>,
    cq_batch: Vec<(u64, i32, u32)>,
    /// Latencies (µs) recorded since the last publish.
    lat: Vec<u64>,
    c: Counts,
    start: Instant,
    period_us: u64,
    /// The http-kit pattern (random lengths and pauses), when asked for.
    kit: Option<HttpKit>,
    /// HTTP: answer heads that arrived split across receive buffers, by slot (rare; emptied as soon as
    /// the head is complete or the connection fails).
    partial: HashMap<u32, Vec<u8>>,
    /// splitmix64 state for the http-kit draws.
    rng: u64,
    per_worker_rate: f64,
    draining: bool,
    /// io_uring_enter failed for good: leave the loop.
    broken: bool,
    duration_us: u64,
    drain_us: u64,
    drain_end: u64,
    last_publish: u64,
    bufs_dirty: bool,
}

/// Creates the worker's ring (in the thread that will use it).
pub fn build(s: Setup) -> Result<Worker, String> {
    let plan = s.plan;
    let quota = plan.quota(s.id);
    let ring = new_ring().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOMEM) {
            format!(
                "io_uring setup failed: {e}: without CAP_IPC_LOCK each ring is charged to the locked-memory \
                 limit (about 200 KiB per worker, {} workers): raise it (`ulimit -l`, LimitMEMLOCK=infinity, \
                 docker/podman --ulimit memlock=-1:-1) or use fewer --workers",
                plan.workers
            )
        } else {
            format!("io_uring setup failed: {e} (is io_uring disabled? see kernel.io_uring_disabled)")
        }
    })?;
    ring.submitter().register_files_sparse(quota.max(1)).map_err(|e| {
        format!(
            "registering a fixed-file table of {quota} slots: {e} (each table is bounded by RLIMIT_NOFILE; use more --workers)"
        )
    })?;
    // Nothing here should need io-wq threads (sockets are pollable, fixed-file close and cancel run
    // inline); cap them anyway so a surprise cannot grow the process by hundreds of threads.
    let _ = ring.submitter().register_iowq_max_workers(&mut [2, 2]);
    let setup_in_ring = match plan.setup {
        SetupMode::Ring => true,
        SetupMode::Syscall => false,
        SetupMode::Auto => supports_ring_setup(&ring),
    };
    // Small buffers (one heartbeat each; HTTP answers: 4 KiB), a few thousand at most, 1 MiB per
    // worker at most.
    let buf_size = if plan.http.is_some() {
        4096
    } else {
        plan.message_size.clamp(64, 4096)
    };
    let by_mem = (1usize << 20) / buf_size;
    let by_mem = 1usize << (usize::BITS - 1 - by_mem.leading_zeros());
    let count = (quota as usize)
        .next_power_of_two()
        .clamp(64, 4096)
        .min(by_mem);
    let count = u16::try_from(count).unwrap_or(4096);
    let bufs = BufRing::new(count, buf_size, 0).map_err(|e| format!("buffer ring: {e}"))?;
    bufs.register(&ring).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOMEM) {
            format!("registering the buffer ring: {e}: raise the locked-memory limit (`ulimit -l`)")
        } else {
            format!("registering the buffer ring: {e} (needs Linux 5.19+)")
        }
    })?;
    let period_us = plan.period.map_or(0, |p| p.as_micros().max(1) as u64);
    let per_worker_rate = plan.connect_rate / f64::from(plan.workers);
    let websocket = plan.protocol == crate::plan::LoadProtocol::Websocket;
    let ws_request = ws::request_parts(&plan.target);
    let send_cap = if websocket {
        let request = ws_request.0.len() + 24 + ws_request.1.len();
        (plan.message_size + ws::MAX_HEADER)
            .max(ws::MAX_CTRL_SEND)
            .max(request)
    } else if let Some(h) = &plan.http {
        http::request_capacity(h)
    } else {
        plan.message_size
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(s.id) << 48)
        | 1;
    Ok(Worker {
        ring,
        bufs,
        id: s.id,
        target: RawAddr::new(plan.target),
        sources: plan.sources.iter().map(|ip| RawAddr::source(*ip)).collect(),
        connect_ts: Timespec::from(plan.connect_timeout),
        quota,
        next: 0,
        conns: vec![Conn::default(); quota as usize],
        sched: BinaryHeap::new(),
        deadlines: VecDeque::new(),
        sends: Vec::new(),
        free_sends: Vec::new(),
        send_cap,
        ws_kept: HashMap::new(),
        ws_pongs: HashMap::new(),
        mask_rng: seed,
        key_salt: ws::mix(seed),
        ws_request,
        scratch: Vec::new(),
        backlog: VecDeque::new(),
        cq_batch: Vec::with_capacity(1024),
        lat: Vec::new(),
        c: Counts::default(),
        start: Instant::now(),
        period_us,
        kit: plan.http_kit(),
        partial: HashMap::new(),
        rng: http::seed(s.id),
        per_worker_rate,
        draining: false,
        broken: false,
        duration_us: 0,
        drain_us: 0,
        drain_end: u64::MAX,
        last_publish: 0,
        bufs_dirty: false,
        setup_in_ring,
        plan,
        shared: s.shared,
        stop: s.stop,
    })
}

fn new_ring() -> io::Result<IoUring> {
    const SQ: u32 = 1024;
    const CQ: u32 = 8 * SQ;
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(CQ)
        .build(SQ)
        .or_else(|_| {
            IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_cqsize(CQ)
                .build(SQ)
        })
        .or_else(|_| IoUring::builder().setup_cqsize(CQ).build(SQ))
}

/// IORING_OP_SOCKET (5.19) and IORING_OP_BIND (6.11); socket setsockopt commands came in 6.7.
fn supports_ring_setup(ring: &IoUring) -> bool {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::Socket::CODE)
        && probe.is_supported(opcode::Bind::CODE)
}

/// Whether this kernel lets `--setup auto` make sockets inside the ring.
pub fn ring_setup_available() -> bool {
    IoUring::new(8)
        .map(|r| supports_ring_setup(&r))
        .unwrap_or(false)
}

impl Worker {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn conn_id(&self, slot: u32) -> u32 {
        (self.id << 20) | slot
    }

    /// Starts the worker's clock (`start` is shared by all workers) and its timing state.
    fn begin(&mut self, start: Instant) {
        self.start = start;
        self.duration_us = self.plan.duration.as_micros() as u64;
        self.drain_us = self
            .plan
            .connect_timeout
            .max(self.plan.echo_timeout)
            .as_micros() as u64
            + 1_000_000;
        self.last_publish = 0;
        self.drain_end = u64::MAX;
    }

    /// The timed work of one pass (connects, heartbeats, echo deadlines, publishing); what it queues
    /// is submitted by the caller. Returns when the worker next wants a pass (µs on the shared clock),
    /// or `None` once the duration is over and the drain has ended.
    fn step(&mut self) -> Option<u64> {
        let now = self.now_us();
        if !self.draining && (now >= self.duration_us || self.stop.load(Ordering::Relaxed)) {
            self.draining = true;
            self.drain_end = now.saturating_add(self.drain_us);
        }
        if self.broken
            || self.draining
                && (self.c.pending == 0 && self.c.outstanding == 0 || now >= self.drain_end)
        {
            return None;
        }
        self.flush_backlog();
        if !self.draining {
            self.start_connects(now);
            self.send_due(now);
        }
        self.expire_echoes(now);
        self.check_ramp(now);
        if now >= self.last_publish + 100_000 {
            self.publish(false);
            self.last_publish = now;
        }
        Some(self.next_wake(now, self.duration_us, self.drain_end, self.last_publish))
    }

    fn finish(mut self) {
        self.publish(true);
        // The kernel may still touch the buffer ring while it tears the io_uring down after close;
        // the process ends soon after the workers, so leak it rather than race that.
        let Worker { ring, bufs, .. } = self;
        drop(ring);
        std::mem::forget(bufs);
    }

    /// A grouped worker's turn: submit what is queued and reap without waiting, then the timed work,
    /// then submit what that queued (the thread may sleep on other rings next). Returns how many
    /// completions it reaped, and the next wake-up (`None`: finished).
    fn turn_nowait(&mut self) -> (usize, Option<u64>) {
        if let Err(e) = ringhold_uring::group::enter_nowait(&self.ring.submitter()) {
            self.enter_failed(e);
        }
        let reaped = self.reap();
        let wake = self.step();
        if wake.is_some() && !self.ring.submission().is_empty() {
            if let Err(e) = self.ring.submit() {
                if !matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) {
                    self.enter_failed(e);
                }
            }
        }
        (reaped, wake)
    }

    fn enter_failed(&mut self, e: io::Error) {
        // Nothing sensible to retry with: stop this worker (the others finish normally) and let its
        // unfinished connections show in the summary.
        eprintln!(
            "ringhold load: worker {}: io_uring_enter failed: {e}; stopping this worker",
            self.id
        );
        self.broken = true;
    }

    fn next_wake(&self, now: u64, duration_us: u64, drain_end: u64, last_publish: u64) -> u64 {
        let mut wake = last_publish + 100_000;
        if !self.draining {
            wake = wake.min(duration_us);
            if let Some(Reverse(d)) = self.sched.peek() {
                wake = wake.min(d.at_us);
            }
            if self.next < self.quota
                && self.c.pending < u64::from(self.plan.max_pending)
                && self.per_worker_rate > 0.0
            {
                let t = (f64::from(self.next) / self.per_worker_rate * 1e6) as u64;
                wake = wake.min(t);
            }
        } else {
            wake = wake.min(drain_end);
        }
        if let Some(d) = self.deadlines.front() {
            wake = wake.min(d.at_us);
        }
        wake.max(now)
    }

    /// Submits what is queued and waits up to `timeout_us` for at least one completion.
    fn wait(&mut self, timeout_us: u64) {
        let timeout = Duration::from_micros(timeout_us.max(1));
        if let Err(e) = ringhold_uring::ring::submit_and_wait(&self.ring.submitter(), timeout) {
            self.enter_failed(e);
        }
    }

    /// Takes all completions and handles them; returns how many.
    fn reap(&mut self) -> usize {
        let mut batch = std::mem::take(&mut self.cq_batch);
        let mut reaped = 0;
        loop {
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if batch.is_empty() {
                break;
            }
            reaped += batch.len();
            for &(u, res, flags) in &batch {
                self.complete(u, res, flags);
            }
            if self.bufs_dirty {
                self.bufs.publish();
                self.bufs_dirty = false;
            }
        }
        self.cq_batch = batch;
        reaped
    }

    fn push(&mut self, chain: &[squeue::Entry]) {
        if self.backlog.is_empty() {
            // SAFETY: every entry points only to memory that outlives the operation: the worker's
            // addresses, timespec and buffers, the static ONE, or send buffers freed on completion.
            if unsafe { self.ring.submission().push_multiple(chain) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push_multiple(chain) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(chain.to_vec());
    }

    fn flush_backlog(&mut self) {
        while let Some(chain) = self.backlog.front() {
            // SAFETY: see `push`.
            if unsafe { self.ring.submission().push_multiple(chain) }.is_err() {
                if self.ring.submit().is_err() {
                    return;
                }
                // SAFETY: see `push`.
                if unsafe { self.ring.submission().push_multiple(chain) }.is_err() {
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }

    fn start_connects(&mut self, now: u64) {
        let allowed = if self.per_worker_rate > 0.0 {
            ((now as f64 / 1e6 * self.per_worker_rate) as u64 + 1).min(u64::from(self.quota)) as u32
        } else {
            self.quota
        };
        while self.next < allowed && self.c.pending < u64::from(self.plan.max_pending) {
            let slot = self.next;
            self.next += 1;
            self.c.attempted += 1;
            self.start_connect(slot);
        }
    }

    fn publish(&mut self, finished: bool) {
        let mut p = stats::lock(&self.shared);
        p.counts = self.c;
        let period = self.period_us;
        for &v in &self.lat {
            let v = v.min(stats::MAX_LATENCY_US);
            let r = if period > 0 {
                p.hist.record_correct(v, period)
            } else {
                p.hist.record(v)
            };
            // Values are clamped into the histogram's range, so recording cannot fail.
            let _ = r;
        }
        self.lat.clear();
        p.finished = finished;
    }
}

/// Runs `workers` on the calling thread until each has finished.
///
/// Alone, a worker waits in its own ring. Several share the thread as the server's shards do
/// (`ringhold_uring::group`): one `epoll_wait` on the rings' eventfds or until the earliest worker's
/// next pass, then a turn for each ring that signalled and has work, or whose time has come.
pub fn run_group(mut workers: Vec<Worker>, start: Instant) {
    for w in &mut workers {
        w.begin(start);
    }
    if workers.len() == 1 {
        let mut w = workers.pop().expect("one worker");
        while let Some(wake) = w.step() {
            w.wait(wake.saturating_sub(w.now_us()));
            w.reap();
        }
        w.finish();
        return;
    }
    let mut waiter = match ringhold_uring::group::Waiter::new() {
        Ok(w) => w,
        Err(e) => return group_failed(workers, &e),
    };
    for w in &workers {
        if let Err(e) = waiter.add(&w.ring.submitter()) {
            return group_failed(workers, &e);
        }
    }
    let n = workers.len();
    let mut slots: Vec<Option<Worker>> = workers.into_iter().map(Some).collect();
    let mut ready = vec![true; n];
    let mut wake_at = vec![0u64; n];
    let mut live = n;
    while live > 0 {
        let now = start.elapsed().as_micros() as u64;
        for i in 0..n {
            let Some(w) = slots[i].as_mut() else {
                continue;
            };
            let wanted =
                wake_at[i] <= now || ready[i] && ringhold_uring::group::has_work(&mut w.ring);
            ready[i] = false;
            if !wanted {
                continue;
            }
            let (reaped, wake) = w.turn_nowait();
            match wake {
                Some(at) => {
                    wake_at[i] = at;
                    // The kernel may have kept deferred work back: go again rather than wait.
                    ready[i] = reaped >= ringhold_uring::group::TURN_WANT;
                }
                None => {
                    if let Some(w) = slots[i].take() {
                        w.finish();
                    }
                    live -= 1;
                }
            }
        }
        if live == 0 {
            break;
        }
        let timeout = if ready.iter().any(|&r| r) {
            Duration::ZERO
        } else {
            let next = (0..n)
                .filter(|&i| slots[i].is_some())
                .map(|i| wake_at[i])
                .min()
                .unwrap_or(0);
            Duration::from_micros(next.saturating_sub(start.elapsed().as_micros() as u64))
        };
        if let Err(e) = waiter.wait(timeout, &mut ready) {
            let left: Vec<Worker> = slots.into_iter().flatten().collect();
            return group_failed(left, &e);
        }
    }
}

/// The thread cannot wait on its rings: its workers stop (their unfinished connections show in the
/// summary); the other threads go on.
fn group_failed(workers: Vec<Worker>, e: &io::Error) {
    for mut w in workers {
        w.enter_failed(io::Error::new(e.kind(), e.to_string()));
        w.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (op, idx) in [(OP_SOCKET, 0), (OP_SEND, u32::MAX), (OP_CLOSE, 19_999)] {
            assert_eq!(ud_split(ud(op, idx)), (op, idx));
        }
    }

    #[test]
    fn conn_is_small() {
        assert!(std::mem::size_of::<Conn>() <= 24);
        assert_eq!(std::mem::size_of::<Conn>(), 24);
        assert!(std::mem::size_of::<Reverse<Due>>() <= 16);
        assert!(std::mem::size_of::<Due>() <= 16);
    }
}
