//! The connection machine driven with scripted and random events, no sockets.
//!
//! The harness: a fake receive-buffer [`Pool`] that catches double recycles and use after recycle, a fake
//! engine that carries out the machine's actions the way a real one would (receiving while told to,
//! one send cycle of `front`/`sent`, shutting the write side, closing and then calling `released`), a
//! simulated peer per connection (writes bytes, reads what we send or stops reading, sends FIN) and a
//! simulated clock that calls `tick` at every `next_deadline`.
//!
//! Every test asserts the behaviour the rules (the machine's module doc and the engine contract in
//! `ringhold-core/README.md`) ask for. Seven of them first showed the machine getting a rule wrong
//! (a busy loop from a fractional tick, a freed buffer waking every waiter, the waiting gauge, the idle
//! clock's start, a stall or linger clock ending after the entry it should have preceded, the drain
//! deadline staying in the past); they pass since the machine was fixed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::out::{Front, Out, Queue, Released, Seg, GEN_SLOT, INLINE};
use super::throttle::ceil_ms;
use super::{Action, Id, Limits, Machine, Pool};
use crate::bucket::BucketSpec;
use crate::conn::Conn;
use crate::{CloseReason, EngineConfig, RejectReason, Shared};

// ====================================================================== harness

const POISON: u8 = 0xEE;

/// The engine's receive buffers: `n` buffers of `size` bytes and a free list. Lends buffers for
/// receives, takes them back through [`Pool::recycle`], and fails the test on a double recycle or when
/// the machine touches a buffer that is back in the pool.
struct FakePool {
    mem: Vec<Vec<u8>>,
    free: Vec<u16>,
    lent: Vec<bool>,
    recycles: u64,
}

impl FakePool {
    fn new(n: u16, size: usize) -> FakePool {
        FakePool {
            mem: vec![vec![POISON; size]; n as usize],
            // Taken from the end: buffer 0 first, and a recycled buffer is reused at once (so that a
            // buffer given back too early is overwritten and the echo check notices).
            free: (0..n).rev().collect(),
            lent: vec![false; n as usize],
            recycles: 0,
        }
    }

    fn size(&self) -> usize {
        self.mem.first().map_or(0, Vec::len)
    }

    fn take(&mut self) -> Option<u16> {
        let b = self.free.pop()?;
        assert!(!self.lent[b as usize], "buffer {b} on the free list twice");
        self.lent[b as usize] = true;
        Some(b)
    }

    fn outstanding(&self) -> usize {
        self.lent.iter().filter(|l| **l).count()
    }

    fn is_lent(&self, bid: u16) -> bool {
        self.lent[bid as usize]
    }

    /// Every buffer is back, exactly once.
    fn assert_all_home(&self) {
        assert_eq!(self.outstanding(), 0, "buffers not given back");
        let mut f = self.free.clone();
        f.sort_unstable();
        let want: Vec<u16> = (0..self.mem.len() as u16).collect();
        assert_eq!(f, want, "free list is not every buffer exactly once");
    }
}

impl Pool for FakePool {
    fn bytes_mut(&mut self, bid: u16) -> &mut [u8] {
        assert!(
            self.lent[bid as usize],
            "the machine touched buffer {bid}, which is in the pool"
        );
        &mut self.mem[bid as usize]
    }

    fn recycle(&mut self, bid: u16) {
        assert!(
            self.lent[bid as usize],
            "buffer {bid} recycled twice (or never lent)"
        );
        self.lent[bid as usize] = false;
        self.mem[bid as usize].fill(POISON);
        self.free.push(bid);
        self.recycles += 1;
    }
}

/// The byte a peer writes at offset `i` of its stream (no short period: a reordering shows).
fn pat(key: usize, i: usize) -> u8 {
    ((i as u32 ^ ((key as u32) << 24)).wrapping_mul(2_654_435_761) >> 24) as u8
}

/// One connection: the simulated peer and the fake engine's view of it.
#[derive(Debug)]
struct Peer {
    id: Id,
    // ---- peer
    /// Everything the peer wrote.
    written: Vec<u8>,
    /// Bytes of `written` handed to the machine.
    delivered: usize,
    /// What the peer received from us.
    got: Vec<u8>,
    /// How many more bytes the peer takes (`None`: all).
    window: Option<usize>,
    /// Most bytes one send writes (partial sends).
    send_max: usize,
    /// Most bytes one receive reads.
    recv_max: usize,
    /// The peer sent FIN (after all of `written`).
    fin_sent: bool,
    fin_delivered: bool,
    /// The peer answers our FIN with its own.
    fin_on_eof: bool,
    /// Our FIN reached the peer.
    eof: bool,
    eof_at: Option<u64>,
    // ---- engine
    reading: bool,
    sending: bool,
    /// Bytes of a send that is in flight but does not complete (the peer reads nothing).
    stalled: Vec<u8>,
    /// When `Close` came.
    closed: Option<u64>,
    released: bool,
}

impl Peer {
    fn new(id: Id) -> Peer {
        Peer {
            id,
            written: Vec::new(),
            delivered: 0,
            got: Vec::new(),
            window: None,
            send_max: usize::MAX,
            recv_max: usize::MAX,
            fin_sent: false,
            fin_delivered: false,
            fin_on_eof: false,
            eof: false,
            eof_at: None,
            reading: false,
            sending: false,
            stalled: Vec::new(),
            closed: None,
            released: false,
        }
    }
}

/// A machine, a fake engine around it, peers and a clock.
struct Sim {
    m: Machine,
    pool: FakePool,
    shared: Arc<Shared>,
    now: u64,
    peers: Vec<Peer>,
    ids: HashMap<Id, usize>,
    log: Vec<(u64, Action)>,
    /// The engine calls `released` as soon as `Close` comes (else only on `release`).
    auto_release: bool,
    to_release: Vec<usize>,
    ticks: u64,
    /// The protocol echoes: what a peer gets is a prefix of what it sent (off for HTTP).
    echoes: bool,
    /// What peers write (`None`: the pattern bytes of [`pat`]): the next bytes of this stream.
    stream: Option<&'static [u8]>,
    /// A write event writes this many times the bytes it names.
    write_scale: usize,
}

impl Sim {
    fn new(cfg: EngineConfig) -> Sim {
        Sim::with_shared(cfg, Arc::new(Shared::new(0)))
    }

    fn with_shared(cfg: EngineConfig, shared: Arc<Shared>) -> Sim {
        let pool = FakePool::new(cfg.buffers, cfg.buffer_size as usize);
        Sim {
            m: Machine::new(&cfg, shared.clone()),
            pool,
            shared,
            now: 0,
            peers: Vec::new(),
            ids: HashMap::new(),
            log: Vec::new(),
            auto_release: true,
            to_release: Vec::new(),
            ticks: 0,
            echoes: cfg.protocol == crate::protocol::Protocol::Echo,
            stream: None,
            write_scale: 1,
        }
    }

    // ---------------------------------------------------------- engine

    /// Accepts a connection into the lowest free slot.
    fn accept(&mut self) -> Result<usize, RejectReason> {
        let busy: Vec<u32> = self
            .peers
            .iter()
            .filter(|p| !p.released)
            .map(|p| p.id.idx)
            .collect();
        let idx = (0..).find(|i| !busy.contains(i)).unwrap();
        self.accept_at(idx)
    }

    fn accept_at(&mut self, idx: u32) -> Result<usize, RejectReason> {
        let gen = self.m.accept(idx, self.now)?;
        let id = Id { idx, gen };
        let k = self.peers.len();
        assert!(
            self.ids.insert(id, k).is_none(),
            "generation {gen} of slot {idx} given twice"
        );
        self.peers.push(Peer::new(id));
        self.pump();
        Ok(k)
    }

    fn open(&mut self) -> usize {
        self.accept().expect("accepted")
    }

    fn id(&self, k: usize) -> Id {
        self.peers[k].id
    }

    fn key(&self, id: Id) -> usize {
        *self
            .ids
            .get(&id)
            .unwrap_or_else(|| panic!("action for unknown connection {id:?}"))
    }

    fn apply(&mut self, a: Action) {
        let now = self.now;
        let auto = self.auto_release;
        let Some(id) = act_id(a) else {
            // The harness's pool holds every buffer of `--buffers` from the start (these tests use at
            // most INITIAL_BUFFERS, so the machine never grows it).
            panic!("{a:?}: the pool never needs to grow in these tests");
        };
        let k = self.key(id);
        let front_empty = self.m.front(id.idx, id.gen).is_none();
        let p = &mut self.peers[k];
        assert!(!p.released, "{a:?} after released");
        assert!(p.closed.is_none(), "{a:?} after Close");
        match a {
            Action::Recv(_) => {
                assert!(!p.reading, "Recv while already receiving");
                p.reading = true;
            }
            Action::StopRecv(_) => {
                assert!(p.reading, "StopRecv while not receiving");
                p.reading = false;
            }
            Action::Send(_) => {
                assert!(!p.sending, "a second send cycle while one is on");
                p.sending = true;
            }
            Action::ShutdownWrite(_) => {
                assert!(!p.eof, "ShutdownWrite twice");
                assert!(!p.sending && front_empty, "ShutdownWrite before the flush");
                p.eof = true;
                p.eof_at = Some(now);
                if p.fin_on_eof {
                    p.fin_sent = true;
                }
            }
            Action::Provide { .. } => unreachable!(),
            Action::Close(_) | Action::Abort(_) => {
                // Cancels whatever is in flight.
                p.closed = Some(now);
                p.reading = false;
                p.sending = false;
                if auto {
                    self.to_release.push(k);
                }
            }
        }
    }

    /// Carries out actions and send cycles until nothing moves.
    fn pump(&mut self) {
        let mut guard = 0u32;
        loop {
            let mut progress = false;
            while let Some(a) = self.m.poll_action() {
                guard += 1;
                assert!(guard < 1_000_000, "the machine keeps asking for actions");
                self.log.push((self.now, a));
                self.apply(a);
                progress = true;
            }
            for k in 0..self.peers.len() {
                progress |= self.try_send(k);
            }
            for k in std::mem::take(&mut self.to_release) {
                self.release(k);
                progress = true;
            }
            if !progress {
                break;
            }
        }
        self.check();
    }

    /// Sends what the peer takes; `true` if anything changed.
    fn try_send(&mut self, k: usize) -> bool {
        let mut progress = false;
        loop {
            let p = &self.peers[k];
            if !p.sending || p.closed.is_some() {
                return progress;
            }
            let id = p.id;
            let chunk: Vec<u8> = match self.m.front(id.idx, id.gen) {
                None => {
                    self.peers[k].sending = false;
                    return true;
                }
                Some(Front::Buf { bid, off, len }) => {
                    assert!(
                        self.pool.is_lent(bid),
                        "front names buffer {bid} in the pool"
                    );
                    self.pool.mem[bid as usize][off as usize..(off + len) as usize].to_vec()
                }
                Some(Front::Bytes(b)) => b.to_vec(),
            };
            assert!(!chunk.is_empty(), "empty front");
            let p = &mut self.peers[k];
            let n = chunk
                .len()
                .min(p.send_max)
                .min(p.window.unwrap_or(usize::MAX));
            if n == 0 {
                p.stalled = chunk[..chunk.len().min(p.send_max)].to_vec();
                return progress;
            }
            p.stalled.clear();
            p.got.extend_from_slice(&chunk[..n]);
            if let Some(w) = &mut p.window {
                *w -= n;
            }
            self.m.sent(&mut self.pool, id.idx, id.gen, n, self.now);
            progress = true;
        }
    }

    /// The engine calls `released` for `k` (after `Close`, or as a clean-up without one).
    fn release(&mut self, k: usize) {
        let p = &mut self.peers[k];
        if p.released {
            return;
        }
        p.released = true;
        p.reading = false;
        p.sending = false;
        p.closed.get_or_insert(self.now);
        let id = p.id;
        self.m.released(&mut self.pool, id.idx, id.gen);
    }

    /// One receive for `k` if the engine is receiving: bytes, or FIN once every byte was read.
    fn deliver(&mut self, k: usize) -> bool {
        let p = &self.peers[k];
        if p.closed.is_some() || !p.reading {
            return false;
        }
        self.deliver_now(k)
    }

    /// A receive completion that arrives although the engine was told to stop (it was in flight).
    fn deliver_late(&mut self, k: usize) -> bool {
        if self.peers[k].released {
            return false;
        }
        self.deliver_now(k)
    }

    fn deliver_now(&mut self, k: usize) -> bool {
        let size = self.pool.size();
        let now = self.now;
        let p = &mut self.peers[k];
        let id = p.id;
        if p.delivered < p.written.len() {
            match self.pool.take() {
                None => self.m.no_buffer(id.idx, id.gen),
                Some(bid) => {
                    let n = (p.written.len() - p.delivered).min(size).min(p.recv_max);
                    self.pool.mem[bid as usize][..n]
                        .copy_from_slice(&p.written[p.delivered..p.delivered + n]);
                    p.delivered += n;
                    self.m
                        .received(&mut self.pool, id.idx, id.gen, bid, n as u32, now);
                }
            }
        } else if p.fin_sent && !p.fin_delivered {
            p.fin_delivered = true;
            self.m.peer_fin(id.idx, id.gen, now);
        } else {
            return false;
        }
        self.pump();
        true
    }

    /// Receives for `k` while the engine receives and the peer has something; returns the receives.
    fn deliver_all(&mut self, k: usize) -> usize {
        let mut n = 0;
        while self.deliver(k) {
            n += 1;
            assert!(n < 1_000_000);
        }
        n
    }

    fn deliver_everything(&mut self) {
        loop {
            let mut any = false;
            for k in 0..self.peers.len() {
                any |= self.deliver(k);
            }
            if !any {
                break;
            }
        }
    }

    fn fail(&mut self, k: usize, errno: i32) {
        let id = self.id(k);
        self.m.failed(id.idx, id.gen, errno);
        self.pump();
    }

    fn shutdown(&mut self) {
        self.m.shutdown(self.now);
        self.pump();
    }

    /// Moves the clock to `t`, ticking at every deadline the machine names on the way and at `t`.
    fn advance_to(&mut self, t: u64) {
        assert!(t >= self.now);
        let mut last = None;
        let mut same = 0;
        while let Some(d) = self.m.next_deadline() {
            if d > t {
                break;
            }
            let at = d.max(self.now);
            if last == Some(at) {
                same += 1;
                if same >= 3 {
                    break; // a deadline in the past that ticking does not move (see the drain test)
                }
            } else {
                same = 0;
                last = Some(at);
            }
            self.now = at;
            self.ticks += 1;
            self.m.tick(at);
            self.pump();
        }
        self.now = t;
        self.ticks += 1;
        self.m.tick(t);
        self.pump();
    }

    fn advance(&mut self, ms: u64) {
        self.advance_to(self.now + ms);
    }

    // ---------------------------------------------------------- peer

    fn write(&mut self, k: usize, n: usize) {
        let p = &mut self.peers[k];
        assert!(!p.fin_sent, "write after FIN");
        let from = p.written.len();
        let n = n * self.write_scale;
        match self.stream {
            Some(st) => p
                .written
                .extend_from_slice(&st[from.min(st.len())..(from + n).min(st.len())]),
            None => p.written.extend((from..from + n).map(|i| pat(k, i))),
        }
    }

    /// Writes `n` bytes and receives while the engine receives.
    fn send_in(&mut self, k: usize, n: usize) -> usize {
        self.write(k, n);
        self.deliver_all(k)
    }

    fn fin(&mut self, k: usize) {
        self.peers[k].fin_sent = true;
    }

    fn stop_reading(&mut self, k: usize) {
        self.peers[k].window = Some(0);
    }

    fn start_reading(&mut self, k: usize) {
        self.peers[k].window = None;
        self.pump();
    }

    /// The peer reads `n` more bytes.
    fn allow(&mut self, k: usize, n: usize) {
        if let Some(w) = &mut self.peers[k].window {
            *w += n;
        }
        self.pump();
    }

    // ---------------------------------------------------------- looking

    fn check(&self) {
        assert_eq!(
            self.pool.outstanding() as u32,
            self.m.buffers_held(),
            "buffers lent by the pool = buffers the machine holds"
        );
        let unreleased = self.peers.iter().filter(|p| !p.released).count();
        assert_eq!(self.m.live(), unreleased, "live slots");
        for (k, p) in self.peers.iter().enumerate() {
            if self.echoes {
                assert!(
                    p.got.len() <= p.delivered,
                    "peer {k} got bytes it never sent"
                );
                assert!(
                    p.got[..] == p.written[..p.got.len()],
                    "peer {k}: the echo is not a prefix of what it sent"
                );
            }
            if !p.released && p.closed.is_none() {
                assert_eq!(
                    p.reading,
                    self.m.wants_read(p.id.idx, p.id.gen),
                    "peer {k}: engine receiving vs machine wants_read"
                );
            }
        }
    }

    fn actions(&self, k: usize) -> Vec<Action> {
        let id = self.id(k);
        self.log
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| act_id(*a) == Some(id))
            .collect()
    }

    fn count(&self, k: usize, f: fn(&Action) -> bool) -> usize {
        self.actions(k).iter().filter(|a| f(a)).count()
    }

    fn sends(&self, k: usize) -> usize {
        self.count(k, |a| matches!(a, Action::Send(_)))
    }

    fn closed(&self, k: usize) -> bool {
        self.peers[k].closed.is_some()
    }

    fn closed_at(&self, k: usize) -> Option<u64> {
        self.peers[k].closed
    }

    fn eof_at(&self, k: usize) -> Option<u64> {
        self.peers[k].eof_at
    }

    fn reading(&self, k: usize) -> bool {
        self.peers[k].reading
    }

    fn closes(&self, r: CloseReason) -> u64 {
        self.m.counters.closes[r as usize]
    }

    fn conn(&self, k: usize) -> &Conn {
        let id = self.id(k);
        self.m.slots.get(id.idx, id.gen).expect("live")
    }

    fn echoed_all(&self, k: usize) -> bool {
        self.peers[k].got == self.peers[k].written
    }
}

fn act_id(a: Action) -> Option<Id> {
    match a {
        Action::Recv(id)
        | Action::StopRecv(id)
        | Action::Send(id)
        | Action::ShutdownWrite(id)
        | Action::Close(id)
        | Action::Abort(id) => Some(id),
        Action::Provide { .. } => None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 16 buffers of 16 bytes, 4 per connection, idle and send timeout 3.2 s, linger 320 ms, drain 1 s: a
/// 10 ms wheel tick.
fn cfg() -> EngineConfig {
    EngineConfig {
        buffer_size: 16,
        buffers: 16,
        idle_timeout: Some(ms(3200)),
        send_timeout: Some(ms(3200)),
        linger_timeout: ms(320),
        shutdown_timeout: ms(1000),
        max_queued_buffers: 4,
        ..EngineConfig::default()
    }
}

fn sim() -> Sim {
    Sim::new(cfg())
}

// ====================================================================== the harness itself

#[test]
#[should_panic(expected = "recycled twice")]
fn harness_pool_catches_a_double_recycle() {
    let mut p = FakePool::new(2, 4);
    let b = p.take().unwrap();
    p.recycle(b);
    p.recycle(b);
}

#[test]
#[should_panic(expected = "which is in the pool")]
fn harness_pool_catches_use_after_recycle() {
    let mut p = FakePool::new(2, 4);
    let b = p.take().unwrap();
    p.recycle(b);
    let _ = p.bytes_mut(b);
}

// ====================================================================== size and limits

#[test]
fn conn_fits_in_64_bytes_with_its_queues_and_protocol_state() {
    assert!(
        std::mem::size_of::<Conn>() <= 64,
        "{}",
        std::mem::size_of::<Conn>()
    );
    assert_eq!(std::mem::size_of::<Queue>(), 8);
}

#[test]
fn limits_are_clamped_to_sane_values() {
    let c = EngineConfig {
        max_queued_buffers: 0,
        check_every: 0,
        idle_timeout: Some(Duration::ZERO),
        send_timeout: Some(Duration::ZERO),
        ..cfg()
    };
    let l = Limits::new(&c);
    assert_eq!(l.max_queued, 1);
    assert_eq!(l.check_every, 1);
    assert_eq!(l.idle_timeout, None);
    assert_eq!(l.send_timeout, None);
    assert!(!l.rate_limited());
    let spec = BucketSpec {
        rate: 10.0,
        burst: 10.0,
    };
    assert!(Limits::new(&EngineConfig {
        message_rate: Some(spec),
        ..cfg()
    })
    .rate_limited());
    assert!(Limits::new(&EngineConfig {
        rate_limit: Some(spec),
        ..cfg()
    })
    .rate_limited());
}

// ====================================================================== accept, slots, generations

#[test]
fn accept_arms_a_receive_and_counts() {
    let mut s = sim();
    let a = s.open();
    assert_eq!(s.actions(a), vec![Action::Recv(s.id(a))]);
    assert!(s.reading(a));
    assert_eq!(s.m.counters.accepts, 1);
    assert_eq!(s.m.counters.active, 1);
    assert_eq!(s.m.live(), 1);
    assert_eq!(s.shared.active(), 1);
    assert_eq!(s.m.live_ids(), vec![s.id(a)]);
    assert!(!s.m.draining() && !s.m.finished());
}

#[test]
fn max_connections_refuses_and_a_close_gives_the_place_back() {
    let shared = Arc::new(Shared::new(2));
    let mut s = Sim::with_shared(cfg(), shared.clone());
    let a = s.open();
    let _b = s.open();
    assert_eq!(s.accept(), Err(RejectReason::MaxConnections));
    assert_eq!(
        s.m.counters.rejected[RejectReason::MaxConnections as usize],
        1
    );
    assert_eq!(s.m.counters.accepts, 2);
    assert_eq!(shared.active(), 2);
    assert!(s.log.iter().all(|(_, a)| matches!(a, Action::Recv(_))));
    s.fail(a, 104);
    assert_eq!(
        shared.active(),
        1,
        "the place is given back when the close starts"
    );
    assert!(s.accept().is_ok());
    assert_eq!(shared.active(), 2);
}

#[test]
fn accept_while_draining_is_refused_with_shutdown() {
    let mut s = sim();
    s.shutdown();
    assert_eq!(s.accept(), Err(RejectReason::Shutdown));
    assert_eq!(s.m.counters.rejected[RejectReason::Shutdown as usize], 1);
    assert_eq!(s.shared.active(), 0, "a refused connection holds no place");
    assert_eq!(s.m.counters.accepts, 0);
    assert_eq!(s.m.live(), 0);
}

#[test]
fn accept_after_the_shared_shutdown_flag_is_refused() {
    let mut s = sim();
    s.shared.begin_shutdown();
    assert_eq!(s.accept(), Err(RejectReason::Shutdown));
    assert_eq!(s.shared.active(), 0);
    assert_eq!(s.m.counters.rejected[RejectReason::Shutdown as usize], 1);
}

#[test]
#[cfg_attr(debug_assertions, should_panic(expected = "still in use"))]
fn accept_into_a_live_slot_is_refused_loudly() {
    let mut s = sim();
    let a = s.open();
    let idx = s.id(a).idx;
    assert_eq!(s.m.accept(idx, 0), Err(RejectReason::TableFull));
    assert_eq!(s.m.counters.rejected[RejectReason::TableFull as usize], 1);
    assert_eq!(
        s.shared.active(),
        1,
        "the place taken for the refused one is given back"
    );
    assert_eq!(s.m.counters.accepts, 1);
    assert!(
        s.m.conn_mut(idx, s.id(a).gen).is_some(),
        "the live one is untouched"
    );
}

#[test]
fn a_reused_slot_gets_a_new_generation_and_stale_events_are_ignored() {
    let mut s = sim();
    let a = s.open();
    s.fail(a, 104);
    assert!(s.peers[a].released);
    let old = s.id(a);
    let b = s.accept_at(old.idx).unwrap();
    let new = s.id(b);
    assert_eq!(new.idx, old.idx);
    assert_ne!(new.gen, old.gen);
    let before = s.m.counters.clone();
    s.log.clear();
    // Stale completions of every kind for the old generation.
    let bid = s.pool.take().unwrap();
    s.m.received(&mut s.pool, old.idx, old.gen, bid, 8, 0);
    assert!(
        !s.pool.is_lent(bid),
        "a stale receive's buffer is recycled at once"
    );
    s.m.sent(&mut s.pool, old.idx, old.gen, 3, 0);
    s.m.peer_fin(old.idx, old.gen, 0);
    s.m.no_buffer(old.idx, old.gen);
    s.m.failed(old.idx, old.gen, 104);
    s.m.released(&mut s.pool, old.idx, old.gen);
    s.pump();
    assert!(s.log.is_empty(), "stale events act on nothing: {:?}", s.log);
    assert!(s.m.wants_read(new.idx, new.gen));
    assert_eq!(s.m.front(new.idx, new.gen), None);
    assert!(s.m.front(old.idx, old.gen).is_none());
    assert!(s.m.conn_mut(old.idx, old.gen).is_none());
    assert_eq!(s.m.counters.active, before.active);
    assert_eq!(s.m.counters.closes, before.closes);
    assert_eq!(s.m.live(), 1);
    // The new connection works.
    s.send_in(b, 40);
    assert!(s.echoed_all(b));
}

#[test]
fn released_twice_frees_the_slot_once() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    let b = s.open();
    s.stop_reading(a);
    s.send_in(a, 40);
    s.fail(a, 32);
    let id = s.id(a);
    s.release(a);
    s.m.released(&mut s.pool, id.idx, id.gen);
    assert_eq!(s.m.live(), 1);
    assert_eq!(s.m.counters.active, 1);
    assert_eq!(s.shared.active(), 1);
    s.pool.assert_all_home();
    s.send_in(b, 20);
    assert!(s.echoed_all(b));
}

#[test]
fn released_without_close_is_counted_as_an_error_and_recycles_everything() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 50);
    assert_eq!(s.m.buffers_held(), 4);
    s.release(a); // an engine clean-up (say, after a failed submit)
    assert_eq!(s.closes(CloseReason::Error), 1);
    assert_eq!(s.m.counters.active, 0);
    assert_eq!(s.shared.active(), 0);
    assert_eq!(s.m.live(), 0);
    s.pool.assert_all_home();
}

// ====================================================================== echo and the send cycle

#[test]
fn echo_is_sent_from_the_receive_buffer_in_place() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    assert_eq!(s.actions(a)[1], Action::Send(s.id(a)));
    let id = s.id(a);
    match s.m.front(id.idx, id.gen) {
        Some(Front::Buf {
            off: 0,
            len: 10,
            bid,
        }) => assert!(s.pool.is_lent(bid)),
        f => panic!("expected the received buffer, got {f:?}"),
    }
    assert_eq!(s.m.buffers_held(), 1);
    s.start_reading(a);
    assert!(s.echoed_all(a));
    assert_eq!(s.m.buffers_held(), 0);
    assert_eq!(s.pool.recycles, 1, "recycled once its bytes were sent");
}

#[test]
fn echo_is_byte_exact_and_in_order_across_many_buffers() {
    let mut s = sim();
    let a = s.open();
    let b = s.open();
    for round in 0..50 {
        s.write(a, 37 + round);
        s.write(b, 5 + 3 * round);
        s.deliver_everything();
    }
    assert!(s.echoed_all(a) && s.echoed_all(b));
    assert!(s.peers[a].written.len() > 100 * 16);
    s.pool.assert_all_home();
}

#[test]
fn partial_sends_keep_order_and_recycle_only_after_the_last_byte() {
    let mut s = sim();
    let a = s.open();
    s.peers[a].send_max = 3;
    s.stop_reading(a);
    s.send_in(a, 16);
    let bid = match s.m.front(s.id(a).idx, s.id(a).gen) {
        Some(Front::Buf { bid, .. }) => bid,
        f => panic!("{f:?}"),
    };
    for sent in [3, 6, 9, 12, 15] {
        s.allow(a, 3);
        assert_eq!(s.peers[a].got.len(), sent);
        assert!(
            s.pool.is_lent(bid),
            "buffer kept while bytes of it are unsent"
        );
        assert_eq!(s.m.counters.bytes_sent, sent as u64);
    }
    s.allow(a, 3);
    assert!(s.echoed_all(a));
    assert!(!s.pool.is_lent(bid));
    assert_eq!(s.sends(a), 1, "one send cycle for the whole buffer");
}

#[test]
fn echo_with_random_partial_sends_and_receive_sizes() {
    let mut s = sim();
    let a = s.open();
    s.peers[a].send_max = 5;
    s.peers[a].recv_max = 7;
    s.send_in(a, 1000);
    assert!(s.echoed_all(a));
    s.pool.assert_all_home();
}

#[test]
fn one_send_cycle_at_a_time() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 16 * 3);
    assert_eq!(
        s.sends(a),
        1,
        "more output during a cycle starts no second one"
    );
    s.start_reading(a);
    assert!(s.echoed_all(a));
    assert_eq!(s.sends(a), 1);
    // The cycle ended when the queue emptied: new output starts a new one.
    s.send_in(a, 5);
    assert_eq!(s.sends(a), 2);
    assert!(s.echoed_all(a));
}

#[test]
fn a_send_of_zero_bytes_closes_with_error() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 20);
    let id = s.id(a);
    s.m.sent(&mut s.pool, id.idx, id.gen, 0, s.now);
    s.pump();
    assert!(s.closed(a));
    assert_eq!(s.closes(CloseReason::Error), 1);
    s.pool.assert_all_home();
}

#[test]
fn byte_counters_are_exact() {
    let mut s = sim();
    let a = s.open();
    let b = s.open();
    s.peers[b].send_max = 4;
    s.send_in(a, 100);
    s.send_in(b, 33);
    assert_eq!(s.m.counters.bytes_received, 133);
    assert_eq!(s.m.counters.bytes_sent, 133);
    s.stop_reading(b);
    s.send_in(b, 10);
    assert_eq!(s.m.counters.bytes_received, 143);
    assert_eq!(s.m.counters.bytes_sent, 133);
}

// ====================================================================== backpressure and fairness

#[test]
fn backpressure_stops_reading_at_pending_buffers() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    let reads = s.send_in(a, 16 * 10);
    assert_eq!(reads, 4, "--pending-buffers 4");
    assert_eq!(s.m.buffers_held(), 4);
    assert!(!s.reading(a));
    assert_eq!(
        s.actions(a).last(),
        Some(&Action::StopRecv(s.id(a))),
        "{:?}",
        s.actions(a)
    );
    assert_eq!(
        s.m.counters.reserve_pauses, 0,
        "not the reserve: its own allowance"
    );
    assert_eq!(s.conn(a).queued, 4);
}

#[test]
fn backpressure_resumes_as_the_queue_drains_and_loses_nothing() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 16 * 10);
    s.allow(a, 16);
    assert!(s.reading(a), "room for a buffer again: reading resumes");
    s.start_reading(a);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
    assert!(s.reading(a));
    assert_eq!(s.m.buffers_held(), 0);
}

#[test]
fn a_receive_in_flight_when_reading_stopped_is_kept_in_order() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 16 * 6);
    assert!(!s.reading(a));
    assert!(
        s.deliver_late(a),
        "a multishot receive completed after StopRecv"
    );
    assert_eq!(s.m.buffers_held(), 5);
    assert!(!s.reading(a));
    s.start_reading(a);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
}

#[test]
fn pending_buffers_of_zero_means_one() {
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 0,
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    assert_eq!(s.send_in(a, 64), 1);
    assert!(!s.reading(a));
}

/// 16 buffers, 8 per connection: the reserve is 2 buffers; every connection holding none is owed one;
/// what is left is shared among the holders: allowance = min(8, 1 + spare / (holders + 1)).
fn fairness() -> Sim {
    Sim::new(EngineConfig {
        max_queued_buffers: 8,
        ..cfg()
    })
}

#[test]
fn the_allowance_shrinks_as_the_pool_empties() {
    let mut s = fairness();
    let a = s.open();
    let b = s.open();
    let c = s.open();
    for k in [a, b, c] {
        s.stop_reading(k);
    }
    // a alone holds: spare = 16 - q - 2 (reserve) - 2 (b, c owed one each); stops at q = 1 + spare/2.
    assert_eq!(s.send_in(a, 16 * 20), 5);
    assert_eq!(s.m.counters.reserve_pauses, 1);
    // b: 2 holders, c owed: 1 + (16 - 5 - q - 2 - 1) / 3.
    assert_eq!(s.send_in(b, 16 * 20), 3);
    // c: 3 holders, nobody owed: 1 + (16 - 8 - q - 2) / 4.
    assert_eq!(s.send_in(c, 16 * 20), 2);
    assert_eq!(s.m.counters.reserve_pauses, 3);
    assert!(!s.reading(a) && !s.reading(b) && !s.reading(c));
    assert_eq!(s.m.buffers_held(), 10);
    assert_eq!(
        s.m.allowance(),
        2,
        "6 free, 2 of them the reserve: 1 + 4 / (3 holders + 1)"
    );
}

#[test]
fn a_connection_alone_in_a_large_pool_gets_the_full_allowance() {
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 8,
        buffers: 1024,
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    assert_eq!(s.send_in(a, 16 * 20), 8);
    assert_eq!(s.m.counters.reserve_pauses, 0);
}

#[test]
fn peers_that_never_read_leave_the_reserve_to_a_connection_holding_none() {
    let mut s = fairness();
    let writers: Vec<usize> = (0..14).map(|_| s.open()).collect();
    let fresh = s.open();
    for &w in &writers {
        s.stop_reading(w);
        s.send_in(w, 16 * 4);
    }
    // Each writer was owed one buffer and got it; nothing more was left to share.
    for &w in &writers {
        assert!(!s.reading(w), "a writer holding its share stopped reading");
    }
    assert_eq!(s.m.buffers_held(), 14);
    assert_eq!(s.m.allowance(), 0, "only the reserve is free");
    // A connection holding none still reads, and its echo flows through the reserve.
    assert!(s.reading(fresh));
    for _ in 0..20 {
        assert_eq!(s.send_in(fresh, 16), 1);
        assert!(s.reading(fresh), "its echo went out: it holds none again");
    }
    assert!(s.echoed_all(fresh));
    assert_eq!(s.m.counters.buffer_exhausted, 0);
}

#[test]
fn a_connection_paused_for_the_reserve_resumes_when_its_peer_reads() {
    let mut s = fairness();
    let a = s.open();
    let b = s.open();
    s.stop_reading(a);
    s.stop_reading(b);
    s.send_in(a, 16 * 8);
    s.send_in(b, 16 * 20);
    assert!(!s.reading(b));
    s.start_reading(b);
    assert!(s.reading(b));
    s.deliver_all(b);
    assert!(s.echoed_all(b));
    s.start_reading(a);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
    s.pool.assert_all_home();
}

// ====================================================================== no buffer

/// Takes every buffer of the pool with stalled connections (fairness config): returns them.
fn exhaust(s: &mut Sim) -> Vec<usize> {
    let mut hogs = Vec::new();
    while !s.pool.free.is_empty() {
        let k = s.open();
        s.stop_reading(k);
        s.send_in(k, 16 * 16);
        hogs.push(k);
    }
    hogs
}

#[test]
fn no_buffer_waits_without_reading() {
    let mut s = fairness();
    exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    assert!(s.deliver(w));
    assert_eq!(s.m.counters.buffer_exhausted, 1);
    assert!(!s.reading(w));
    assert!(!s.m.wants_read(s.id(w).idx, s.id(w).gen));
    assert_eq!(s.actions(w).last(), Some(&Action::StopRecv(s.id(w))));
    assert_eq!(s.m.counters().waiting_for_buffer, 1);
    assert_eq!(s.m.counters().buffers_in_use, 16);
}

#[test]
fn no_buffer_never_spins() {
    let mut s = fairness();
    exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    let n = s.log.len();
    for _ in 0..50 {
        if let Some(d) = s.m.next_deadline() {
            assert!(d > s.now, "nothing to do now, yet asked to tick now");
        }
        s.advance(10);
    }
    assert_eq!(
        s.log.len(),
        n,
        "no actions without progress: {:?}",
        &s.log[n..]
    );
    assert_eq!(s.m.counters.buffer_exhausted, 1);
}

#[test]
fn a_waiter_is_woken_by_the_tick_after_a_buffer_is_freed() {
    let mut s = fairness();
    let hogs = exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    s.allow(hogs[0], 16); // one buffer back to the pool
    assert_eq!(
        s.m.next_deadline(),
        Some(s.now),
        "a waiter and a free buffer: tick now"
    );
    assert!(!s.reading(w), "woken by the tick, not by the send");
    s.m.tick(s.now);
    s.pump();
    assert!(s.reading(w));
    assert_eq!(s.m.counters().waiting_for_buffer, 0);
    s.deliver_all(w);
    assert!(s.echoed_all(w));
}

/// `n` connections waiting for a buffer behind stalled ones that hold the whole pool.
fn waiting(n: usize) -> (Sim, Vec<usize>, Vec<usize>) {
    let mut s = fairness();
    let hogs = exhaust(&mut s);
    let ws: Vec<usize> = (0..n).map(|_| s.open()).collect();
    for &w in &ws {
        s.write(w, 10);
        s.deliver(w);
        assert!(!s.reading(w));
    }
    assert_eq!(s.m.counters().waiting_for_buffer, n as u64);
    (s, hogs, ws)
}

#[test]
fn waiters_are_woken_first_come_first_served_one_per_free_buffer() {
    let (mut s, hogs, ws) = waiting(3);
    s.allow(hogs[0], 16); // one buffer free
    s.m.tick(s.now);
    s.pump();
    assert!(s.reading(ws[0]) && !s.reading(ws[1]) && !s.reading(ws[2]));
    s.deliver_all(ws[0]); // it takes the buffer and gives it back with the echo
    s.allow(hogs[0], 16); // two free now
    s.m.tick(s.now);
    s.pump();
    assert!(s.reading(ws[1]) && s.reading(ws[2]));
    assert_eq!(s.m.counters().waiting_for_buffer, 0);
    for &w in &ws {
        s.deliver_all(w);
        assert!(s.echoed_all(w));
    }
    assert_eq!(
        s.m.counters.buffer_exhausted, 3,
        "nobody missed a buffer twice"
    );
}

#[test]
fn a_woken_waiter_that_loses_its_buffer_to_a_newcomer_keeps_its_place() {
    // A burst of new connections can take the buffer a woken waiter was promised: the waiter then
    // goes back to the head of the queue (not the tail, behind everyone who came after it), and
    // the promise is released, so the next free buffer is its own.
    let (mut s, hogs, ws) = waiting(3);
    let newcomer = s.open();
    s.allow(hogs[0], 16); // one buffer free
    s.m.tick(s.now);
    s.pump();
    assert!(s.reading(ws[0]) && !s.reading(ws[1]));
    // The newcomer's receive completes first and takes the buffer (its peer is not reading yet).
    s.stop_reading(newcomer);
    s.write(newcomer, 10);
    assert!(s.deliver(newcomer));
    assert!(s.deliver(ws[0]), "ws[0]'s receive completes");
    assert!(!s.reading(ws[0]), "and finds no buffer: it waits again");
    assert_eq!(s.m.counters().waiting_for_buffer, 3);
    s.start_reading(newcomer); // the newcomer's echo goes out and gives its buffer back
    s.m.tick(s.now);
    s.pump();
    assert!(
        s.reading(ws[0]) && !s.reading(ws[1]) && !s.reading(ws[2]),
        "the first to wait is the first served"
    );
    s.deliver_all(ws[0]);
    assert!(s.echoed_all(ws[0]));
}

#[test]
fn one_free_buffer_wakes_one_waiter_however_the_engine_ticks() {
    let (mut s, hogs, ws) = waiting(3);
    s.allow(hogs[0], 16); // one buffer free
    assert_eq!(s.m.next_deadline(), Some(s.now));
    s.m.tick(s.now);
    s.pump();
    assert!(s.reading(ws[0]));
    // The engine sleeps until next_deadline; the buffer is ws[0]'s until its receive completes.
    let d = s.m.next_deadline();
    assert!(d.is_some_and(|d| d > s.now), "tick again at once: {d:?}");
    s.advance(0);
    assert!(
        !s.reading(ws[1]) && !s.reading(ws[2]),
        "three woken for one buffer"
    );
}

/// A receive that finds the ring empty says the pool is spent, whatever the machine's count: a pool
/// that may still grow grows at once to cover every waiter, and the next tick wakes them all.
/// Before, the pool doubled one step per received buffer and a burst of 3,000 waiters on a pool of
/// 1,024 was served a quarter at a time, the oldest first, so a ping-pong client that queued behind
/// a flood of writers waited seconds (bench/results/2026-12-06-vm-adversarial: 3.5 s).
#[test]
fn waiters_grow_the_pool_to_cover_them_at_once() {
    let cfg = EngineConfig {
        buffers: 16384,
        ..cfg()
    };
    let mut m = Machine::new(&cfg, Arc::new(Shared::new(0)));
    assert_eq!(m.initial_buffers(), 1024);
    let ids: Vec<Id> = (0..3000)
        .map(|idx| Id {
            idx,
            gen: m.accept(idx, 0).expect("admitted"),
        })
        .collect();
    while m.poll_action().is_some() {}
    for id in &ids {
        m.no_buffer(id.idx, id.gen);
    }
    let mut capacity = 1024u32;
    let mut provides = 0;
    while let Some(a) = m.poll_action() {
        if let Action::Provide { from, count } = a {
            assert_eq!(
                u32::from(from),
                capacity,
                "buffers provided twice or skipped"
            );
            capacity += u32::from(count);
            provides += 1;
        }
    }
    assert_eq!(m.counters().waiting_for_buffer, 3000);
    assert_eq!(m.counters().buffers_total, u64::from(capacity));
    assert!(
        capacity > 3000 + capacity / 4,
        "the pool ({capacity}) does not cover 3,000 waiters and a quarter"
    );
    assert!(capacity <= 16384);
    assert!(provides <= 3, "{provides} provides for one burst");
    assert_eq!(m.next_deadline(), Some(0), "the waiters can be woken now");
    m.tick(0);
    let mut woken = 0;
    while let Some(a) = m.poll_action() {
        match a {
            Action::Recv(_) => woken += 1,
            Action::Provide { .. } => panic!("grew again without a new waiter"),
            _ => {}
        }
    }
    assert_eq!(woken, 3000, "every waiter woken by one tick");
    assert_eq!(m.counters().waiting_for_buffer, 0);
}

#[test]
fn no_buffer_twice_waits_once() {
    let mut s = fairness();
    let hogs = exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    s.deliver_late(w); // a second ENOBUFS completion
    assert_eq!(s.m.counters.buffer_exhausted, 2);
    assert_eq!(s.m.counters().waiting_for_buffer, 1);
    s.allow(hogs[0], 16);
    s.advance(0);
    assert!(s.reading(w));
    assert_eq!(s.count(w, |a| matches!(a, Action::Recv(_))), 2);
}

#[test]
fn a_connection_waiting_for_a_buffer_is_never_idle() {
    // Idle timeout 300 ms: the waiter waits more than three of them before buffer pressure (1 s)
    // frees a buffer for it.
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 8,
        idle_timeout: Some(ms(300)),
        send_timeout: None,
        ..cfg()
    });
    let hogs = exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    s.advance(950);
    assert!(!s.closed(w), "waiting is our doing, not idleness");
    assert!(
        hogs.iter().all(|&h| !s.closed(h)),
        "stalled under a second, with send timeout off"
    );
    s.allow(hogs[0], 16);
    s.advance(0);
    assert!(s.reading(w));
    // Woken: the idle clock starts again.
    let t = s.now;
    s.deliver_all(w);
    s.advance(290);
    assert!(!s.closed(w));
    s.advance(10);
    assert_eq!(
        s.eof_at(w).map(|c| c - t),
        Some(300),
        "idle close 300 ms after the wake"
    );
}

// ====================================================================== buffer pressure

#[test]
fn buffer_pressure_closes_the_longest_stalled_peer_for_a_waiter() {
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 8,
        send_timeout: None,
        idle_timeout: None,
        ..cfg()
    });
    let hogs = exhaust(&mut s);
    // The later hogs made progress since: hogs[0] has stalled longest.
    s.advance(500);
    for &h in &hogs[1..] {
        s.allow(h, 1);
    }
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    assert_eq!(s.m.counters().waiting_for_buffer, 1);
    // Under a second of stall nobody is closed, and the machine does not spin meanwhile.
    let n = s.log.len();
    while s.now < 990 {
        let d =
            s.m.next_deadline()
                .expect("a deadline while a receive waits");
        assert!(d > s.now, "asked to tick now with nothing to do");
        s.advance_to(d.min(990));
    }
    assert_eq!(s.log.len(), n, "no actions before a second of stall");
    s.advance(20);
    assert_eq!(s.closes(CloseReason::BufferPressure), 1);
    assert!(s.closed(hogs[0]), "the one stalled longest goes");
    assert!(hogs[1..].iter().all(|&h| !s.closed(h)));
    assert_eq!(
        s.actions(hogs[0]).last(),
        Some(&Action::Abort(s.id(hogs[0]))),
        "what it was owed cannot be delivered: RST"
    );
    // Its buffers went to the waiter, which is served.
    s.advance(0);
    assert!(s.reading(w));
    assert_eq!(s.m.counters().waiting_for_buffer, 0);
    s.deliver_all(w);
    assert!(s.echoed_all(w));
}

#[test]
fn buffer_pressure_closes_one_stalled_peer_per_waiter_and_none_without_waiters() {
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 8,
        send_timeout: None,
        idle_timeout: None,
        ..cfg()
    });
    let hogs = exhaust(&mut s);
    // Stalled for long, but nobody waits: nobody is closed.
    s.advance(5_000);
    assert_eq!(s.closes(CloseReason::BufferPressure), 0);
    let ws: Vec<usize> = (0..3).map(|_| s.open()).collect();
    for &w in &ws {
        s.write(w, 10);
        s.deliver(w);
    }
    s.advance(200);
    let closed = hogs.iter().filter(|&&h| s.closed(h)).count();
    // Each hog holds 4 buffers: closing one frees enough for all three waiters, but the machine
    // closes one per waiter that no free buffer serves at the time of its scan.
    assert!(
        (1..=3).contains(&closed),
        "{closed} hogs closed for 3 waiters"
    );
    assert_eq!(s.closes(CloseReason::BufferPressure), closed as u64);
    for &w in &ws {
        assert!(s.reading(w));
        s.deliver_all(w);
        assert!(s.echoed_all(w));
    }
    let before = s.closes(CloseReason::BufferPressure);
    s.advance(5_000);
    assert_eq!(
        s.closes(CloseReason::BufferPressure),
        before,
        "no waiters, no closes"
    );
}

#[test]
fn a_healthy_peer_holding_buffers_is_not_closed_for_pressure() {
    // A peer whose echo is moving (it reads, slowly) holds buffers but is never the one closed.
    let mut s = Sim::new(EngineConfig {
        max_queued_buffers: 8,
        send_timeout: None,
        idle_timeout: None,
        ..cfg()
    });
    let hogs = exhaust(&mut s);
    let w = s.open();
    s.write(w, 10);
    s.deliver(w);
    // 1 byte each every 100 ms for 1.5 s: under a buffer (16 B) each, so the pool stays full.
    for _ in 0..15 {
        for &h in &hogs {
            s.allow(h, 1);
        }
        s.advance(100);
    }
    assert_eq!(
        s.m.counters().waiting_for_buffer,
        1,
        "the pressure lasted the whole time"
    );
    assert_eq!(s.closes(CloseReason::BufferPressure), 0);
    // Once the hogs stop reading, a second later one of them goes.
    s.advance(1_100);
    assert_eq!(s.closes(CloseReason::BufferPressure), 1);
    assert!(s.reading(w));
}

#[test]
fn the_waiting_gauge_forgets_a_waiter_that_closed() {
    let mut s = fairness();
    exhaust(&mut s);
    let w1 = s.open();
    let w2 = s.open();
    for w in [w1, w2] {
        s.write(w, 10);
        s.deliver(w);
    }
    assert_eq!(s.m.counters().waiting_for_buffer, 2);
    s.fail(w2, 104);
    assert!(s.peers[w2].released);
    assert_eq!(s.m.counters().waiting_for_buffer, 1);
}

// ====================================================================== rate limits

fn rate_cfg(rate: Option<(f64, f64)>, msgs: Option<(f64, f64)>, check_every: u16) -> EngineConfig {
    EngineConfig {
        buffer_size: 2048,
        max_queued_buffers: 8,
        rate_limit: rate.map(|(rate, burst)| BucketSpec { rate, burst }),
        message_rate: msgs.map(|(rate, burst)| BucketSpec { rate, burst }),
        check_every,
        ..cfg()
    }
}

#[test]
fn a_byte_rate_in_debt_pauses_reading_until_it_is_paid() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 1000.0)), None, 1));
    let a = s.open();
    s.write(a, 1500);
    assert!(s.deliver(a));
    assert!(!s.reading(a), "500 bytes of debt");
    s.write(a, 100);
    assert_eq!(s.m.counters.pauses, 1);
    assert_eq!(s.m.counters.throttled, 1);
    assert!(s.echoed_all_delivered(a), "what was read is still echoed");
    s.advance_to(499);
    assert!(!s.reading(a));
    s.advance_to(500);
    assert!(s.reading(a), "500 ms at 1000 B/s");
    assert_eq!(s.m.counters.throttled, 0);
    assert_eq!(s.m.counters.pauses, 1);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
}

impl Sim {
    fn echoed_all_delivered(&self, k: usize) -> bool {
        let p = &self.peers[k];
        p.got[..] == p.written[..p.delivered]
    }
}

#[test]
fn a_message_rate_pauses_after_the_burst() {
    let mut s = Sim::new(rate_cfg(None, Some((10.0, 10.0)), 1));
    let a = s.open();
    for i in 0..10 {
        s.write(a, 1);
        assert!(s.deliver(a));
        assert!(s.reading(a), "read {i} is within the burst");
    }
    s.write(a, 1);
    s.deliver(a);
    assert!(!s.reading(a));
    s.advance_to(99);
    assert!(!s.reading(a));
    s.advance_to(100);
    assert!(s.reading(a), "one read per 100 ms");
}

#[test]
fn limits_are_checked_every_check_every_reads() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 1000.0)), None, 4));
    let a = s.open();
    for _ in 0..3 {
        s.write(a, 600);
        s.deliver(a);
        assert!(s.reading(a), "in debt, but not a check read");
    }
    s.write(a, 600);
    s.deliver(a);
    assert!(!s.reading(a));
    assert_eq!(s.m.counters.pauses, 1);
    // 2400 bytes against a burst of 1000: 1400 ms of debt.
    s.advance_to(1399);
    assert!(!s.reading(a));
    s.advance_to(1400);
    assert!(s.reading(a));
}

#[test]
fn a_pause_is_rounded_up_to_whole_milliseconds_not_one_more() {
    // 3 bytes against a burst of 1 at 1000 B/s: 2 ms of debt exactly.
    let mut s = Sim::new(rate_cfg(Some((1000.0, 1.0)), None, 1));
    let a = s.open();
    s.write(a, 3);
    s.deliver(a);
    assert!(!s.reading(a));
    s.advance_to(1);
    assert!(!s.reading(a));
    s.advance_to(2);
    assert!(s.reading(a), "exactly 2 ms, not 3 (the old uring +1)");
    // 1.5 ms of debt waits 2.
    let mut s = Sim::new(rate_cfg(Some((2000.0, 1.0)), None, 1));
    let a = s.open();
    s.write(a, 4);
    s.deliver(a);
    s.advance_to(1);
    assert!(!s.reading(a));
    s.advance_to(2);
    assert!(s.reading(a));
    assert_eq!(ceil_ms(ms(2)), 2);
    assert_eq!(ceil_ms(Duration::from_micros(1500)), 2);
}

#[test]
fn with_both_limits_the_longer_pause_wins() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 100.0)), Some((10.0, 1.0)), 1));
    let a = s.open();
    s.write(a, 150); // 50 ms of byte debt; 0 reads of debt
    s.deliver(a);
    assert!(!s.reading(a));
    s.advance_to(50);
    assert!(s.reading(a));
    // Bytes: 1 of debt (1 ms); reads: 0.5 refilled in 50 ms, 0.5 of debt (50 ms).
    s.write(a, 1);
    s.deliver(a);
    assert!(!s.reading(a));
    s.advance_to(99);
    assert!(!s.reading(a));
    s.advance_to(100);
    assert!(s.reading(a));
}

#[test]
fn check_every_zero_means_every_read() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 10.0)), None, 0));
    let a = s.open();
    s.write(a, 20);
    s.deliver(a);
    assert!(!s.reading(a));
}

#[test]
fn a_throttled_connection_is_not_idle_and_resuming_restarts_the_idle_clock() {
    let mut s = Sim::new(rate_cfg(Some((100.0, 100.0)), None, 1));
    let a = s.open();
    s.write(a, 600); // 500 bytes of debt at 100 B/s: 5 s, longer than the idle timeout
    s.deliver(a);
    assert!(!s.reading(a));
    s.advance_to(4999);
    assert!(!s.closed(a), "paused by us: not idle");
    s.advance_to(5000);
    assert!(s.reading(a));
    s.advance_to(8190);
    assert!(!s.closed(a), "the idle clock started again at the resume");
    s.advance_to(8200);
    assert!(s.closed(a) || s.peers[a].eof);
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
}

#[test]
fn a_throttled_connection_that_closes_leaves_the_gauge() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 10.0)), None, 1));
    let a = s.open();
    let b = s.open();
    for k in [a, b] {
        s.write(k, 500);
        s.deliver(k);
    }
    assert_eq!(s.m.counters.throttled, 2);
    s.fail(a, 104);
    assert_eq!(s.m.counters.throttled, 1);
    s.shutdown();
    assert_eq!(s.m.counters.throttled, 0);
    assert!(
        s.reading(b),
        "a closing connection reads to discard, throttled or not"
    );
    s.advance(2000);
    assert_eq!(
        s.m.counters.throttled, 0,
        "the stale throttle entries came due harmlessly"
    );
}

#[test]
fn a_stale_throttle_entry_does_not_touch_the_slot_s_next_connection() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 100.0)), None, 1));
    let a = s.open();
    s.write(a, 600);
    s.deliver(a);
    s.fail(a, 104);
    let b = s.accept_at(s.id(a).idx).unwrap();
    s.write(b, 100); // within its own, new, full bucket
    s.deliver(b);
    assert!(s.reading(b));
    s.write(b, 200); // in debt by 200: 200 ms
    s.deliver(b);
    assert!(!s.reading(b));
    s.advance_to(199);
    assert!(!s.reading(b), "a's entry (due at 500) is not b's");
    s.advance_to(200);
    assert!(s.reading(b));
    s.advance_to(600);
    assert_eq!(s.m.counters.throttled, 0);
    assert_eq!(s.m.counters.pauses, 2);
}

#[test]
fn a_late_receive_while_throttled_is_echoed_and_not_paused_twice() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 100.0)), None, 1));
    let a = s.open();
    s.write(a, 300);
    s.deliver(a);
    assert!(!s.reading(a));
    s.write(a, 100);
    s.deliver_late(a);
    assert_eq!(s.m.counters.pauses, 1);
    assert_eq!(s.m.counters.throttled, 1);
    assert!(s.echoed_all(a));
    s.advance_to(200);
    assert!(s.reading(a), "the pause set at the check (200 ms) ends");
    // 100 bytes of debt are left: the next read pays for them.
    s.write(a, 1);
    s.deliver(a);
    assert!(!s.reading(a));
    assert_eq!(s.m.counters.pauses, 2);
    s.advance_to(300);
    assert!(!s.reading(a));
    s.advance_to(301);
    assert!(s.reading(a));
}

// ====================================================================== idle

#[test]
fn idle_timeout_closes_gracefully() {
    let mut s = sim();
    let a = s.open();
    s.advance_to(3190);
    assert!(!s.peers[a].eof);
    s.advance_to(3200);
    assert!(s.peers[a].eof, "FIN after 3.2 s of nothing");
    assert!(!s.closed(a), "lingering");
    assert!(s.reading(a), "reads and discards while lingering");
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
    assert_eq!(s.m.counters.lingering_closes, 1);
    assert_eq!(s.m.counters.active, 0);
    assert_eq!(s.shared.active(), 0);
    assert_eq!(s.m.live(), 1);
}

#[test]
fn input_resets_the_idle_clock() {
    let mut s = sim();
    let a = s.open();
    s.advance_to(2000);
    s.send_in(a, 10);
    s.advance_to(5190);
    assert!(!s.peers[a].eof);
    s.advance_to(5200);
    assert!(s.peers[a].eof);
}

#[test]
fn the_idle_clock_runs_from_the_last_byte_sent() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    s.advance_to(2000);
    s.start_reading(a); // the echo leaves at 2 s
    s.advance_to(5190);
    assert!(!s.peers[a].eof);
    s.advance_to(5200);
    assert!(s.peers[a].eof);
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
}

#[test]
fn no_idle_timeout_never_expires() {
    for idle in [None, Some(Duration::ZERO)] {
        let mut s = Sim::new(EngineConfig {
            idle_timeout: idle,
            ..cfg()
        });
        let a = s.open();
        s.advance(100_000);
        assert!(!s.closed(a) && !s.peers[a].eof);
    }
}

#[test]
fn a_connection_with_output_pending_is_never_idle() {
    let mut s = Sim::new(EngineConfig {
        send_timeout: None,
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10); // one buffer: not backpressured, still reading
    assert!(s.reading(a));
    s.advance(50_000);
    assert!(
        !s.closed(a) && !s.peers[a].eof,
        "stalled, not idle; no send timeout"
    );
}

#[test]
fn a_backpressured_connection_is_never_idle() {
    let mut s = Sim::new(EngineConfig {
        send_timeout: None,
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 100);
    assert!(!s.reading(a));
    s.advance(50_000);
    assert!(!s.closed(a) && !s.peers[a].eof);
    s.start_reading(a);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
}

#[test]
fn many_idle_connections_expire_together_each_once() {
    let mut s = sim();
    let ks: Vec<usize> = (0..50).map(|_| s.open()).collect();
    s.advance_to(1000);
    let late: Vec<usize> = (0..50).map(|_| s.open()).collect();
    s.advance_to(3200);
    assert!(ks.iter().all(|&k| s.peers[k].eof));
    assert!(late.iter().all(|&k| !s.peers[k].eof));
    s.advance_to(4200);
    assert!(late.iter().all(|&k| s.peers[k].eof));
    assert_eq!(s.closes(CloseReason::IdleTimeout), 100);
    assert_eq!(s.m.counters.lingering_closes, 100);
}

#[test]
fn a_connection_accepted_after_a_quiet_spell_gets_its_whole_idle_time() {
    // No connection, so no deadline: a real engine sleeps until the next accept and does not tick.
    let mut s = sim();
    assert_eq!(s.m.next_deadline(), None);
    s.now = 100_000;
    let a = s.open();
    s.advance(10);
    assert!(!s.peers[a].eof, "closed as idle 10 ms after its accept");
    s.advance_to(103_190);
    assert!(!s.peers[a].eof);
    s.advance_to(103_200);
    assert!(s.peers[a].eof);
}

// ====================================================================== send timeout (stalled)

#[test]
fn a_stalled_peer_is_closed_at_once_on_the_send_timeout() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.advance_to(1000);
    s.send_in(a, 40);
    s.advance_to(4190);
    assert!(!s.closed(a));
    s.advance_to(4200);
    assert_eq!(
        s.closed_at(a),
        Some(4200),
        "3.2 s after the output was queued"
    );
    assert!(!s.peers[a].eof, "no FIN, no linger: closed at once");
    assert_eq!(s.closes(CloseReason::SendTimeout), 1);
    assert_eq!(s.m.counters.lingering_closes, 0);
    s.pool.assert_all_home();
}

#[test]
fn send_progress_restarts_the_stall_clock() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 64);
    for _ in 0..10 {
        s.advance(3000);
        s.allow(a, 1); // a byte every 3 s
    }
    assert!(!s.closed(a));
    s.advance(3200);
    assert!(s.closed(a));
    assert_eq!(s.closes(CloseReason::SendTimeout), 1);
    assert_eq!(s.peers[a].got.len(), 10);
}

#[test]
fn no_send_timeout_waits_forever() {
    let mut s = Sim::new(EngineConfig {
        send_timeout: None,
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 64);
    s.advance(100_000);
    assert!(!s.closed(a));
    s.start_reading(a);
    s.deliver_all(a);
    assert!(s.echoed_all(a));
}

#[test]
fn a_send_timeout_shorter_than_the_idle_timeout_fires_on_time() {
    let mut s = Sim::new(EngineConfig {
        idle_timeout: Some(ms(3200)),
        send_timeout: Some(ms(320)),
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.advance_to(1000);
    s.send_in(a, 40);
    s.advance_to(1310);
    assert!(!s.closed(a));
    s.advance_to(1330);
    assert!(
        s.closed(a),
        "stalled since 1000 ms, send timeout 320 ms: closed at 1320 ms"
    );
    assert_eq!(s.closes(CloseReason::SendTimeout), 1);
}

// ====================================================================== graceful close, linger

/// A connection closed for idleness, lingering.
fn lingering() -> (Sim, usize) {
    let mut s = sim();
    let a = s.open();
    s.advance_to(3200);
    assert!(s.peers[a].eof && !s.closed(a));
    (s, a)
}

#[test]
fn lingering_discards_input_and_recycles_it_at_once() {
    let (mut s, a) = lingering();
    let before = s.m.counters.bytes_received;
    s.send_in(a, 16 * 10);
    assert_eq!(
        s.peers[a].delivered, 160,
        "read, so that the close ends in FIN, not RST"
    );
    assert!(s.peers[a].got.is_empty(), "nothing echoed after our FIN");
    assert_eq!(s.m.buffers_held(), 0);
    assert_eq!(s.pool.outstanding(), 0);
    assert_eq!(s.m.counters.bytes_received, before + 160);
    assert!(s.reading(a));
    assert_eq!(s.sends(a), 0);
}

#[test]
fn lingering_ends_on_the_peer_s_fin() {
    let (mut s, a) = lingering();
    s.advance(100);
    s.fin(a);
    s.deliver_all(a);
    assert_eq!(s.closed_at(a), Some(3300));
    assert_eq!(s.m.counters.linger_timeouts, 0);
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
    assert_eq!(
        s.closes(CloseReason::PeerClosed),
        0,
        "counted once, for why it started"
    );
    assert_eq!(s.m.live(), 0);
}

#[test]
fn lingering_ends_on_the_linger_timeout() {
    let (mut s, a) = lingering();
    s.advance_to(3510);
    assert!(!s.closed(a));
    s.advance_to(3520);
    assert_eq!(s.closed_at(a), Some(3520), "320 ms of linger");
    assert_eq!(s.m.counters.linger_timeouts, 1);
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
    assert_eq!(s.m.counters.closes.iter().sum::<u64>(), 1);
}

#[test]
fn a_peer_that_answers_our_fin_closes_at_once() {
    let mut s = sim();
    let a = s.open();
    s.peers[a].fin_on_eof = true;
    s.advance_to(3200);
    s.deliver_all(a);
    assert_eq!(s.closed_at(a), Some(3200));
    assert_eq!(s.m.counters.lingering_closes, 1);
    assert_eq!(s.m.counters.linger_timeouts, 0);
}

#[test]
fn the_linger_clock_starts_when_the_flush_ends() {
    let mut s = Sim::new(EngineConfig {
        shutdown_timeout: ms(10_000),
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 40);
    s.advance_to(100);
    s.shutdown();
    assert!(!s.peers[a].eof, "flushing first");
    s.advance_to(200);
    s.start_reading(a);
    assert!(s.peers[a].eof, "flushed at 200 ms: FIN");
    assert!(s.echoed_all(a));
    s.advance_to(530);
    assert!(s.closed(a), "linger 320 ms from 200 ms: closed by 520 ms");
    assert_eq!(s.m.counters.linger_timeouts, 1);
}

// ====================================================================== peer FIN

#[test]
fn peer_fin_with_nothing_queued_closes_as_peer_closed() {
    let mut s = sim();
    let a = s.open();
    s.send_in(a, 10);
    s.fin(a);
    s.deliver_all(a);
    assert!(s.closed(a));
    assert!(
        !s.peers[a].eof,
        "no lingering: the peer is done, the close sends our FIN"
    );
    assert_eq!(s.closes(CloseReason::PeerClosed), 1);
    assert_eq!(s.m.counters.lingering_closes, 0);
    assert_eq!(s.m.counters.active, 0);
    assert!(s.echoed_all(a));
}

#[test]
fn peer_fin_with_output_queued_flushes_then_closes() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.write(a, 40);
    s.fin(a);
    s.deliver_all(a); // 3 buffers, then FIN
    assert!(s.peers[a].fin_delivered);
    assert!(!s.closed(a), "bytes still owed");
    assert!(!s.reading(a), "nothing more to read after FIN");
    s.allow(a, 20);
    assert!(!s.closed(a));
    s.start_reading(a);
    assert!(s.closed(a));
    assert!(s.echoed_all(a), "every byte, then the close");
    assert_eq!(s.closes(CloseReason::PeerClosed), 1);
    s.pool.assert_all_home();
}

#[test]
fn peer_fin_with_a_stalled_queue_ends_on_the_send_timeout() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.write(a, 40);
    s.fin(a);
    s.deliver_all(a);
    s.advance_to(3200);
    assert!(s.closed(a));
    assert_eq!(s.closes(CloseReason::SendTimeout), 1);
}

// ====================================================================== errors

#[test]
fn errors_close_at_once_with_the_errno_s_reason() {
    let cases = [
        (104, CloseReason::Reset),
        (32, CloseReason::Reset),
        (103, CloseReason::Reset),
        (110, CloseReason::Reset),
        (9, CloseReason::Error),
        (22, CloseReason::Error),
        (125, CloseReason::Error),
    ];
    let mut s = sim();
    for (errno, reason) in cases {
        let k = s.open();
        s.stop_reading(k);
        s.send_in(k, 20);
        let before = s.closes(reason);
        s.fail(k, errno);
        assert!(s.closed(k));
        assert!(!s.peers[k].eof, "no FIN, no linger");
        assert_eq!(s.closes(reason), before + 1, "errno {errno}");
        assert_eq!(CloseReason::from_errno(errno), reason);
    }
    assert_eq!(s.m.counters.active, 0);
    s.pool.assert_all_home();
}

#[test]
fn an_error_closes_only_that_connection() {
    let mut s = sim();
    let a = s.open();
    let b = s.open();
    s.stop_reading(a);
    s.stop_reading(b);
    s.send_in(a, 30);
    s.send_in(b, 30);
    s.fail(a, 104);
    assert!(s.closed(a));
    assert!(!s.closed(b));
    s.start_reading(b);
    assert!(s.echoed_all(b));
    assert_eq!(s.m.counters.active, 1);
}

#[test]
fn an_error_after_a_graceful_close_began_keeps_the_first_reason() {
    let (mut s, a) = lingering();
    s.fail(a, 104);
    assert!(s.closed(a));
    assert_eq!(s.closes(CloseReason::IdleTimeout), 1);
    assert_eq!(s.closes(CloseReason::Reset), 0);
    assert_eq!(s.m.counters.closes.iter().sum::<u64>(), 1);
}

#[test]
fn from_errno_maps_resets_and_everything_else() {
    for e in [104, 32, 103, 110] {
        assert_eq!(CloseReason::from_errno(e), CloseReason::Reset, "{e}");
    }
    for e in [0, 1, 9, 11, 22, 113, 125, -104, i32::MAX, i32::MIN] {
        assert_eq!(CloseReason::from_errno(e), CloseReason::Error, "{e}");
    }
}

// ====================================================================== release

#[test]
fn released_recycles_the_queue_and_frees_the_slot() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 60);
    s.fail(a, 104);
    assert!(s.closed(a));
    assert_eq!(
        s.m.front(s.id(a).idx, s.id(a).gen),
        None,
        "nothing to send after Close"
    );
    assert_eq!(s.m.buffers_held(), 4, "kept until released");
    assert_eq!(s.m.live(), 1);
    s.release(a);
    assert_eq!(s.m.live(), 0);
    assert_eq!(s.m.buffers_held(), 0);
    s.pool.assert_all_home();
}

#[test]
fn a_send_completing_after_close_is_accounted_then_the_rest_recycled() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 40);
    s.fail(a, 110);
    let id = s.id(a);
    // The send in flight at the close completes with 10 bytes before the slot is released.
    s.m.sent(&mut s.pool, id.idx, id.gen, 10, s.now);
    s.pump();
    assert_eq!(s.m.counters.bytes_sent, 10);
    assert_eq!(s.m.buffers_held(), 3);
    s.release(a);
    s.pool.assert_all_home();
    assert_eq!(s.m.counters.closes.iter().sum::<u64>(), 1);
}

// ====================================================================== shutdown

#[test]
fn shutdown_closes_every_connection_gracefully() {
    let mut s = sim();
    let idle = s.open();
    let busy = s.open();
    s.peers[idle].fin_on_eof = true;
    s.peers[busy].fin_on_eof = true;
    s.stop_reading(busy);
    s.send_in(busy, 40);
    s.shutdown();
    assert!(s.m.draining());
    assert!(s.peers[idle].eof);
    assert!(!s.peers[busy].eof, "flush first");
    assert!(s.reading(busy), "reads and discards");
    s.deliver_all(idle);
    assert!(s.closed(idle));
    s.start_reading(busy);
    assert!(s.echoed_all(busy));
    assert!(s.peers[busy].eof);
    s.deliver_all(busy);
    assert!(s.closed(busy));
    assert_eq!(s.closes(CloseReason::Shutdown), 2);
    assert_eq!(s.m.counters.lingering_closes, 2);
    assert!(s.m.finished());
    assert_eq!(s.shared.active(), 0);
}

#[test]
fn the_drain_deadline_closes_what_is_left() {
    let mut s = sim();
    let stalled = s.open();
    let silent = s.open();
    s.stop_reading(stalled);
    s.send_in(stalled, 40);
    s.advance_to(100);
    s.shutdown();
    assert!(s.peers[silent].eof);
    s.advance_to(1099);
    assert!(!s.closed(stalled));
    s.advance_to(1100);
    assert_eq!(s.closed_at(stalled), Some(1100));
    assert_eq!(s.closed_at(silent), Some(420), "linger ended first");
    assert_eq!(s.closes(CloseReason::Shutdown), 2);
    assert!(s.m.finished());
    s.pool.assert_all_home();
}

#[test]
fn shutdown_with_no_connections_is_finished_at_once() {
    let mut s = sim();
    assert!(!s.m.finished());
    s.shutdown();
    assert!(s.m.finished());
}

#[test]
fn a_second_shutdown_does_not_move_the_deadline() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    s.shutdown();
    s.advance_to(900);
    s.shutdown();
    s.advance_to(1000);
    assert_eq!(s.closed_at(a), Some(1000));
}

#[test]
fn next_deadline_includes_the_drain_deadline() {
    let mut s = Sim::new(EngineConfig {
        idle_timeout: None,
        send_timeout: None,
        linger_timeout: ms(32_000), // a 1 s wheel tick
        shutdown_timeout: ms(300),
        ..cfg()
    });
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    assert_eq!(s.m.next_deadline(), Some(1000), "the wheel's next tick");
    s.shutdown();
    assert_eq!(s.m.next_deadline(), Some(300));
}

#[test]
fn after_the_drain_deadline_no_deadline_in_the_past() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    s.shutdown();
    s.advance_to(1000);
    assert!(
        s.closed(a) && !s.peers[a].released,
        "waits for the engine's release"
    );
    s.m.tick(s.now);
    s.pump();
    if let Some(d) = s.m.next_deadline() {
        assert!(d > s.now, "asked to tick again at once: {d} at {}", s.now);
    }
}

#[test]
fn draining_reads_throttled_and_backpressured_connections_to_discard() {
    let mut s = Sim::new(rate_cfg(Some((100.0, 10.0)), None, 1));
    let t = s.open();
    s.write(t, 200);
    s.deliver(t);
    assert!(!s.reading(t));
    s.shutdown();
    assert!(s.reading(t));
    assert!(s.peers[t].eof, "nothing queued: FIN at once");
    s.send_in(t, 100);
    assert_eq!(s.m.buffers_held(), 0);
}

#[test]
fn a_peer_fin_during_the_drain_flush_closes_after_it_without_our_fin() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.write(a, 30);
    s.deliver_all(a);
    s.shutdown();
    s.fin(a);
    s.deliver_all(a);
    assert!(!s.closed(a), "bytes still owed");
    s.start_reading(a);
    assert!(s.closed(a));
    assert!(
        !s.peers[a].eof,
        "the close itself sends our FIN: no lingering"
    );
    assert!(s.echoed_all(a));
    assert_eq!(s.closes(CloseReason::Shutdown), 1);
    assert_eq!(s.m.counters.closes.iter().sum::<u64>(), 1);
    assert_eq!(s.m.counters.lingering_closes, 0);
}

#[test]
fn the_drain_is_finished_only_when_the_last_slot_is_released() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    s.shutdown();
    s.advance_to(1000);
    assert!(s.closed(a));
    assert!(!s.m.finished(), "closed, not released");
    s.release(a);
    assert!(s.m.finished());
    s.pool.assert_all_home();
}

#[test]
fn peer_fin_while_throttled_with_nothing_queued_closes_at_once() {
    let mut s = Sim::new(rate_cfg(Some((1000.0, 10.0)), None, 1));
    let a = s.open();
    s.write(a, 100);
    s.deliver(a);
    assert!(!s.reading(a));
    s.fin(a);
    s.deliver_late(a); // a FIN that was in flight
    assert!(s.closed(a));
    assert_eq!(s.closes(CloseReason::PeerClosed), 1);
    assert_eq!(s.m.counters.throttled, 0);
}

#[test]
fn input_after_close_before_release_is_discarded() {
    let mut s = sim();
    s.auto_release = false;
    let a = s.open();
    s.fail(a, 104);
    s.write(a, 20);
    assert!(s.deliver_late(a));
    assert!(s.peers[a].got.is_empty());
    assert_eq!(s.m.buffers_held(), 0);
    assert_eq!(s.m.front(s.id(a).idx, s.id(a).gen), None);
    s.release(a);
    s.pool.assert_all_home();
}

#[test]
fn output_queued_during_a_send_cycle_goes_out_in_the_same_cycle() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 10);
    s.allow(a, 5);
    s.send_in(a, 10);
    s.allow(a, 10);
    s.send_in(a, 10);
    s.start_reading(a);
    assert!(s.echoed_all(a));
    assert_eq!(s.sends(a), 1);
}

#[test]
fn the_engine_s_private_bytes_start_clean_in_a_reused_slot() {
    let mut s = sim();
    let a = s.open();
    let id = s.id(a);
    let c = s.m.conn_mut(id.idx, id.gen).unwrap();
    c.io = 0xA5;
    c.inflight = 3;
    s.fail(a, 104);
    assert!(s.m.conn_mut(id.idx, id.gen).is_none());
    let b = s.accept_at(id.idx).unwrap();
    let nb = s.id(b);
    let c = s.m.conn_mut(nb.idx, nb.gen).unwrap();
    assert_eq!((c.io, c.inflight), (0, 0));
    assert!(!s.m.wants_read(id.idx, id.gen), "stale id");
    assert!(s.m.wants_read(nb.idx, nb.gen));
}

#[test]
fn limits_are_what_the_machine_runs_with() {
    let s = Sim::new(EngineConfig {
        max_queued_buffers: 0,
        check_every: 0,
        ..cfg()
    });
    assert_eq!(s.m.limits().max_queued, 1);
    assert_eq!(s.m.limits().check_every, 1);
    assert_eq!(s.m.limits().buffers, 16);
    assert_eq!(
        s.m.initial_buffers(),
        16,
        "a pool of at most 1024 starts whole"
    );
}

// ====================================================================== counters

#[test]
fn counters_are_exact_over_a_session() {
    let mut s = sim();
    let a = s.open(); // peer closes
    let b = s.open(); // reset
    let c = s.open(); // idle
    let d = s.open(); // stalled
    s.peers[c].fin_on_eof = true;
    s.send_in(a, 100);
    s.fin(a);
    s.deliver_all(a);
    s.send_in(b, 7);
    s.fail(b, 104);
    s.stop_reading(d);
    s.send_in(d, 30);
    s.advance_to(3200);
    s.deliver_all(c);
    let k = s.m.counters().clone();
    assert_eq!(k.accepts, 4);
    assert_eq!(k.active, 0);
    assert_eq!(k.closes[CloseReason::PeerClosed as usize], 1);
    assert_eq!(k.closes[CloseReason::Reset as usize], 1);
    assert_eq!(k.closes[CloseReason::IdleTimeout as usize], 1);
    assert_eq!(k.closes[CloseReason::SendTimeout as usize], 1);
    assert_eq!(k.closes.iter().sum::<u64>(), 4);
    assert_eq!(k.bytes_received, 137);
    assert_eq!(k.bytes_sent, 107);
    assert_eq!(k.lingering_closes, 1);
    assert_eq!(k.linger_timeouts, 0);
    assert_eq!(k.buffers_total, 16);
    assert_eq!(k.buffers_in_use, 0);
    assert_eq!(k.waiting_for_buffer, 0);
    assert_eq!(k.throttled, 0);
    assert_eq!(k.pauses, 0);
    assert_eq!(k.buffer_exhausted, 0);
    assert_eq!(s.m.live(), 0);
}

#[test]
fn buffers_in_use_follows_what_connections_hold() {
    let mut s = sim();
    let a = s.open();
    s.stop_reading(a);
    s.send_in(a, 40);
    assert_eq!(s.m.counters().buffers_in_use, 3);
    s.allow(a, 16);
    assert_eq!(s.m.counters().buffers_in_use, 2);
}

// ====================================================================== next_deadline

#[test]
fn next_deadline_is_none_without_connections_and_ticks_with_them() {
    let mut s = sim();
    assert_eq!(s.m.next_deadline(), None);
    let _a = s.open();
    assert_eq!(s.m.next_deadline(), Some(10), "the wheel's 10 ms tick");
    s.advance_to(55);
    assert_eq!(s.m.next_deadline(), Some(60));
}

/// An engine that sleeps until `next_deadline` and ticks, for `until_ms` of shard time with one open
/// connection: returns (wake-ups, wake-ups that found their deadline already past).
fn sleep_tick_loop(cfg: &EngineConfig, until_ms: u64) -> (u64, u64) {
    let mut m = Machine::new(cfg, Arc::new(Shared::new(0)));
    m.accept(0, 0).unwrap();
    while m.poll_action().is_some() {}
    let (mut now, mut wakeups, mut late) = (0u64, 0u64, 0u64);
    while now < until_ms {
        let d = m.next_deadline().expect("a connection is open");
        if d <= now {
            late += 1;
            now += 1; // the loop itself takes time; a real one spins far faster
        } else {
            now = d;
        }
        m.tick(now);
        wakeups += 1;
        assert!(wakeups < 10_000_000);
    }
    (wakeups, late)
}

#[test]
fn next_deadline_with_a_whole_millisecond_tick_never_asks_for_a_past_tick() {
    // Linger 320 ms is the shortest clock: a 10 ms tick.
    let (wakeups, late) = sleep_tick_loop(
        &EngineConfig {
            idle_timeout: None,
            ..cfg()
        },
        60_000,
    );
    assert_eq!(late, 0);
    assert_eq!(wakeups, 6000);
}

#[test]
fn next_deadline_with_the_default_config_does_not_busy_loop() {
    // Defaults: idle and send 60 s, linger 2 s: a 2 s / 32 = 62.5 ms tick, not a whole number of
    // milliseconds. Idle off, so that the connection stays.
    let (wakeups, late) = sleep_tick_loop(
        &EngineConfig {
            idle_timeout: None,
            ..EngineConfig::default()
        },
        600_000,
    );
    assert_eq!(
        late, 0,
        "{late} of {wakeups} wake-ups found their deadline already past"
    );
    assert!(
        wakeups as f64 <= 600_000.0 / 62.5 + 1.0,
        "{wakeups} wake-ups in 10 minutes"
    );
}

#[test]
fn next_deadline_names_the_earliest_throttle() {
    let mut s = Sim::new(EngineConfig {
        idle_timeout: None,
        send_timeout: None,
        linger_timeout: ms(32_000),
        ..rate_cfg(Some((1000.0, 100.0)), None, 1)
    });
    let a = s.open();
    let b = s.open();
    s.write(a, 400); // 300 ms
    s.write(b, 200); // 100 ms
    s.deliver(a);
    assert_eq!(s.m.next_deadline(), Some(300));
    s.deliver(b);
    assert_eq!(s.m.next_deadline(), Some(100));
    s.advance_to(100);
    assert_eq!(s.m.next_deadline(), Some(300));
    s.advance_to(300);
    assert_eq!(s.m.next_deadline(), Some(1000), "the wheel's 1 s tick");
}

// ====================================================================== output queues (machine::out)

fn mem(bufs: &[&[u8]]) -> Vec<Vec<u8>> {
    bufs.iter().map(|b| b.to_vec()).collect()
}

fn resolve(out: &Out, q: &Queue, mem: &[Vec<u8>]) -> Option<Vec<u8>> {
    out.front(q).map(|f| match f {
        Front::Buf { bid, off, len } => {
            mem[bid as usize][off as usize..(off + len) as usize].to_vec()
        }
        Front::Bytes(b) => b.to_vec(),
    })
}

/// Sends everything in `step`-byte sends; the bytes, the buffers released and the slots released.
fn drain(out: &mut Out, q: &mut Queue, mem: &[Vec<u8>], step: usize) -> (Vec<u8>, Vec<u16>, usize) {
    let (mut bytes, mut bufs, mut slots) = (Vec::new(), Vec::new(), 0);
    while let Some(f) = resolve(out, q, mem) {
        let n = f.len().min(step);
        bytes.extend_from_slice(&f[..n]);
        let r = out.consume(q, n);
        bufs.extend(r.buffer);
        slots += r.slot as usize;
    }
    (bytes, bufs, slots)
}

fn buf(bid: u16, off: u32, len: u32) -> Seg {
    Seg::Buf { bid, off, len }
}

#[test]
fn out_static_bytes_are_sent_in_pieces_and_release_nothing() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    out.push(&mut q, Seg::Static(b"static bytes"));
    assert_eq!(out.front(&q), Some(Front::Bytes(b"static bytes")));
    assert_eq!(out.consume(&mut q, 7), Released::default());
    assert_eq!(out.front(&q), Some(Front::Bytes(b"bytes")));
    assert_eq!(out.consume(&mut q, 5), Released::default());
    assert!(q.is_empty());
    assert_eq!(out.front(&q), None);
}

/// A WebSocket text frame longer than a receive buffer: its 4 KiB chunks are held across reads, so
/// their echo is copied into generated slots, several for one range; each slot is counted, so the
/// connection holds nothing once its echo is sent and reads on (a copy counted as one slot but
/// released as three wrapped `queued` and stopped reading for good).
#[test]
fn copies_longer_than_a_slot_count_every_slot() {
    let mut s = Sim::new(EngineConfig {
        buffer_size: 2048,
        buffers: 64,
        max_queued_buffers: 8,
        protocol: crate::protocol::Protocol::Websocket,
        ..cfg()
    });
    let k = s.open();
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let text = |n: usize| {
        let mut f = vec![0x81, 0x80 | 126];
        f.extend_from_slice(&(n as u16).to_be_bytes());
        f.extend_from_slice(&[0; 4]); // a zero mask: the payload as it is
        f.extend((0..n).map(|i| b'a' + (i % 26) as u8));
        f
    };
    input.extend(text(10_000));
    s.peers[k].written = input.clone();
    s.deliver_all(k);
    assert!(s.reading(k), "still reading");
    assert_eq!(s.conn(k).queued, 0, "the echo was sent: nothing held");
    let head = s.peers[k]
        .got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    // 4096 + 4096 + 1808 bytes, each with a 4-byte header.
    assert_eq!(s.peers[k].got.len() - head, 10_000 + 3 * 4);
    // And the next message is read and echoed too.
    s.peers[k].written.extend(text(3000));
    s.deliver_all(k);
    assert_eq!(s.conn(k).queued, 0);
    assert_eq!(s.peers[k].got.len() - head, 13_000 + 4 * 4);
}

#[test]
fn out_tiny_copies_are_inline_and_take_no_slot() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    assert_eq!(out.push_copy(&mut q, &[7u8; INLINE]), 0);
    assert_eq!(out.slots_allocated(), 0);
    assert_eq!(out.front(&q), Some(Front::Bytes(&[7u8; INLINE][..])));
    assert_eq!(out.consume(&mut q, 4), Released::default());
    assert_eq!(out.front(&q), Some(Front::Bytes(&[7u8; INLINE - 4][..])));
    assert!(!out.pop(&mut q).slot);
    assert_eq!(out.push_copy(&mut q, b""), 0, "nothing to copy");
    assert!(q.is_empty());
}

#[test]
fn out_copies_share_the_tail_slot_and_spill_into_new_ones() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    let a = vec![1u8; INLINE + 1];
    assert_eq!(out.push_copy(&mut q, &a), 1, "past INLINE: a slot");
    assert_eq!(
        out.push_copy(&mut q, b"ab"),
        0,
        "tiny, but the open slot has room"
    );
    let big: Vec<u8> = (0..GEN_SLOT * 2).map(|i| i as u8).collect();
    assert_eq!(
        out.push_copy(&mut q, &big),
        2,
        "fills the slot, then takes new ones (each counted)"
    );
    assert_eq!(out.slots_in_use(), 3);
    let mut want = a.clone();
    want.extend_from_slice(b"ab");
    want.extend_from_slice(&big);
    assert_eq!(out.bytes_total(&q), want.len());
    let (bytes, bufs, slots) = drain(&mut out, &mut q, &[], 1000);
    assert_eq!(bytes, want);
    assert!(bufs.is_empty());
    assert_eq!(slots, 3);
    assert_eq!(out.slots_in_use(), 0);
}

#[test]
fn out_generated_slots_are_reused_not_reallocated() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    for round in 0..100u8 {
        assert_eq!(out.push_copy(&mut q, &[round; 100]), 1);
        assert_eq!(resolve(&out, &q, &[]), Some(vec![round; 100]));
        assert!(out.pop(&mut q).slot);
    }
    assert_eq!(out.slots_allocated(), 1);
    assert_eq!(out.slots_in_use(), 0);
}

#[test]
fn out_a_partly_sent_slot_still_takes_appends() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    assert_eq!(out.push_copy(&mut q, &[b'a'; 100]), 1);
    out.consume(&mut q, 60);
    assert_eq!(out.push_copy(&mut q, &[b'b'; 30]), 0);
    let mut want = vec![b'a'; 40];
    want.extend_from_slice(&[b'b'; 30]);
    assert_eq!(resolve(&out, &q, &[]), Some(want));
    assert_eq!(out.slots_in_use(), 1);
}

#[test]
fn out_contiguous_ranges_of_a_buffer_merge_and_others_do_not() {
    let m = mem(&[b"0123456789", b"abcdefghij"]);
    let mut out = Out::new(2);
    let mut q = Queue::default();
    assert!(out.ref_buffer(0));
    out.push(&mut q, buf(0, 0, 3));
    out.ref_buffer(0);
    out.push(&mut q, buf(0, 3, 2)); // contiguous: merged
    assert_eq!(out.refs(0), 1);
    out.ref_buffer(0);
    out.push(&mut q, buf(0, 7, 2)); // a gap: a segment of its own
    assert_eq!(out.refs(0), 2);
    out.ref_buffer(1);
    out.push(&mut q, buf(1, 9, 1)); // another buffer
    out.ref_buffer(0);
    out.push(&mut q, buf(0, 9, 1)); // contiguous with 0[7..9] but not with the tail
    assert_eq!(out.refs(0), 3);
    assert_eq!(out.buffers_held(), 2);
    assert_eq!(resolve(&out, &q, &m), Some(b"01234".to_vec()));
    let (bytes, bufs, _) = drain(&mut out, &mut q, &m, 2);
    assert_eq!(bytes, b"0123478j9");
    assert_eq!(
        bufs,
        vec![1, 0],
        "each buffer released once, at its last byte"
    );
    assert_eq!(out.buffers_held(), 0);
}

#[test]
fn out_pop_releases_an_unsent_segment() {
    let mut out = Out::new(2);
    let mut q = Queue::default();
    out.ref_buffer(1);
    out.push(&mut q, buf(1, 0, 8));
    out.consume(&mut q, 3);
    assert_eq!(
        out.pop(&mut q),
        Released {
            buffer: Some(1),
            slot: false
        }
    );
    assert_eq!(out.refs(1), 0);
    assert!(q.is_empty());
}

#[test]
fn out_queues_share_the_table_but_not_their_bytes() {
    let m = mem(&[b"AAAAAAAA", b"BBBBBBBB"]);
    let mut out = Out::new(2);
    let (mut qa, mut qb) = (Queue::default(), Queue::default());
    for i in 0..4u32 {
        out.ref_buffer(0);
        out.push(&mut qa, buf(0, i * 2, 1));
        out.push_copy(&mut qb, &[b'0' + i as u8; 20]);
        out.ref_buffer(1);
        out.push(&mut qb, buf(1, i, 1));
        out.push(&mut qa, Seg::Static(b"-"));
    }
    let (a, abufs, _) = drain(&mut out, &mut qa, &m, 5);
    assert_eq!(a, b"A-A-A-A-");
    assert_eq!(abufs, vec![0]);
    let (b, bbufs, slots) = drain(&mut out, &mut qb, &m, 7);
    let mut want = Vec::new();
    for i in 0..4u8 {
        want.extend_from_slice(&[b'0' + i; 20]);
        want.push(b'B');
    }
    assert_eq!(b, want);
    assert_eq!(bbufs, vec![1]);
    assert_eq!(slots, 4);
    assert_eq!(out.buffers_held(), 0);
}

#[test]
fn out_empty_segments_are_not_queued() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    out.push(&mut q, Seg::Static(b""));
    out.push(
        &mut q,
        Seg::Inline {
            len: 0,
            bytes: [0; INLINE],
        },
    );
    assert!(q.is_empty());
    assert_eq!(out.bytes_total(&q), 0);
}

#[test]
fn out_inline_segments_carry_their_bytes() {
    let mut out = Out::new(1);
    let mut q = Queue::default();
    let mut bytes = [0u8; INLINE];
    bytes[..3].copy_from_slice(b"\x81\x05h");
    out.push(&mut q, Seg::Inline { len: 3, bytes });
    assert_eq!(out.front(&q), Some(Front::Bytes(b"\x81\x05h")));
    out.consume(&mut q, 2);
    assert_eq!(out.front(&q), Some(Front::Bytes(b"h")));
    out.consume(&mut q, 1);
    assert!(q.is_empty());
}

// ====================================================================== property tests

/// One random event.
#[derive(Clone, Debug)]
enum Ev {
    Accept,
    Write(usize, usize),
    Deliver(usize, usize),
    Late(usize),
    Read(usize, usize),
    Stop(usize),
    Start(usize),
    Fin(usize),
    Fail(usize, i32),
    SendZero(usize),
    LateSent(usize, usize),
    Release(usize),
    Drop(usize),
    Advance(u64),
    Shutdown,
}

fn ev() -> impl Strategy<Value = Ev> {
    let k = 0..8usize;
    prop_oneof![
        3 => Just(Ev::Accept),
        10 => (k.clone(), 1..400usize).prop_map(|(k, n)| Ev::Write(k, n)),
        12 => (k.clone(), 1..16usize).prop_map(|(k, n)| Ev::Deliver(k, n)),
        1 => k.clone().prop_map(Ev::Late),
        6 => (k.clone(), 1..100usize).prop_map(|(k, n)| Ev::Read(k, n)),
        4 => k.clone().prop_map(Ev::Stop),
        3 => k.clone().prop_map(Ev::Start),
        1 => k.clone().prop_map(Ev::Fin),
        1 => (k.clone(), prop::sample::select(vec![104, 32, 9, 110])).prop_map(|(k, e)| Ev::Fail(k, e)),
        1 => k.clone().prop_map(Ev::SendZero),
        1 => (k.clone(), 1..20usize).prop_map(|(k, n)| Ev::LateSent(k, n)),
        2 => k.clone().prop_map(Ev::Release),
        1 => k.clone().prop_map(Ev::Drop),
        8 => prop_oneof![6 => 0..30u64, 3 => 0..500u64, 1 => 0..8000u64].prop_map(Ev::Advance),
        1 => Just(Ev::Shutdown),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    buffers: u16,
    size: u32,
    max_queued: u16,
    rate: Option<(f64, f64)>,
    msgs: Option<(f64, f64)>,
    check_every: u16,
    idle: Option<u64>,
    send: Option<u64>,
    linger: u64,
    drain: u64,
    max_conn: usize,
    slots: u32,
    auto_release: bool,
    /// Peers start not reading.
    stalled_start: bool,
    /// Shutdown events are played (else skipped, so that more connections end normally).
    shutdown_events: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        (
            prop::sample::select(vec![4u16, 8, 8, 16, 32]),
            1..40u32,
            0..10u16,
            prop::option::weighted(0.4, (100.0..20_000.0f64, 1.0..1000.0f64)),
            prop::option::weighted(0.3, (1.0..200.0f64, 1.0..20.0f64)),
            0..5u16,
        ),
        (
            prop::option::weighted(0.6, 1..6000u64),
            prop::option::weighted(0.6, 1..6000u64),
            0..2000u64,
            0..4000u64,
            0..6usize,
            1..8u32,
            any::<bool>(),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.3),
        ),
    )
        .prop_map(
            |(
                (buffers, size, max_queued, rate, msgs, check_every),
                (
                    idle,
                    send,
                    linger,
                    drain,
                    max_conn,
                    slots,
                    auto_release,
                    stalled_start,
                    shutdown_events,
                ),
            )| Setup {
                buffers,
                size,
                max_queued,
                rate,
                msgs,
                check_every,
                idle,
                send,
                linger,
                drain,
                max_conn,
                slots,
                auto_release,
                stalled_start,
                shutdown_events,
            },
        )
}

/// A small pool shared by many connections whose peers mostly do not read: fairness, waiting for
/// buffers, backpressure.
fn pressure() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![2u16, 4, 8]),
        1..24u32,
        1..6u16,
        prop::option::weighted(0.2, (1000.0..20_000.0f64, 1.0..500.0f64)),
        prop::option::weighted(0.3, 1000..6000u64),
        4..9u32,
    )
        .prop_map(|(buffers, size, max_queued, rate, send, slots)| Setup {
            buffers,
            size,
            max_queued,
            rate,
            msgs: None,
            check_every: 1,
            idle: None,
            send,
            linger: 300,
            drain: 1000,
            max_conn: 0,
            slots,
            auto_release: true,
            stalled_start: true,
            shutdown_events: false,
        })
}

impl Setup {
    fn sim(&self) -> Sim {
        self.sim_with(crate::protocol::Protocol::Echo)
    }

    fn sim_with(&self, protocol: crate::protocol::Protocol) -> Sim {
        let c = EngineConfig {
            buffers: self.buffers,
            buffer_size: self.size,
            max_queued_buffers: self.max_queued,
            rate_limit: self.rate.map(|(rate, burst)| BucketSpec { rate, burst }),
            message_rate: self.msgs.map(|(rate, burst)| BucketSpec { rate, burst }),
            check_every: self.check_every,
            idle_timeout: self.idle.map(ms),
            send_timeout: self.send.map(ms),
            linger_timeout: ms(self.linger),
            shutdown_timeout: ms(self.drain),
            protocol,
            ..EngineConfig::default()
        };
        let mut s = Sim::with_shared(c, Arc::new(Shared::new(self.max_conn)));
        s.auto_release = self.auto_release;
        s
    }
}

impl Sim {
    /// The peer a random event means, among the open ones if there are any (`None` before any
    /// connection).
    fn pick(&self, k: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.peers[i].closed.is_none())
            .collect();
        if !open.is_empty() {
            return Some(open[k % open.len()]);
        }
        (!self.peers.is_empty()).then(|| k % self.peers.len())
    }

    fn run(&mut self, e: &Ev, setup: &Setup) {
        let slots = setup.slots;
        match *e {
            Ev::Accept => {
                let busy = self.peers.iter().filter(|p| !p.released).count();
                if busy < slots as usize {
                    let draining = self.m.draining();
                    let full = self.shared.max_connections() != 0
                        && self.shared.active() >= self.shared.max_connections();
                    match self.accept() {
                        Ok(k) => {
                            assert!(!draining && !full);
                            if setup.stalled_start {
                                self.stop_reading(k);
                            }
                        }
                        Err(RejectReason::Shutdown) => assert!(draining),
                        Err(RejectReason::MaxConnections) => assert!(full),
                        Err(r) => panic!("refused: {r:?}"),
                    }
                }
            }
            Ev::Write(k, n) => {
                if let Some(k) = self.pick(k) {
                    if !self.peers[k].fin_sent {
                        self.write(k, n);
                    }
                }
            }
            Ev::Deliver(k, n) => {
                if let Some(k) = self.pick(k) {
                    for _ in 0..n {
                        self.deliver(k);
                    }
                }
            }
            Ev::Late(k) => {
                if let Some(k) = self.pick(k) {
                    if !self.peers[k].reading {
                        self.deliver_late(k);
                    }
                }
            }
            Ev::Read(k, n) => {
                if let Some(k) = self.pick(k) {
                    if self.peers[k].window.is_some() {
                        self.allow(k, n);
                    }
                }
            }
            Ev::Stop(k) => {
                if let Some(k) = self.pick(k) {
                    self.stop_reading(k);
                }
            }
            Ev::Start(k) => {
                if let Some(k) = self.pick(k) {
                    self.start_reading(k);
                }
            }
            Ev::Fin(k) => {
                if let Some(k) = self.pick(k) {
                    self.fin(k);
                }
            }
            Ev::Fail(k, errno) => {
                if let Some(k) = self.pick(k) {
                    if self.peers[k].closed.is_none() {
                        self.fail(k, errno);
                    }
                }
            }
            Ev::SendZero(k) => {
                if let Some(k) = self.pick(k) {
                    let p = &self.peers[k];
                    if p.sending && p.closed.is_none() {
                        let id = p.id;
                        self.m.sent(&mut self.pool, id.idx, id.gen, 0, self.now);
                        self.pump();
                    }
                }
            }
            Ev::LateSent(k, n) => {
                // A send that was in flight at the close completes before the release.
                if let Some(k) = self.pick(k) {
                    let p = &mut self.peers[k];
                    if p.closed.is_some() && !p.released && !p.stalled.is_empty() {
                        let n = n.min(p.stalled.len());
                        let chunk: Vec<u8> = p.stalled.drain(..n).collect();
                        p.got.extend_from_slice(&chunk);
                        let id = p.id;
                        self.m.sent(&mut self.pool, id.idx, id.gen, n, self.now);
                        self.pump();
                    }
                }
            }
            Ev::Release(k) => {
                if let Some(k) = self.pick(k) {
                    if self.peers[k].closed.is_some() {
                        self.release(k);
                        self.pump();
                    }
                }
            }
            Ev::Drop(k) => {
                // An engine clean-up: released without a Close.
                if let Some(k) = self.pick(k) {
                    self.release(k);
                    self.pump();
                }
            }
            Ev::Advance(ms) => self.advance(ms),
            Ev::Shutdown => {
                if setup.shutdown_events {
                    self.shutdown();
                }
            }
        }
    }

    /// Ends the run: peers that are still open read everything and send FIN (and answer ours), the
    /// engine releases what it closed, time passes until every connection is gone. Returns the peers
    /// that ended normally (open, never told FIN by us, no error) at the start of the end.
    fn finish(&mut self) -> Vec<usize> {
        self.auto_release = true;
        for k in 0..self.peers.len() {
            if self.peers[k].closed.is_some() {
                self.release(k);
            }
        }
        self.pump();
        let normal: Vec<usize> = (0..self.peers.len())
            .filter(|&k| {
                let p = &self.peers[k];
                p.closed.is_none() && !p.eof && !self.m.draining()
            })
            .collect();
        for p in &mut self.peers {
            p.window = None;
            p.send_max = usize::MAX;
            p.fin_on_eof = true;
            p.fin_sent = true;
            if p.eof {
                p.fin_sent = true;
            }
        }
        self.pump();
        let start = self.now;
        while self.m.live() > 0 {
            // Bounded in simulated time: a 1 read/s limit on 1-byte buffers takes a while.
            assert!(
                self.now - start < 1_000_000_000,
                "connections never finished"
            );
            self.deliver_everything();
            if self.m.live() == 0 {
                break;
            }
            let next = self
                .m
                .next_deadline()
                .expect("live connections have a deadline");
            // A deadline already past (see the fractional-tick test) would step 1 ms at a time.
            let step = if next > self.now { next } else { self.now + 10 };
            self.advance_to(step);
        }
        normal
    }

    fn assert_clean(&self) {
        self.pool.assert_all_home();
        assert_eq!(self.m.live(), 0);
        assert_eq!(self.m.buffers_held(), 0);
        assert_eq!(
            self.shared.active(),
            0,
            "every --max-connections place given back"
        );
        let k = &self.m.counters;
        assert_eq!(k.active, 0);
        assert_eq!(k.throttled, 0);
        assert_eq!(k.closes.iter().sum::<u64>(), k.accepts);
        assert_eq!(k.accepts as usize, self.peers.len());
        assert!(self.peers.iter().all(|p| p.released));
        assert_eq!(
            k.bytes_received as usize,
            self.peers.iter().map(|p| p.delivered).sum::<usize>()
        );
        assert_eq!(
            k.bytes_sent as usize,
            self.peers.iter().map(|p| p.got.len()).sum::<usize>()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random event orders on several connections: no buffer leaks or is given back twice, no slot is
    /// freed twice, no byte is lost or reordered, and a connection that ends normally echoes every byte.
    #[test]
    fn random_events_never_leak_lose_or_reorder(setup in setup(), evs in prop::collection::vec(ev(), 1..200)) {
        let mut s = setup.sim();
        for _ in 0..setup.slots.min(4) {
            s.run(&Ev::Accept, &setup);
        }
        for e in &evs {
            s.run(e, &setup);
        }
        let normal = s.finish();
        for k in normal {
            prop_assert!(s.echoed_all(k), "peer {} ended normally but got {} of {} bytes",
                k, s.peers[k].got.len(), s.peers[k].written.len());
        }
        s.assert_clean();
    }

    /// Same under buffer pressure: a small pool, many connections, peers that mostly do not read.
    #[test]
    fn random_events_under_buffer_pressure(setup in pressure(), evs in prop::collection::vec(ev(), 1..200)) {
        let mut s = setup.sim();
        for _ in 0..setup.slots {
            s.run(&Ev::Accept, &setup);
        }
        for e in &evs {
            s.run(e, &setup);
        }
        let normal = s.finish();
        for k in normal {
            prop_assert!(s.echoed_all(k), "peer {} ended normally but got {} of {} bytes",
                k, s.peers[k].got.len(), s.peers[k].written.len());
        }
        s.assert_clean();
    }

    /// Same, ending with a shutdown drain: every connection goes, `finished()` says so.
    #[test]
    fn random_events_then_shutdown_finish_clean(setup in setup(), evs in prop::collection::vec(ev(), 1..80)) {
        let mut s = setup.sim();
        for _ in 0..setup.slots.min(4) {
            s.run(&Ev::Accept, &setup);
        }
        for e in &evs {
            s.run(e, &setup);
        }
        s.shutdown();
        s.auto_release = true;
        for k in 0..s.peers.len() {
            if s.peers[k].closed.is_some() {
                s.release(k);
            }
        }
        s.pump();
        let deadline = s.now + setup.drain;
        s.advance_to(deadline);
        prop_assert!(s.m.finished(), "{} connections left after the drain deadline", s.m.live());
        s.assert_clean();
    }

    /// One connection, any receive sizes and partial sends, a peer that reads in bursts: the echo is
    /// exactly what was sent.
    #[test]
    fn echo_is_exact_for_any_split(
        size in 1..64u32,
        max_queued in 1..8u16,
        chunks in prop::collection::vec((1..300usize, 1..50usize, 0..100usize), 1..30),
    ) {
        let mut s = Sim::new(EngineConfig {
            buffer_size: size,
            max_queued_buffers: max_queued,
            ..cfg()
        });
        let a = s.open();
        s.stop_reading(a);
        for (n, send_max, read) in chunks {
            s.peers[a].send_max = send_max;
            s.write(a, n);
            s.deliver_all(a);
            s.allow(a, read);
        }
        s.start_reading(a);
        s.deliver_all(a);
        s.fin(a);
        s.deliver_all(a);
        prop_assert!(s.echoed_all(a));
        prop_assert!(s.closed(a));
        prop_assert_eq!(s.closes(CloseReason::PeerClosed), 1);
        s.assert_clean();
    }

    /// The output queues against a model: bytes in order, every buffer and slot released exactly once.
    #[test]
    fn out_queues_match_a_model(ops in prop::collection::vec((0..3usize, 0..4u8, 0..3000usize, 1..700usize), 1..80)) {
        let m: Vec<Vec<u8>> = (0..4u8).map(|b| (0..256u32).map(|i| (i as u8) ^ (b * 61)).collect()).collect();
        let mut out = Out::new(4);
        let mut qs = [Queue::default(), Queue::default(), Queue::default()];
        let mut model: [Vec<u8>; 3] = Default::default();
        let mut refs = [0u32; 4];
        let mut released = [0u32; 4];
        for (q, kind, n, step) in ops {
            match kind {
                0 => {
                    // A range of buffer (n % 4).
                    let bid = (n % 4) as u16;
                    let off = (n / 4) % 200;
                    let len = (step % 56) + 1;
                    if out.ref_buffer(bid) { refs[bid as usize] += 1; }
                    out.push(&mut qs[q], buf(bid, off as u32, len as u32));
                    model[q].extend_from_slice(&m[bid as usize][off..off + len]);
                }
                1 => {
                    let bytes: Vec<u8> = (0..n % 600).map(|i| (i * 7 + q) as u8).collect();
                    out.push_copy(&mut qs[q], &bytes);
                    model[q].extend_from_slice(&bytes);
                }
                2 => {
                    out.push(&mut qs[q], Seg::Static(b"static"));
                    model[q].extend_from_slice(b"static");
                }
                _ => {
                    // Send up to `step` bytes from the front.
                    if let Some(f) = resolve(&out, &qs[q], &m) {
                        let k = f.len().min(step);
                        prop_assert_eq!(&f[..k], &model[q][..k]);
                        model[q].drain(..k);
                        let r = out.consume(&mut qs[q], k);
                        if let Some(b) = r.buffer { released[b as usize] += 1; }
                    }
                }
            }
            prop_assert_eq!(out.bytes_total(&qs[q]), model[q].len());
        }
        for q in 0..3 {
            let (bytes, bufs, _) = drain(&mut out, &mut qs[q], &m, 333);
            prop_assert_eq!(&bytes, &model[q]);
            for b in bufs { released[b as usize] += 1; }
        }
        prop_assert_eq!(out.buffers_held(), 0);
        prop_assert_eq!(out.slots_in_use(), 0);
        for b in 0..4 {
            prop_assert_eq!(out.refs(b as u16), 0);
            prop_assert_eq!(released[b], refs[b], "buffer {} released once per first reference", b);
        }
    }
}

// ====================================================================== the Date value

/// `set_wall_clock` is what responses carry from then on: a request answered after the second moved
/// on shows the new second, one answered within the same second the same value.
#[test]
fn date_follows_the_wall_clock_second() {
    let mut s = Sim::new(EngineConfig {
        buffer_size: 512,
        protocol: crate::protocol::Protocol::Http,
        ..cfg()
    });
    let k = s.open();
    let answer = |s: &mut Sim, secs: u64| -> String {
        s.m.set_wall_clock(secs);
        let before = s.peers[k].got.len();
        s.peers[k]
            .written
            .extend_from_slice(b"GET /?length=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        s.deliver_all(k);
        let got = String::from_utf8_lossy(&s.peers[k].got[before..]).into_owned();
        let date = got
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .unwrap_or_else(|| panic!("no Date in {got:?}"));
        date.to_string()
    };
    assert_eq!(answer(&mut s, 784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(answer(&mut s, 784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(answer(&mut s, 784_111_778), "Sun, 06 Nov 1994 08:49:38 GMT");
    // A fixed value set directly is replaced by the next wall-clock second, even an equal one.
    s.m.set_date(*b"Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(answer(&mut s, 784_111_778), "Sun, 06 Nov 1994 08:49:38 GMT");
    s.check();
}

// ====================================================================== HTTP pipelining and the output budget

/// What an unbounded HTTP connection answers to `input` handed in as one slice, and to a FIN after
/// it when `fin` (the reference the machine's output must equal, however it reads and pauses).
fn http_reference(input: &[u8], fin: bool) -> Vec<u8> {
    use crate::protocol::{Ctx, ProtoConfig, ProtoStats, Protocol, Sink, Step};
    #[derive(Default)]
    struct VecSink(Vec<Result<(usize, usize), Vec<u8>>>);
    impl Sink for VecSink {
        fn input(&mut self, off: usize, len: usize) {
            self.0.push(Ok((off, len)));
        }
        fn bytes_static(&mut self, bytes: &'static [u8]) {
            self.0.push(Err(bytes.to_vec()));
        }
        fn generated(&mut self, bytes: &[u8]) {
            self.0.push(Err(bytes.to_vec()));
        }
    }
    let resolve = |sink: VecSink, buf: &[u8], out: &mut Vec<u8>| {
        for seg in sink.0 {
            match seg {
                Ok((off, len)) => out.extend_from_slice(&buf[off..off + len]),
                Err(b) => out.extend_from_slice(&b),
            }
        }
    };
    let date = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    let ctx = Ctx { date: &date };
    let cfg = ProtoConfig::default();
    let mut stats = ProtoStats::default();
    let mut conn = Protocol::Http.start();
    let mut buf = input.to_vec();
    let mut sink = VecSink::default();
    let step = conn.on_input(&cfg, &ctx, &mut stats, &mut buf, &mut sink);
    let mut out = Vec::new();
    resolve(sink, &buf, &mut out);
    if fin && !matches!(step, Step::Close(_)) {
        let mut sink = VecSink::default();
        conn.on_peer_fin(&cfg, &ctx, &mut stats, &mut sink);
        resolve(sink, &[], &mut out);
    }
    out
}

fn http_sim(buffer_size: u32, max_queued: u16) -> Sim {
    Sim::new(EngineConfig {
        buffer_size,
        buffers: 64,
        max_queued_buffers: max_queued,
        protocol: crate::protocol::Protocol::Http,
        ..cfg()
    })
}

/// `n` pipelined requests `method path`.
fn pipelined(method: &str, path: &str, n: usize) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: h\r\n\r\n")
        .repeat(n)
        .into_bytes()
}

impl Sim {
    fn is_paused(&self, k: usize) -> bool {
        self.conn(k).has(crate::conn::flag::PAUSED)
    }
}

/// A peer that pipelines GETs and reads nothing gets, from one read, at most its output budget of
/// answers (`--pending-buffers` generated slots) plus one, however large the read and whatever the
/// answers' size; reading stops until the answers are read. Before the budget, one 2 KiB read of
/// such GETs took 42 slots (86 KiB of answers; 52 for `?length=2000`), and one 64 KiB read 1,359
/// slots (2.7 MiB; 1,680 for `?length=2000`), all kept until the send timeout. Once the peer reads,
/// every request is answered, in order, byte for byte as without a budget, and the slots taken stay
/// within the budget all along.
#[test]
fn a_pipelining_peer_that_reads_nothing_gets_its_output_budget_and_no_more() {
    for size in [2048u32, 65536] {
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/?length=2000"),
            ("GET", "/?length=60000"),
            ("HEAD", "/?length=100"),
            ("GET", "/?length=1"),
        ] {
            let what = format!("{method} {path}, {size} B buffers");
            let mut s = http_sim(size, 8);
            let k = s.open();
            s.stop_reading(k);
            s.peers[k].written = pipelined(method, path, 3 * size as usize / 20);
            s.deliver_all(k);
            assert!(!s.reading(k), "{what}: reading stopped");
            assert!(
                s.m.counters.bytes_received < s.peers[k].written.len() as u64,
                "{what}: not everything was read"
            );
            assert!(
                s.m.out.slots_in_use() <= 9,
                "{what}: {} slots in use for a peer that reads nothing",
                s.m.out.slots_in_use()
            );
            assert!(
                s.conn(k).queued <= 10,
                "{what}: queued {}",
                s.conn(k).queued
            );
            // It reads: every answer, in order, then more input is read.
            s.start_reading(k);
            s.deliver_all(k);
            s.fin(k);
            s.deliver_all(k);
            let want = http_reference(&s.peers[k].written, true);
            assert!(
                s.peers[k].got == want,
                "{what}: answers differ from an unbounded run"
            );
            assert!(
                s.m.out.slots_allocated() <= 9,
                "{what}: {} slots allocated",
                s.m.out.slots_allocated()
            );
            assert!(s.closed(k), "{what}");
            assert_eq!(s.closes(CloseReason::PeerClosed), 1, "{what}");
            s.assert_clean();
        }
    }
}

/// The budget is `--pending-buffers` slots: what a peer that reads nothing is given grows with it.
#[test]
fn the_output_budget_follows_pending_buffers() {
    for max_queued in [1u16, 2, 4, 16, 32] {
        let mut s = http_sim(65536, max_queued);
        let k = s.open();
        s.stop_reading(k);
        s.peers[k].written = pipelined("GET", "/", 2000);
        s.deliver(k);
        let used = s.m.out.slots_in_use();
        assert!(
            used <= max_queued as usize + 1 && used + 1 >= max_queued as usize,
            "--pending-buffers {max_queued}: {used} slots"
        );
        s.start_reading(k);
        s.deliver_all(k);
        assert!(s.peers[k].got == http_reference(&s.peers[k].written, false));
    }
}

/// 1000 requests sent at once, then the peer only reads (it sends nothing more and waits): every
/// answer comes, in order, although no input arrives after the pause. With the FIN sent after the
/// requests, the connection then closes in order (FIN both ways), with no 400 for the FIN.
#[test]
fn a_thousand_pipelined_requests_then_only_reading_are_all_answered() {
    for fin in [false, true] {
        let mut s = http_sim(65536, 8);
        let k = s.open();
        s.stop_reading(k);
        s.peers[k].written = pipelined("GET", "/?length=700", 1000);
        assert!(s.peers[k].written.len() < 65536, "one read");
        if fin {
            s.fin(k);
        }
        s.deliver_all(k);
        assert!(s.is_paused(k));
        let before = s.peers[k].got.len();
        assert_eq!(before, 0, "nothing read yet");
        s.start_reading(k);
        s.deliver_all(k);
        let want = http_reference(&s.peers[k].written, fin);
        assert_eq!(s.peers[k].got.len(), want.len(), "fin {fin}");
        assert!(s.peers[k].got == want, "fin {fin}: answers differ");
        assert_eq!(
            s.m.counters
                .proto
                .http
                .responses
                .iter()
                .flatten()
                .sum::<u64>(),
            1000
        );
        assert!(
            s.m.counters.output_pauses > 50,
            "paused {} times",
            s.m.counters.output_pauses
        );
        assert!(s.m.out.slots_allocated() <= 9);
        assert_eq!(s.closed(k), fin);
        if fin {
            assert_eq!(s.closes(CloseReason::PeerClosed), 1);
            assert_eq!(s.m.counters.proto.http.truncated, 0);
            s.assert_clean();
        } else {
            assert!(
                s.reading(k) && !s.is_paused(k),
                "reads on once all is answered"
            );
        }
    }
}

/// Receives that complete while paused (in flight when reading stopped), and the FIN after them,
/// wait behind the held requests: the peer gets every answer in order, then the orderly close.
/// Requests straddle the receive buffers, so a head is cut between held buffers.
#[test]
fn receives_and_fin_that_arrive_while_paused_wait_their_turn() {
    for size in [2048u32, 1000, 333] {
        let mut s = http_sim(size, 2);
        let k = s.open();
        s.stop_reading(k);
        let mut input = Vec::new();
        for i in 0..300 {
            match i % 3 {
                0 => input.extend(pipelined("GET", &format!("/?length={}", 1 + i * 7), 1)),
                1 => input.extend_from_slice(
                    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
                ),
                _ => input.extend(pipelined("HEAD", "/", 1)),
            }
        }
        s.peers[k].written = input;
        s.fin(k);
        s.deliver_all(k);
        assert!(s.is_paused(k));
        while s.deliver_late(k) {}
        assert!(s.peers[k].fin_delivered);
        assert!(s.is_paused(k) && !s.closed(k));
        s.start_reading(k);
        let want = http_reference(&s.peers[k].written, true);
        assert!(s.peers[k].got == want, "{size} B buffers: answers differ");
        assert!(s.closed(k));
        assert_eq!(s.closes(CloseReason::PeerClosed), 1);
        assert_eq!(s.m.counters.proto.http.truncated, 0);
        s.assert_clean();
    }
}

/// A bad request among the held ones is found when its turn comes: the answers before it, its
/// error answer, then the graceful close (FIN after the last byte, no RST).
#[test]
fn a_protocol_error_in_held_input_is_answered_in_its_turn() {
    let mut s = http_sim(2048, 2);
    let k = s.open();
    s.stop_reading(k);
    let mut input = pipelined("GET", "/?length=900", 30);
    input.extend_from_slice(b"GET / HTTP/9.1\r\nHost: h\r\n\r\n");
    input.extend(pipelined("GET", "/", 5));
    s.peers[k].written = input;
    s.peers[k].fin_on_eof = true;
    s.deliver_all(k);
    assert!(s.is_paused(k));
    s.start_reading(k);
    s.deliver_all(k);
    let want = http_reference(&s.peers[k].written, false);
    assert!(s.peers[k].got == want);
    assert!(String::from_utf8_lossy(&s.peers[k].got).contains(" 505 "));
    assert!(s.eof_at(k).is_some(), "our FIN after the error answer");
    assert_eq!(s.closes(CloseReason::ProtocolError), 1);
    s.deliver_all(k);
    assert!(s.closed(k));
    s.assert_clean();
}

/// A paused connection whose peer reads nothing is on the stall clock (closed at the send timeout,
/// with an RST), never on the idle clock; one whose peer reads slowly is never closed.
#[test]
fn a_paused_connection_is_stalled_never_idle() {
    let mut s = http_sim(2048, 2);
    let k = s.open();
    s.stop_reading(k);
    s.peers[k].written = pipelined("GET", "/", 60);
    s.deliver_all(k);
    assert!(s.is_paused(k));
    s.advance(3000);
    assert!(!s.closed(k));
    s.advance(400);
    assert!(s.closed(k));
    assert_eq!(s.closes(CloseReason::SendTimeout), 1);
    assert_eq!(s.closes(CloseReason::IdleTimeout), 0);
    assert!(matches!(s.actions(k).last(), Some(Action::Abort(_))));
    s.assert_clean();

    // Slowly: 4 KiB every 2 s (less often than the timeouts).
    let mut s = http_sim(2048, 2);
    let k = s.open();
    s.stop_reading(k);
    s.peers[k].written = pipelined("GET", "/", 60);
    s.deliver_all(k);
    let mut t = 0;
    while s.peers[k].got.len() < http_reference(&s.peers[k].written, false).len() {
        s.advance(2000);
        s.allow(k, 4096);
        t += 2;
        assert!(t < 100, "stuck");
    }
    assert!(!s.closed(k));
    assert_eq!(s.m.counters.closes.iter().sum::<u64>(), 0);
    assert!(s.peers[k].got == http_reference(&s.peers[k].written, false));
}

/// A drain while paused: what is queued is sent, then our FIN; the held requests are never
/// answered (the peer got a prefix of the answers, cut between answers), and nothing leaks.
#[test]
fn a_drain_while_paused_flushes_the_queue_and_drops_the_held_requests() {
    let mut s = http_sim(2048, 2);
    let k = s.open();
    s.stop_reading(k);
    s.peers[k].written = pipelined("GET", "/?length=500", 60);
    s.peers[k].fin_on_eof = true;
    s.deliver_all(k);
    assert!(s.is_paused(k));
    s.shutdown();
    s.start_reading(k);
    assert!(s.eof_at(k).is_some(), "FIN after the flush");
    let want = http_reference(&s.peers[k].written, false);
    let got = &s.peers[k].got;
    assert!(got.len() < want.len() && want.starts_with(got));
    assert!(
        want[got.len()..].starts_with(b"HTTP/1.1 200 OK"),
        "cut between answers"
    );
    s.deliver_all(k);
    s.advance(1000);
    assert!(s.m.finished());
    s.assert_clean();
}

/// The request stream HTTP peers of the random tests write: GET, HEAD and POST, pipelined.
fn http_stream() -> &'static [u8] {
    static STREAM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    STREAM.get_or_init(|| {
        let mut v = Vec::new();
        let mut x = 12345u32;
        while v.len() < 128 * 1024 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = 1 + (x >> 8) % 3000;
            match (x >> 4) % 4 {
                0 => v.extend(pipelined("GET", &format!("/?length={n}"), 1)),
                1 => v.extend(pipelined("HEAD", "/", 1)),
                2 => {
                    let body = &crate::http::BODY_TEXT[..(n % 300) as usize];
                    v.extend_from_slice(
                        format!(
                            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    v.extend_from_slice(body);
                }
                _ => v.extend(pipelined("GET", "/", 1)),
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// HTTP peers pipelining at random, under random events (receive sizes, reads, stops, FINs,
    /// errors, time): no buffer leaks, every peer gets a prefix of what an unbounded connection
    /// answers to what it sent, and one that ended normally gets all of it.
    #[test]
    fn random_events_on_http_never_leak_lose_or_reorder(setup in setup(), evs in prop::collection::vec(ev(), 1..200)) {
        let mut s = setup.http_sim();
        for _ in 0..setup.slots.min(4) {
            s.run(&Ev::Accept, &setup);
        }
        for e in &evs {
            s.run(e, &setup);
        }
        let normal = s.finish();
        for (k, p) in s.peers.iter().enumerate() {
            let want = http_reference(&p.written[..p.delivered], p.fin_delivered);
            prop_assert!(want.starts_with(&p.got), "peer {}: not a prefix of the answers", k);
            if normal.contains(&k) {
                prop_assert!(p.got == want, "peer {} ended normally but got {} of {} bytes",
                    k, p.got.len(), want.len());
            }
        }
        s.assert_clean();
    }
}

impl Setup {
    /// HTTP peers writing [`http_stream`], 8 times as much per write event, into buffers 64 times
    /// as large (64 B to 2.5 KiB: a read holds several requests, so that answering one read can
    /// pass the output budget).
    fn http_sim(&self) -> Sim {
        let s = Setup {
            size: self.size * 64,
            ..self.clone()
        };
        let mut s = s.sim_with(crate::protocol::Protocol::Http);
        s.stream = Some(http_stream());
        s.write_scale = 8;
        s
    }
}

/// A connection that holds nothing but an incomplete unit (a request head split across reads, kept
/// in its receive buffer) reads on, whatever its allowance: with `--pending-buffers 1` (or with the
/// allowance at 1 under buffer pressure) the held buffer used to count as its whole allowance, so
/// it stopped reading for good and the request was never answered.
#[test]
fn a_head_split_across_reads_is_completed_with_an_allowance_of_one() {
    let mut s = http_sim(2048, 1);
    let k = s.open();
    s.peers[k].recv_max = 10;
    s.peers[k].written = pipelined("GET", "/?length=5", 3);
    s.deliver_all(k);
    assert!(s.reading(k));
    assert!(s.peers[k].got == http_reference(&s.peers[k].written, false));
    assert_eq!(
        s.m.counters
            .proto
            .http
            .responses
            .iter()
            .flatten()
            .sum::<u64>(),
        3
    );
}

/// WebSocket pauses between frames too: tiny frames echoed in place each take a queue node (32 B)
/// for their 7 bytes of input, and nodes are kept for reuse. A peer that writes 20,000 pings and
/// reads nothing took, before the budget, 2,346 nodes (73 KiB) with 2 KiB buffers and 20,000 (625
/// KiB: every ping read and answered) with 64 KiB buffers. Now a call stops at the room the
/// connection has left; nodes are not part of a connection's holding, so what it can take is the
/// sum of its calls' rooms until its allowance stops reading (at most 36 slots' worth, 72 KiB, at
/// `--pending-buffers` 8). Measured: 1,430 nodes (45 KiB) and 513 (16 KiB). Then every pong
/// arrives, in order.
#[test]
fn a_websocket_peer_that_pings_and_reads_nothing_takes_few_nodes() {
    for size in [2048u32, 65536] {
        let mut s = Sim::new(EngineConfig {
            buffer_size: size,
            buffers: 64,
            max_queued_buffers: 8,
            protocol: crate::protocol::Protocol::Websocket,
            ..cfg()
        });
        let k = s.open();
        s.peers[k].written =
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
        s.deliver_all(k);
        let head = s.peers[k].got.len();
        s.stop_reading(k);
        const PINGS: usize = 20_000;
        for i in 0..PINGS {
            s.peers[k]
                .written
                .extend_from_slice(&[0x89, 0x81, 0, 0, 0, 0, i as u8]);
        }
        s.deliver_all(k);
        assert!(!s.reading(k), "{size}: reading stopped");
        let nodes = s.m.out.nodes_allocated();
        assert!(
            nodes * super::out::NODE_BYTES <= 80 << 10,
            "{size} B buffers: {nodes} nodes for a peer that reads nothing"
        );
        s.start_reading(k);
        s.deliver_all(k);
        let want: Vec<u8> = (0..PINGS).flat_map(|i| [0x8A, 1, i as u8]).collect();
        assert!(s.peers[k].got[head..] == want[..], "{size}: pongs differ");
        assert!(s.m.counters.output_pauses > 0);
        s.fin(k);
        s.deliver_all(k);
        assert!(s.closed(k));
        s.assert_clean();
    }
}

/// Peers that send part of a request head and stop (slowloris) pin no receive buffer: the held part
/// is copied out. 40 of them against a pool of 16 buffers leave every buffer free, a well-behaved
/// client is served at once, and each slow one is answered when it completes its head. (When the
/// part was kept in its buffer, the pool was theirs: every other receive waited for a buffer that
/// no send would free, and buffer pressure closes only peers that owe reads.)
#[test]
fn partial_heads_pin_no_receive_buffer() {
    let mut s = Sim::new(EngineConfig {
        buffer_size: 512,
        buffers: 16,
        max_queued_buffers: 8,
        protocol: crate::protocol::Protocol::Http,
        ..cfg()
    });
    let slow: Vec<usize> = (0..40).map(|_| s.open()).collect();
    for &k in &slow {
        s.peers[k].written = b"GET /?length=5 HTTP/1.1\r\nHost: h\r\nX-Slow: ".to_vec();
        s.deliver_all(k);
        assert!(s.reading(k));
    }
    assert_eq!(s.m.buffers_held(), 0);
    let k = s.open();
    s.peers[k].written = pipelined("GET", "/?length=5", 3);
    s.deliver_all(k);
    assert!(s.peers[k].got == http_reference(&s.peers[k].written, false));
    for &k in &slow {
        s.peers[k].written.extend_from_slice(b"1\r\n\r\n");
        s.deliver_all(k);
        assert!(s.peers[k].got == http_reference(&s.peers[k].written, false));
    }
    assert_eq!(s.m.buffers_held(), 0);
}
