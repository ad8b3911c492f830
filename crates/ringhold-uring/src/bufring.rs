//! The provided buffer ring: all `unsafe` that touches the buffer ring or the buffer memory lives here.
//!
//! One ring per shard: `entries` buffers of `size` bytes in one page-aligned allocation, and a
//! page-aligned array of `entries` ring slots shared with the kernel (`struct io_uring_buf`). The kernel
//! picks a buffer for each multishot receive; we give it back (`recycle`) the moment the echo send that
//! used it completes, and make all recycled buffers visible at once (`publish`) with one release store of
//! the tail.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// An anonymous private mapping: zero pages the kernel commits only when touched (a page-aligned
/// `alloc_zeroed` would write every byte of it, making the whole reservation resident at once).
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`; nothing uses it after this (the
        // shard drops its io_uring, which unregisters the ring, before its BufRing).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    mem: NonNull<u8>,
    // The mappings behind `ring` and `mem`; dropped (unmapped) with the BufRing.
    _ring_map: Mapping,
    _mem_map: Mapping,
    entries: u16,
    size: u32,
    /// Our copy of the tail; published to the kernel by `publish`.
    tail: u16,
    published: u16,
    bgid: u16,
}

impl BufRing {
    /// Reserves `entries` (a power of two ≤ 32768) buffers of `size` bytes and hands the first
    /// `provided` of them to the ring; [`BufRing::provide`] hands out more. The memory is an anonymous
    /// mapping (zero pages committed on first touch), so only buffers the ring has handed out become
    /// resident: the ring cycles through the provided ones only.
    pub fn new(entries: u16, size: u32, bgid: u16, provided: u16) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffers must be a power of two ≤ 32768",
            ));
        }
        let ring_map = Mapping::new(entries as usize * std::mem::size_of::<BufRingEntry>())?;
        let mem_map = Mapping::new(entries as usize * size as usize)?;
        let mut br = BufRing {
            ring: ring_map.ptr.cast::<BufRingEntry>(),
            mem: mem_map.ptr,
            _ring_map: ring_map,
            _mem_map: mem_map,
            entries,
            size,
            tail: 0,
            published: 0,
            bgid,
        };
        br.provide(0, provided.min(entries));
        br.publish();
        Ok(br)
    }

    /// Hands buffers `from .. from + count` to the ring, published at once.
    pub fn provide(&mut self, from: u16, count: u16) {
        for bid in from..from.saturating_add(count).min(self.entries) {
            self.put(bid);
        }
        self.publish();
    }

    /// Registers the ring with the kernel under buffer group `bgid`.
    pub fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is valid for `entries` slots and lives until `self` is dropped; the
        // shard drops its io_uring (which unregisters everything) before its BufRing.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.bgid,
                0,
            )
        }
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Gives buffer `bid` back to the kernel, published at once (one release store). Publishing at
    /// the end of the loop turn instead left a window: a turn whose SQEs overflow the SQ submits in
    /// the middle, and receives armed then (woken buffer waiters, among them) would find the ring
    /// empty while the machine counted the buffers they were woken for as free, and wait again.
    pub fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    /// Writes buffer `bid` into the next ring slot, not yet visible to the kernel.
    fn put(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries, so the slot is inside the ring allocation. The kernel only reads slots
        // between its head and the published tail; this one is past the published tail, so we own it.
        unsafe {
            let e = &mut *self.ring.as_ptr().add(idx);
            e.set_addr(self.mem.as_ptr().add(bid as usize * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes every recycled buffer to the kernel with one release store.
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field overlays `resv` of slot 0, a valid, aligned u16 inside the ring; the
        // kernel reads it with acquire semantics, so a release store orders our slot writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// Pointer and length of `len` bytes at `off` in buffer `bid`, for a send.
    pub fn ptr(&self, bid: u16, off: u32, len: u32) -> *const u8 {
        debug_assert!(bid < self.entries && off + len <= self.size);
        // SAFETY: bid < entries and off < size keep the pointer inside the allocation.
        unsafe {
            self.mem
                .as_ptr()
                .add(bid as usize * self.size as usize + off as usize)
        }
    }

    /// The whole of buffer `bid`, which the kernel handed to us with a receive completion.
    pub fn bytes_mut(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < self.entries);
        // SAFETY: bid < entries keeps the range inside the allocation; the kernel handed `bid` to us with
        // a completion and will not write it again until we recycle it (and a recycled buffer is never
        // read through this again: the connection machine gives it back only when nothing refers to
        // it). `&mut self` makes this the only live slice of the ring's memory.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mem.as_ptr().add(bid as usize * self.size as usize),
                self.size as usize,
            )
        }
    }
}

impl ringhold_core::Pool for BufRing {
    fn bytes_mut(&mut self, bid: u16) -> &mut [u8] {
        BufRing::bytes_mut(self, bid)
    }

    fn recycle(&mut self, bid: u16) {
        BufRing::recycle(self, bid)
    }
}

// SAFETY: the ring is owned by one shard thread; it is only moved to that thread before use.
unsafe impl Send for BufRing {}
