//! The admin endpoint (`GET /metrics`): hyper's HTTP/1.1 server on a current-thread tokio runtime that
//! lives on its own thread, far from the shards.
//!
//! No client can blind it:
//! - connections are served concurrently (one task each), so a silent or slow client never delays a
//!   scrape;
//! - a connection must deliver a complete request head within [`Limits::request_deadline`] of being
//!   accepted (the first request) or of the request's first byte (later ones), so slowloris cannot hold
//!   a connection; a response the peer does not read is dropped after [`Limits::write_deadline`];
//! - HTTP/1.1 keep-alive (Prometheus reuses its connection), an idle keep-alive connection being closed
//!   after [`Limits::keep_alive_idle`];
//! - at most [`Limits::max_connections`] admin connections. When a new one arrives at the cap, one is
//!   dropped, in this order: a silent one (no request byte since it connected or since its last
//!   response was written out) once the kernel has received nothing from it for [`Limits::fresh`]
//!   (a client may be descheduled between its connect and its request), silent the longest first;
//!   then one whose request head is still
//!   arriving, arriving the longest first (slowloris: a real client's head comes at once); then one
//!   whose response the peer has been taking for longer than [`Limits::request_deadline`], the
//!   longest first. A connection with a complete request in hand is never dropped for a newcomer:
//!   one being answered, or whose request is still unread in the kernel (a candidate's receive
//!   queue is peeked at before it is dropped: its task may not have run since its request came). If
//!   every connection has a request in hand, the newcomer is refused (closed at once) instead; if
//!   only fresh silent ones could go, it waits until one may (the connections behind it wait in the
//!   kernel's backlog, where they age). The accept loop yields after each accept, so the new
//!   connection's task reads what has arrived before the next one is accepted.
//!
//! At the process's descriptor limit (the shards take every descriptor they can) a spare descriptor,
//! opened at start, is given up to accept a scrape and taken back when that connection ends.
//!
//! Deadlines are kept by one sweeper task that sleeps until the earliest of them (no timer per
//! connection, no wake-up at all while no admin connection is open).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// hyper's read buffer cap: a request head longer than this gets `431` (Prometheus sends a few hundred
/// bytes).
const MAX_HEAD: usize = 16 * 1024;
/// Listen backlog of the admin socket (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// The admin endpoint's limits (the defaults are what `ringhold serve` uses; README "Metrics endpoint").
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Admin connections held at once; at the cap a silent one (else a slowloris) is dropped for a new
    /// one, and a new one is refused if every connection has a request in hand.
    pub max_connections: usize,
    /// Time to deliver a complete request head: from accept for the first request, from its first byte
    /// for later ones.
    pub request_deadline: Duration,
    /// Time a response write may stay blocked because the peer does not read.
    pub write_deadline: Duration,
    /// Time a keep-alive connection may wait for its next request (above Prometheus' usual scrape
    /// intervals, so that its connection is reused).
    pub keep_alive_idle: Duration,
    /// Time a connection has to speak before it may be dropped as silent at the cap, counted by the
    /// kernel from its last byte received or, before any, from its handshake (so time spent in the
    /// accept backlog counts): a client descheduled between its connect and its request is not
    /// taken for an idle one.
    pub fresh: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            request_deadline: Duration::from_secs(3),
            write_deadline: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(90),
            fresh: Duration::from_millis(100),
        }
    }
}

/// Binds `addr` and serves it from a thread of its own with the default [`Limits`]; `render` produces
/// the /metrics body. Returns the bound address (port 0 works).
pub(crate) fn serve<F>(addr: SocketAddr, render: F) -> io::Result<SocketAddr>
where
    F: Fn() -> String + Send + 'static,
{
    serve_with(addr, Limits::default(), render)
}

pub(crate) fn serve_with<F>(addr: SocketAddr, limits: Limits, render: F) -> io::Result<SocketAddr>
where
    F: Fn() -> String + Send + 'static,
{
    let std_listener = bind(addr)?;
    let local = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _in_rt = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    let spare = open_spare()?;
    thread::Builder::new()
        .name("ringhold-metrics".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(listener, limits, spare, Rc::new(render)));
        })?;
    Ok(local)
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A descriptor kept in reserve (`/dev/null`), so that a scrape can be accepted when the shards have
/// taken every other descriptor the process may open.
fn open_spare() -> io::Result<File> {
    File::open("/dev/null")
}

/// State shared by the tasks of the admin thread.
struct Shared {
    limits: Limits,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Wakes the sweeper when a deadline may have moved earlier.
    sweeper: Notify,
    /// Wakes the accept loop while it waits for room at the cap (a connection has gone, or a silent
    /// one has spoken).
    room: Notify,
    /// The reserve descriptor; `None` while given up for a connection.
    spare: RefCell<Option<File>>,
}

impl Shared {
    /// Closes the spare to make room for one accept; false if it is already given up.
    fn release_spare(&self) -> bool {
        self.spare.borrow_mut().take().is_some()
    }

    fn refill_spare(&self) {
        let mut spare = self.spare.borrow_mut();
        if spare.is_none() {
            *spare = open_spare().ok();
        }
    }
}

/// Where a connection is in its request/response cycle, as the server has seen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request byte since it was accepted or since its last response was written out: dropped
    /// first at the cap.
    Silent { since: Instant },
    /// Bytes of a request head have arrived (`since`: the first), the head is not complete: dropped
    /// at the cap only when no connection is silent.
    Reading { since: Instant },
    /// A complete request head has arrived (`since`: when it was seen) and its response is not all
    /// handed to the kernel yet: not dropped for a newcomer, unless the peer has been taking the
    /// response for longer than the request deadline (a reader too slow to keep a slot).
    Serving { since: Instant },
}

/// One admin connection, as the accept loop and the sweeper see it.
struct Conn {
    id: u64,
    accepted: Instant,
    /// Requests handed to the service.
    served: Cell<u64>,
    phase: Cell<Phase>,
    /// First byte read while [`Phase::Serving`] (the next request, or an unread request body).
    read_while_serving: Cell<Option<Instant>>,
    /// The response's body is written into hyper's buffer: the response is done once that is flushed.
    answered: Cell<bool>,
    /// Since when the socket has refused our response bytes (the peer does not read).
    write_blocked_since: Cell<Option<Instant>>,
    /// The socket's descriptor while it is open (set by [`Tracked::new`] at accept, cleared before the
    /// socket is closed), to look at what the kernel holds for us that is not read yet.
    fd: Cell<Option<RawFd>>,
    /// Set when the connection is to be dropped (deadline passed or evicted).
    kill: Notify,
}

/// A connection's place in the order of eviction at the cap: lower goes first.
type Rank = (u8, Instant);

impl Conn {
    fn new(id: u64, now: Instant) -> Conn {
        Conn {
            id,
            accepted: now,
            served: Cell::new(0),
            phase: Cell::new(Phase::Silent { since: now }),
            read_while_serving: Cell::new(None),
            answered: Cell::new(false),
            write_blocked_since: Cell::new(None),
            fd: Cell::new(None),
            kill: Notify::new(),
        }
    }

    /// When this connection must go unless it makes progress, and why.
    fn deadline(&self, l: &Limits) -> (Instant, &'static str) {
        let mut d: Option<(Instant, &'static str)> = None;
        let mut consider = |at: Instant, why| {
            if d.is_none_or(|(first, _)| at < first) {
                d = Some((at, why));
            }
        };
        if let Some(t) = self.write_blocked_since.get() {
            consider(t + l.write_deadline, "response not read");
        }
        if self.served.get() == 0 {
            consider(self.accepted + l.request_deadline, "no request in time");
        }
        match self.phase.get() {
            Phase::Reading { since } => consider(
                since + l.request_deadline,
                "request head not completed in time",
            ),
            Phase::Silent { since } => consider(since + l.keep_alive_idle, "keep-alive idle"),
            // Each stall of the write is bounded by the write deadline; this bounds a peer that keeps
            // reading, slowly.
            Phase::Serving { since } => consider(since + l.keep_alive_idle, "response not taken"),
        }
        d.unwrap_or((self.accepted + l.keep_alive_idle, "keep-alive idle"))
    }

    /// Order in which connections are dropped at the cap at `now`, `None` for one that is not dropped
    /// for a newcomer: silent ones first (silent the longest first), then ones reading a request head
    /// (reading the longest first: a real client's head arrives at once, a slowloris' never ends),
    /// then responses the peer has been taking for longer than the request deadline (the longest
    /// first). A request being answered within that time is never dropped.
    fn eviction_rank(&self, l: &Limits, now: Instant) -> Option<Rank> {
        match self.phase.get() {
            Phase::Silent { since } => Some((0, since)),
            Phase::Reading { since } => Some((1, since)),
            Phase::Serving { since } if now >= since + l.request_deadline => Some((2, since)),
            Phase::Serving { .. } => None,
        }
    }

    /// How long the kernel has received nothing on this connection (since its handshake if it never
    /// has); `None` if that cannot be told.
    fn kernel_silence(&self) -> Option<Duration> {
        let fd = self.fd.get()?;
        // SAFETY: `fd` is open (see `request_waiting`); `info` is a plain C struct, valid zeroed, and
        // `len` is its size, which the kernel does not exceed.
        let (info, r) = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let r = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            (info, r)
        };
        (r == 0).then(|| Duration::from_millis(info.tcpi_last_data_recv.into()))
    }

    /// Looks at what has arrived in the kernel but is not read yet (the connection's task may not
    /// have run since its bytes came). True if that holds a complete request head: the connection
    /// is not to be dropped now (its task will read and answer it). Otherwise, a silent connection
    /// with unread bytes becomes [`Phase::Reading`] from `now`. `buf` is scratch space.
    fn request_waiting(&self, buf: &mut [u8], now: Instant) -> bool {
        let (Some(fd), phase) = (self.fd.get(), self.phase.get()) else {
            return false;
        };
        if matches!(phase, Phase::Serving { .. }) {
            return false;
        }
        // SAFETY: `fd` is the connection's open socket: `Tracked` owns it and clears `self.fd` before
        // it closes it, on this same thread (`Conn` is `!Send`). `buf` is valid for `buf.len()` bytes.
        // MSG_PEEK leaves the bytes for hyper; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Nothing unread, the peer's FIN, or an error (a reset connection may go).
        let Ok(n @ 1..) = usize::try_from(n) else {
            return false;
        };
        // (A head whose end straddles what hyper has read and what it has not is not seen: a real
        // client sends its head at once, and a reader is dropped only after every silent one and
        // every reader that started before it.)
        let unread = &buf[..n];
        if unread.windows(4).any(|w| w == b"\r\n\r\n") || unread.windows(2).any(|w| w == b"\n\n") {
            return true;
        }
        if let Phase::Silent { .. } = phase {
            self.phase.set(Phase::Reading { since: now });
        }
        false
    }

    fn on_bytes_received(&self, shared: &Shared) {
        match self.phase.get() {
            Phase::Silent { .. } => {
                self.phase.set(Phase::Reading {
                    since: Instant::now(),
                });
                shared.sweeper.notify_one();
                shared.room.notify_one();
            }
            Phase::Serving { .. } if self.read_while_serving.get().is_none() => {
                self.read_while_serving.set(Some(Instant::now()));
            }
            _ => {}
        }
    }

    /// The request head is complete and handed to the service.
    fn on_request(&self) {
        self.served.set(self.served.get() + 1);
        self.read_while_serving.set(None);
        self.answered.set(false);
        self.phase.set(Phase::Serving {
            since: Instant::now(),
        });
    }

    /// hyper is done with the response's body: its last byte is in hyper's buffer (or, for `HEAD`,
    /// there is none to send).
    fn on_answered(&self) {
        self.answered.set(true);
    }

    /// hyper's buffer is flushed to the socket: if the response's body was in it, the response is
    /// done.
    fn on_flushed(&self, shared: &Shared) {
        if !self.answered.take() || !matches!(self.phase.get(), Phase::Serving { .. }) {
            return;
        }
        let phase = match self.read_while_serving.take() {
            Some(since) => Phase::Reading { since },
            None => Phase::Silent {
                since: Instant::now(),
            },
        };
        self.phase.set(phase);
        shared.sweeper.notify_one();
    }

    fn on_write(&self, blocked: bool, shared: &Shared) {
        match (blocked, self.write_blocked_since.get()) {
            (true, None) => {
                self.write_blocked_since.set(Some(Instant::now()));
                shared.sweeper.notify_one();
            }
            (false, Some(_)) => self.write_blocked_since.set(None),
            _ => {}
        }
    }
}

/// What [`Shared::make_room`] could do.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Below the cap (a connection was dropped if need be): admit the newcomer.
    Made,
    /// Only silent connections still within [`Limits::fresh`] could go: try again after this long.
    Wait(Duration),
    /// Every connection has a request in hand: refuse the newcomer.
    Full,
}

impl Shared {
    /// Makes room for one more connection: at the cap, drops connections in [`Conn::eviction_rank`]
    /// order until below it, each one's socket looked at first: one with a complete request unread
    /// in the kernel ([`Conn::request_waiting`]) or a silent one still within [`Limits::fresh`] is
    /// passed over.
    fn make_room(&self) -> Room {
        let cap = self.limits.max_connections.max(1);
        let mut conns = self.conns.borrow_mut();
        let mut scratch = [0u8; MAX_HEAD];
        while conns.len() >= cap {
            let now = Instant::now();
            let mut victim = None;
            // Connections passed over: a complete request waiting in the kernel, or fresh.
            let mut passed = Vec::new();
            let mut fresh_for: Option<Duration> = None;
            // Candidates in rank order; looking at a candidate's socket can only move it later (to the
            // end of the readers, or out of the order), so the first one it leaves in place goes.
            while let Some((rank, id)) = conns
                .values()
                .filter(|c| !passed.contains(&c.id))
                .filter_map(|c| c.eviction_rank(&self.limits, now).map(|r| (r, c.id)))
                .min()
            {
                let c = &conns[&id];
                if c.request_waiting(&mut scratch, now) {
                    passed.push(id);
                    continue;
                }
                if let Phase::Silent { .. } = c.phase.get() {
                    let silent = c.kernel_silence().unwrap_or(Duration::MAX);
                    if silent < self.limits.fresh {
                        let left = self.limits.fresh - silent;
                        fresh_for = Some(fresh_for.map_or(left, |f| f.min(left)));
                        passed.push(id);
                        continue;
                    }
                }
                if c.eviction_rank(&self.limits, now) == Some(rank) {
                    victim = Some(id);
                    break;
                }
            }
            let Some(c) = victim.and_then(|id| conns.remove(&id)) else {
                return match fresh_for {
                    // (At least a millisecond: the kernel counts in milliseconds.)
                    Some(left) => Room::Wait(left.max(Duration::from_millis(1))),
                    None => Room::Full,
                };
            };
            tracing::debug!(
                "metrics: {} admin connections: dropping #{} ({:?})",
                self.limits.max_connections,
                c.id,
                c.phase.get()
            );
            c.kill.notify_one();
        }
        Room::Made
    }
}

async fn run(listener: TcpListener, limits: Limits, spare: File, render: Rc<dyn Fn() -> String>) {
    let shared = Rc::new(Shared {
        limits,
        conns: RefCell::new(HashMap::new()),
        sweeper: Notify::new(),
        room: Notify::new(),
        spare: RefCell::new(Some(spare)),
    });
    tokio::task::spawn_local(sweep(shared.clone()));
    let mut next_id = 0u64;
    let mut warned: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && shared.release_spare() {
                    continue; // the spare's descriptor is free now: accept again at once
                }
                // No spare (a scrape holds it) or another error: back off instead of spinning; the
                // listener stays. Warn at most once every 10 s.
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                shared.refill_spare();
                continue;
            }
        };
        // At the cap with only fresh silent connections to drop, the newcomer waits (and the ones
        // behind it in the kernel's backlog, aging there) until one of them may go or room is made.
        let room = loop {
            match shared.make_room() {
                Room::Wait(left) => {
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        _ = shared.room.notified() => {}
                    }
                }
                room => break room,
            }
        };
        if room == Room::Full {
            tracing::debug!(
                "metrics: {} admin connections, each with a request in hand: refusing a new one",
                limits.max_connections
            );
            drop(stream);
            shared.refill_spare();
            continue;
        }
        next_id += 1;
        let conn = Rc::new(Conn::new(next_id, Instant::now()));
        let _ = stream.set_nodelay(true);
        let io = Tracked::new(stream, conn.clone(), shared.clone());
        shared.conns.borrow_mut().insert(conn.id, conn.clone());
        shared.sweeper.notify_one();
        tokio::task::spawn_local(serve_conn(io, conn, shared.clone(), render.clone()));
        // Let the new connection's task (and any other woken one) run before the next accept, so that
        // a flood of connects is not accepted and evicted in one go ahead of the tasks that read
        // requests and close evicted sockets.
        tokio::task::yield_now().await;
    }
}

/// Drops connections whose deadline has passed; sleeps until the next deadline or a change.
async fn sweep(shared: Rc<Shared>) {
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        shared.conns.borrow_mut().retain(|_, c| {
            let (at, why) = c.deadline(&shared.limits);
            if at <= now {
                tracing::debug!("metrics: dropping admin connection #{}: {why}", c.id);
                c.kill.notify_one();
                false
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            }
        });
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = shared.sweeper.notified() => {}
                }
            }
            None => shared.sweeper.notified().await,
        }
    }
}

async fn serve_conn(
    io: Tracked,
    conn: Rc<Conn>,
    shared: Rc<Shared>,
    render: Rc<dyn Fn() -> String>,
) {
    let io = TokioIo::new(io);
    let on_request = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        on_request.on_request();
        let resp = respond(req.method(), req.uri().path(), &*render).map(|body| Answer {
            body,
            conn: on_request.clone(),
        });
        async move { Ok::<_, Infallible>(resp) }
    });
    {
        let http = http1::Builder::new()
            .keep_alive(true)
            // `Content-Type`, as the exporter always wrote it (for clients that match header case).
            .title_case_headers(true)
            // Our own deadlines (hyper's would also cut idle keep-alive connections short).
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, service);
        tokio::select! {
            biased;
            _ = conn.kill.notified() => {}
            res = http => {
                if let Err(e) = res {
                    tracing::debug!("metrics: admin connection #{}: {e}", conn.id);
                }
            }
        }
    }
    // The socket is closed (hyper's connection, which owned it, is dropped): its descriptor can
    // become the spare again if that was given up.
    shared.conns.borrow_mut().remove(&conn.id);
    shared.room.notify_one();
    shared.refill_spare();
}

/// The socket, telling its [`Conn`] when request bytes arrive and when the peer stops taking ours.
struct Tracked {
    stream: TcpStream,
    conn: Rc<Conn>,
    shared: Rc<Shared>,
}

impl Tracked {
    /// Wraps the socket as soon as it is accepted: from then on its [`Conn`] can look at what the
    /// kernel holds for it, even before its task first runs.
    fn new(stream: TcpStream, conn: Rc<Conn>, shared: Rc<Shared>) -> Tracked {
        conn.fd.set(Some(stream.as_raw_fd()));
        Tracked {
            stream,
            conn,
            shared,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The socket is closed right after this (its field is dropped next): its descriptor may be
        // reused from then on.
        self.conn.fd.set(None);
    }
}

/// A response body that tells its [`Conn`] when hyper is done with it (hyper drops the body once its
/// last byte is in its write buffer, or at once for `HEAD`; the next flush completes the response).
struct Answer {
    body: Full<Bytes>,
    conn: Rc<Conn>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.conn.on_answered();
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_bytes_received(&this.shared);
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.conn.on_write(res.is_pending(), &this.shared);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.conn.on_write(res.is_pending(), &this.shared);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper calls this once its write buffer is all in the socket.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(res, Poll::Ready(Ok(()))) {
            this.conn.on_flushed(&this.shared);
        }
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

fn respond(method: &Method, path: &str, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = route(method, path, render);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// (status, content type, body). hyper answers `HEAD` with the headers of the `GET` and no body, and
/// malformed or oversized requests with `400`/`431` before they get here.
fn route(
    method: &Method,
    path: &str,
    render: &dyn Fn() -> String,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
    }
    match path {
        "/metrics" => (StatusCode::OK, CONTENT_TYPE, render()),
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests;
