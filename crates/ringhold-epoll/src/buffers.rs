//! The shard's receive buffers: one allocation of `count × size` bytes and a free list of buffer ids.
//!
//! A buffer is either on the free list, held by the connection machine (bytes waiting to be sent), or,
//! for the length of one `recv`, in the engine's hand. Nothing is allocated after start-up. The memory comes from a zeroed
//! allocation, so pages the shard never touches are never made resident.

use std::io;

pub struct Buffers {
    mem: Box<[u8]>,
    size: usize,
    /// Free buffer ids; a stack, so that the most recently used (cache-warm) buffer goes out first.
    free: Vec<u16>,
}

impl Buffers {
    /// Reserves `count` buffers of `size` bytes and puts the first `provided` on the free list
    /// ([`Buffers::provide`] adds more).
    pub fn new(count: u16, size: u32, provided: u16) -> io::Result<Buffers> {
        if count == 0 || count == u16::MAX || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{count} buffers of {size} bytes: need 1 to 65534 buffers of at least 1 byte"
                ),
            ));
        }
        let total = (count as usize).checked_mul(size as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffers × buffer size overflows",
            )
        })?;
        Ok(Buffers {
            mem: vec![0u8; total].into_boxed_slice(),
            size: size as usize,
            free: (0..provided.min(count)).rev().collect(),
        })
    }

    /// Puts buffers `from .. from + count` on the free list.
    pub fn provide(&mut self, from: u16, count: u16) {
        let end = (from as usize + count as usize).min(self.total());
        self.free
            .extend((from as usize..end).rev().map(|b| b as u16));
    }

    /// Bytes of one buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Buffers of this shard.
    pub fn total(&self) -> usize {
        self.mem.len() / self.size
    }

    /// Buffers on the free list.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer, if any.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Gives buffer `bid` back to the free list.
    pub fn put(&mut self, bid: u16) {
        debug_assert!((bid as usize) < self.total());
        debug_assert!(!self.free.contains(&bid), "buffer {bid} freed twice");
        self.free.push(bid);
    }

    /// The whole of buffer `bid`, to receive into.
    pub fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        let at = bid as usize * self.size;
        &mut self.mem[at..at + self.size]
    }

    /// `len` bytes of buffer `bid` from `off`, to send from.
    pub fn bytes(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        let at = bid as usize * self.size + off as usize;
        &self.mem[at..at + len as usize]
    }
}

impl ringhold_core::Pool for Buffers {
    fn bytes_mut(&mut self, bid: u16) -> &mut [u8] {
        self.buf_mut(bid)
    }

    fn recycle(&mut self, bid: u16) {
        self.put(bid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_fill_and_recycle() {
        let mut b = Buffers::new(4, 8, 4).unwrap();
        assert_eq!((b.total(), b.free(), b.size()), (4, 4, 8));
        let x = b.take().unwrap();
        assert_eq!(x, 0, "lowest id first");
        b.buf_mut(x)[..3].copy_from_slice(b"abc");
        assert_eq!(b.bytes(x, 1, 2), b"bc");
        b.put(x);
        assert_eq!(b.free(), 4);
        assert_eq!(b.take(), Some(0), "the buffer just recycled goes out first");
    }

    #[test]
    fn exhaustion() {
        let mut b = Buffers::new(2, 16, 2).unwrap();
        let (x, y) = (b.take().unwrap(), b.take().unwrap());
        assert_ne!(x, y);
        assert_eq!(b.take(), None);
        b.put(y);
        assert_eq!(b.take(), Some(y));
        // Buffers do not overlap.
        b.buf_mut(x).fill(1);
        b.buf_mut(y).fill(2);
        assert!(b.bytes(x, 0, 16).iter().all(|&v| v == 1));
        assert!(b.bytes(y, 0, 16).iter().all(|&v| v == 2));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(Buffers::new(0, 16, 0).is_err());
        assert!(Buffers::new(4, 0, 4).is_err());
        assert!(Buffers::new(u16::MAX, 16, 1).is_err());
    }
}
