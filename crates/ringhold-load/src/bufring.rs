//! The provided buffer ring one worker's multishot receives take from. A buffer is checked and handed
//! back the moment its completion is processed, so a few thousand small buffers serve any number of
//! connections and an idle connection owns no receive memory. All `unsafe` about it lives here.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

pub struct BufRing {
    entries: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: Vec<u8>,
    buf_size: usize,
    count: u16,
    /// Our copy of the tail; published with `publish`.
    tail: u16,
    pub bgid: u16,
}

impl BufRing {
    /// `count` must be a power of two ≤ 32768.
    pub fn new(count: u16, buf_size: usize, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two",
            ));
        }
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count ≥ 1).
        let entries = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut r = BufRing {
            entries,
            ring_layout,
            bufs: vec![0u8; usize::from(count) * buf_size],
            buf_size,
            count,
            tail: 0,
            bgid,
        };
        for bid in 0..count {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Registers the ring with `ring` under `bgid`.
    pub fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: `entries` points to `count` entries that live as long as `self`; the owner keeps
        // `self` alive for as long as the io_uring (see `Worker`'s field order and `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries as u64,
                self.count,
                self.bgid,
                0,
            )
        }
    }

    /// The first `len` bytes of buffer `bid` (as filled by the kernel for a completion).
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid % self.count) * self.buf_size;
        &self.bufs[start..start + len.min(self.buf_size)]
    }

    /// Hands buffer `bid` back to the kernel (visible after `publish`).
    pub fn push(&mut self, bid: u16) {
        let bid = bid % self.count;
        let idx = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_size as u64;
        // SAFETY: idx < count, so the entry is inside the allocation; the kernel only reads entries
        // between its head and the published tail, and this one is past the published tail.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the pushed buffers to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail field overlays entry 0's `resv` and is naturally aligned for u16; the kernel
        // reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries)
                .cast_mut()
                .cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The owner drops (closes) the io_uring first.
        unsafe { dealloc(self.entries.cast(), self.ring_layout) }
    }
}
