//! Driving one connection: send what the machine's send cycle asks for while the socket takes it, then
//! read while the machine wants to read and the socket has bytes. Edge-triggered, so the connection's
//! engine bits remember what the last edges said until a read or send comes back with EAGAIN (or short).
//!
//! Every decision (what to send, whether to read, what a read means, when to close) is the connection
//! machine's; this file only makes the syscalls and reports what they did.

use std::io;
use std::os::fd::RawFd;

use ringhold_core::machine::Front;
use ringhold_core::{Id, Machine};

use crate::buffers::Buffers;
use crate::sys;

/// Engine bits of `Conn::io`.
pub mod bit {
    /// The socket may have unread bytes (an edge came and no read has drained it since).
    pub const READABLE: u8 = 1 << 0;
    /// The socket may take more bytes.
    pub const WRITABLE: u8 = 1 << 1;
    /// The peer shut down its side (EPOLLRDHUP/EPOLLHUP): a short read no longer means "drained",
    /// keep reading until the end of stream shows up.
    pub const RDHUP: u8 = 1 << 2;
    /// The machine's send cycle is on.
    pub const SEND_WANTED: u8 = 1 << 3;
}

/// Reads one connection may do per turn before others get theirs (the rest waits in `again`).
const READ_BUDGET: u32 = 32;

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Sends, then reads, for connection `id` until it must wait for an edge, a buffer, a timer or its turn
/// (then it is pushed to `again`).
pub fn drive(m: &mut Machine, bufs: &mut Buffers, again: &mut Vec<Id>, id: Id, now_ms: u64) {
    send(m, bufs, id, now_ms);
    read(m, bufs, again, id, now_ms);
}

fn io_bits(m: &mut Machine, id: Id) -> Option<&mut u8> {
    m.conn_mut(id.idx, id.gen).map(|c| &mut c.io)
}

fn send(m: &mut Machine, bufs: &mut Buffers, id: Id, now_ms: u64) {
    let raw = id.idx as RawFd;
    loop {
        let Some(bits) = io_bits(m, id) else { return };
        if *bits & bit::SEND_WANTED == 0 || *bits & bit::WRITABLE == 0 {
            return;
        }
        let (res, len) = match m.front(id.idx, id.gen) {
            None => {
                if let Some(bits) = io_bits(m, id) {
                    *bits &= !bit::SEND_WANTED;
                }
                return;
            }
            Some(f) => {
                let bytes = match f {
                    Front::Buf { bid, off, len } => bufs.bytes(bid, off, len),
                    Front::Bytes(b) => b,
                };
                (sys::send(raw, bytes), bytes.len())
            }
        };
        match res {
            Ok(n) => {
                m.sent(bufs, id.idx, id.gen, n, now_ms);
                if n < len {
                    // The socket's send buffer is full: wait for EPOLLOUT.
                    if let Some(bits) = io_bits(m, id) {
                        *bits &= !bit::WRITABLE;
                    }
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(bits) = io_bits(m, id) {
                    *bits &= !bit::WRITABLE;
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                m.failed(id.idx, id.gen, errno(&e));
                return;
            }
        }
    }
}

fn read(m: &mut Machine, bufs: &mut Buffers, again: &mut Vec<Id>, id: Id, now_ms: u64) {
    let raw = id.idx as RawFd;
    let mut budget = READ_BUDGET;
    loop {
        if !m.wants_read(id.idx, id.gen) {
            return;
        }
        let Some(bits) = io_bits(m, id) else { return };
        if *bits & bit::READABLE == 0 {
            return;
        }
        let rdhup = *bits & bit::RDHUP != 0;
        if budget == 0 {
            again.push(id);
            return;
        }
        budget -= 1;
        let Some(bid) = bufs.take() else {
            m.no_buffer(id.idx, id.gen);
            return;
        };
        match sys::recv(raw, bufs.buf_mut(bid)) {
            Ok(0) => {
                bufs.put(bid);
                if let Some(bits) = io_bits(m, id) {
                    *bits &= !bit::READABLE;
                }
                m.peer_fin(id.idx, id.gen, now_ms);
            }
            Ok(n) => {
                if n < bufs.size() && !rdhup {
                    // A short read emptied the socket; the next byte to arrive raises a new edge.
                    if let Some(bits) = io_bits(m, id) {
                        *bits &= !bit::READABLE;
                    }
                }
                m.received(bufs, id.idx, id.gen, bid, n as u32, now_ms);
            }
            Err(e) => {
                bufs.put(bid);
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        if let Some(bits) = io_bits(m, id) {
                            *bits &= !bit::READABLE;
                        }
                        return;
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        m.failed(id.idx, id.gen, errno(&e));
                        return;
                    }
                }
            }
        }
    }
}
