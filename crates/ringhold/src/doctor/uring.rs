//! A real io_uring probe: creates a ring the way the engine does, asks the kernel which opcodes it
//! knows, registers a sparse fixed-file table and a provided-buffer ring, then runs one echo over
//! loopback through multishot accept (into a direct descriptor), multishot recv with buffer select,
//! send, setsockopt via URING_CMD, async cancel and close. Nothing leaves 127.0.0.1; every wait is
//! bounded.

use std::alloc::{self, Layout};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

/// Opcodes ringhold submits: (name, code, required).
pub const OPCODES: &[(&str, u8, bool)] = &[
    ("ACCEPT", opcode::AcceptMulti::CODE, true),
    ("RECV", opcode::RecvMulti::CODE, true),
    ("SEND", opcode::Send::CODE, true),
    ("CLOSE", opcode::Close::CODE, true),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE, true),
    ("URING_CMD", opcode::UringCmd16::CODE, false),
];

/// What the probe found.
#[derive(Debug)]
pub struct UringReport {
    /// Ring creation: the setup flags that worked, or the error.
    pub setup: Result<&'static str, io::Error>,
    /// (name, supported, required) for each of [`OPCODES`]; empty when setup failed.
    pub opcodes: Vec<(&'static str, bool, bool)>,
    pub bundle: bool,
    /// Fixed-file table: slots asked for, and what the kernel said.
    pub table: Option<(u64, Result<(), io::Error>)>,
    /// One slot over the cap: the kernel's answer (EMFILE shows the cap is RLIMIT_NOFILE).
    pub table_over: Option<(u64, Result<(), io::Error>)>,
    pub buf_ring: Option<Result<(), io::Error>>,
    /// The loopback echo through multishot accept/recv: Ok, or the step that failed.
    pub live: Option<Result<(), String>>,
    /// setsockopt via URING_CMD on the direct descriptor: Ok, or the error.
    pub setsockopt: Option<Result<(), io::Error>>,
}

const ENTRIES: u32 = 64;
const BGID: u16 = 7;
const NBUFS: u16 = 8;
const BUF_LEN: usize = 256;
const UD_ACCEPT: u64 = 1;
const UD_RECV: u64 = 2;
const UD_SEND: u64 = 3;
const UD_SOCKOPT: u64 = 4;
const UD_CANCEL: u64 = 5;
const UD_CLOSE: u64 = 6;
const WAIT: Duration = Duration::from_secs(5);

fn new_ring() -> (Result<IoUring, io::Error>, &'static str) {
    // As the engine: SINGLE_ISSUER | DEFER_TASKRUN (6.1+), falling back to a plain ring.
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(ENTRIES * 8);
    match b.build(ENTRIES) {
        Ok(r) => (Ok(r), "SINGLE_ISSUER|DEFER_TASKRUN"),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
            IoUring::builder().setup_cqsize(ENTRIES * 8).build(ENTRIES),
            "none (SINGLE_ISSUER|DEFER_TASKRUN: EINVAL)",
        ),
        Err(e) => (Err(e), ""),
    }
}

/// Runs the probe. `table_slots`: the fixed-file table to try (slots per shard), `cap`: the
/// RLIMIT_NOFILE soft limit the kernel holds the table to (one more is tried to show it).
pub fn probe(table_slots: u64, cap: u64) -> UringReport {
    let mut rep = UringReport {
        setup: Err(io::Error::other("not tried")),
        opcodes: Vec::new(),
        bundle: false,
        table: None,
        table_over: None,
        buf_ring: None,
        live: None,
        setsockopt: None,
    };
    let (ring, flags) = new_ring();
    let mut ring = match ring {
        Ok(r) => r,
        Err(e) => {
            rep.setup = Err(e);
            return rep;
        }
    };
    rep.setup = Ok(flags);
    rep.bundle = ring.params().is_feature_recvsend_bundle();

    let mut probe = Probe::new();
    let probed = ring.submitter().register_probe(&mut probe);
    rep.opcodes = OPCODES
        .iter()
        .map(|&(n, code, req)| (n, probed.is_ok() && probe.is_supported(code), req))
        .collect();

    // The table the server would register, then one slot over the cap on a scratch ring.
    let slots = table_slots.clamp(1, u32::MAX as u64) as u32;
    rep.table = Some((slots as u64, ring.submitter().register_files_sparse(slots)));
    if cap < u32::MAX as u64 {
        if let (Ok(scratch), _) = new_ring() {
            let over = cap + 1;
            rep.table_over = Some((over, scratch.submitter().register_files_sparse(over as u32)));
        }
    }
    // The live test needs a table; if the big one failed, use a small one.
    if !matches!(rep.table, Some((_, Ok(()))))
        && ring.submitter().register_files_sparse(16).is_err()
    {
        return rep;
    }

    let bufs = match ProvidedBuffers::new() {
        Some(b) => b,
        None => {
            rep.buf_ring = Some(Err(io::Error::other("cannot allocate the buffer ring")));
            return rep;
        }
    };
    // SAFETY: `bufs` owns the ring memory and the buffers; it is declared before `ring` is
    // unregistered below and outlives every use the kernel makes of it (we unregister it
    // before `bufs` drops, at the end of this function).
    let reg = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), NBUFS, BGID, 0)
    };
    let registered = reg.is_ok();
    rep.buf_ring = Some(reg);
    if registered {
        let mut sockopt = None;
        rep.live = Some(live_echo(&mut ring, &bufs, &mut sockopt));
        rep.setsockopt = sockopt;
        let _ = ring.submitter().unregister_buf_ring(BGID);
    }
    drop(ring);
    drop(bufs);
    rep
}

/// A page-aligned provided-buffer ring of NBUFS entries and the buffers it points to.
struct ProvidedBuffers {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
}

impl ProvidedBuffers {
    fn new() -> Option<ProvidedBuffers> {
        let ring_layout = Layout::from_size_align(4096, 4096).ok()?;
        let data_layout = Layout::from_size_align(BUF_LEN * NBUFS as usize, 64).ok()?;
        // SAFETY: both layouts have non-zero size.
        let (ring, data) = unsafe {
            (
                alloc::alloc_zeroed(ring_layout),
                alloc::alloc_zeroed(data_layout),
            )
        };
        if ring.is_null() || data.is_null() {
            // SAFETY: each pointer is freed only when it was allocated with its layout.
            unsafe {
                if !ring.is_null() {
                    alloc::dealloc(ring, ring_layout);
                }
                if !data.is_null() {
                    alloc::dealloc(data, data_layout);
                }
            }
            return None;
        }
        let ring = ring.cast::<BufRingEntry>();
        for i in 0..NBUFS {
            // SAFETY: the ring page holds 4096 / 16 = 256 entries, we write NBUFS (8) of them; the
            // data area holds NBUFS buffers of BUF_LEN bytes.
            unsafe {
                let e = &mut *ring.add(i as usize);
                e.set_addr(data.add(i as usize * BUF_LEN) as u64);
                e.set_len(BUF_LEN as u32);
                e.set_bid(i);
            }
        }
        // SAFETY: `ring` is the first entry of an initialised ring; the tail is a u16 inside it,
        // aligned and shared with the kernel, hence written atomically with release order.
        unsafe {
            let tail = BufRingEntry::tail(ring).cast::<AtomicU16>();
            (*tail).store(NBUFS, Ordering::Release);
        }
        Some(ProvidedBuffers {
            ring,
            ring_layout,
            data,
            data_layout,
        })
    }

    fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// The first `len` bytes of buffer `bid` (after a completion said the kernel filled them).
    fn read(&self, bid: u16, len: usize) -> Vec<u8> {
        let bid = (bid % NBUFS) as usize;
        let len = len.min(BUF_LEN);
        // SAFETY: the range lies inside the data area, and the kernel finished writing it before
        // posting the completion we are handling.
        unsafe { std::slice::from_raw_parts(self.data.add(bid * BUF_LEN), len).to_vec() }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts and are freed once.
        unsafe {
            alloc::dealloc(self.ring.cast(), self.ring_layout);
            alloc::dealloc(self.data, self.data_layout);
        }
    }
}

/// Pushes one SQE; SQ full ⇒ submit and retry once.
fn push(ring: &mut IoUring, e: squeue::Entry) -> Result<(), String> {
    // SAFETY: every pointer an entry carries (buffers, optval) lives until its completion is
    // reaped in `live_echo`, which waits for each before returning.
    if unsafe { ring.submission().push(&e) }.is_ok() {
        return Ok(());
    }
    ring.submit().map_err(|e| format!("submit: {e}"))?;
    // SAFETY: as above.
    unsafe { ring.submission().push(&e) }.map_err(|_| "submission queue full".to_string())
}

/// Waits (bounded) for the next completion with `ud`; completions for others are kept.
fn wait(
    ring: &mut IoUring,
    held: &mut Vec<cqueue::Entry>,
    ud: u64,
    step: &str,
) -> Result<cqueue::Entry, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        held.extend(ring.completion());
        if let Some(i) = held.iter().position(|c| c.user_data() == ud) {
            return Ok(held.remove(i));
        }
        if Instant::now() >= deadline {
            return Err(format!("{step}: no completion within {WAIT:?}"));
        }
        ringhold_uring::ring::submit_and_wait(&ring.submitter(), Duration::from_secs(1))
            .map_err(|e| format!("{step}: io_uring_enter: {e}"))?;
    }
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

fn live_echo(
    ring: &mut IoUring,
    bufs: &ProvidedBuffers,
    sockopt: &mut Option<Result<(), io::Error>>,
) -> Result<(), String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut held = Vec::new();

    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
        .allocate_file_index(true)
        .build();
    push(ring, accept.user_data(UD_ACCEPT))?;
    ring.submit().map_err(|e| format!("submit accept: {e}"))?;
    let mut client = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    client
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let c = wait(ring, &mut held, UD_ACCEPT, "multishot accept")?;
    if c.result() < 0 {
        return Err(format!(
            "multishot accept into a direct descriptor: {}",
            errno(c.result())
        ));
    }
    if !cqueue::more(c.flags()) {
        return Err("accept is not multishot (no IORING_CQE_F_MORE; needs Linux 5.19)".into());
    }
    let slot = c.result() as u32;

    push(
        ring,
        opcode::RecvMulti::new(Fixed(slot), BGID)
            .build()
            .user_data(UD_RECV),
    )?;
    client
        .write_all(b"ringhold-probe")
        .map_err(|e| format!("client write: {e}"))?;
    let c = wait(ring, &mut held, UD_RECV, "multishot recv")?;
    if c.result() < 0 {
        return Err(format!(
            "multishot recv with buffer select: {}",
            errno(c.result())
        ));
    }
    let bid =
        cqueue::buffer_select(c.flags()).ok_or("recv completion without a selected buffer")?;
    if !cqueue::more(c.flags()) {
        return Err("recv is not multishot (no IORING_CQE_F_MORE; needs Linux 6.0)".into());
    }
    let data = bufs.read(bid, c.result() as usize);

    push(
        ring,
        opcode::Send::new(Fixed(slot), data.as_ptr(), data.len() as u32)
            .build()
            .user_data(UD_SEND),
    )?;
    let c = match wait(ring, &mut held, UD_SEND, "send") {
        Ok(c) => c,
        Err(e) => {
            // The send may still be in flight: its buffer must outlive it.
            std::mem::forget(data);
            return Err(e);
        }
    };
    if c.result() != data.len() as i32 {
        return Err(format!(
            "send on a direct descriptor returned {}",
            c.result()
        ));
    }
    let mut back = vec![0u8; data.len()];
    client
        .read_exact(&mut back)
        .map_err(|e| format!("client read of the echo: {e}"))?;
    if back != b"ringhold-probe" {
        return Err("the echo came back different".into());
    }

    let one: Box<libc::c_int> = Box::new(1);
    let so = opcode::SetSockOpt::new(
        Fixed(slot),
        libc::SOL_SOCKET as u32,
        libc::SO_KEEPALIVE as u32,
        (&*one as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as u32,
    );
    push(ring, so.build().user_data(UD_SOCKOPT))?;
    let c = match wait(ring, &mut held, UD_SOCKOPT, "setsockopt") {
        Ok(c) => c,
        Err(e) => {
            std::mem::forget(one);
            return Err(e);
        }
    };
    *sockopt = Some(if c.result() < 0 {
        Err(errno(c.result()))
    } else {
        Ok(())
    });

    // The peer closes: the multishot recv ends with 0 and no F_MORE.
    drop(client);
    let c = wait(ring, &mut held, UD_RECV, "recv end of stream")?;
    if c.result() != 0 {
        return Err(format!(
            "recv after the peer closed returned {}",
            c.result()
        ));
    }
    push(
        ring,
        opcode::Close::new(Fixed(slot)).build().user_data(UD_CLOSE),
    )?;
    let c = wait(ring, &mut held, UD_CLOSE, "close of a direct descriptor")?;
    if c.result() < 0 {
        return Err(format!(
            "close of a direct descriptor: {}",
            errno(c.result())
        ));
    }
    push(
        ring,
        opcode::AsyncCancel::new(UD_ACCEPT)
            .build()
            .user_data(UD_CANCEL),
    )?;
    let c = wait(ring, &mut held, UD_CANCEL, "async cancel")?;
    if c.result() < 0 {
        return Err(format!(
            "async cancel of the multishot accept: {}",
            errno(c.result())
        ));
    }
    let c = wait(ring, &mut held, UD_ACCEPT, "cancelled accept")?;
    if c.result() != -libc::ECANCELED {
        return Err(format!("cancelled accept completed with {}", c.result()));
    }
    Ok(())
}
