//! Buffer chains. A shard owns `count` receive buffers of `size` bytes (the memory itself belongs to the
//! engine: a registered buffer ring for io_uring, a plain allocation for epoll). A buffer that holds
//! bytes waiting to be echoed sits in its connection's chain; chains are linked through this per-shard
//! table, so a connection needs only a head, a tail and a count, not a queue of its own.

/// "No buffer".
pub const NIL: u16 = u16::MAX;

/// Per-shard link table: for each buffer id, the next buffer in its chain and how many bytes it holds.
#[derive(Debug)]
pub struct Links {
    next: Box<[u16]>,
    len: Box<[u32]>,
    in_use: u32,
}

impl Links {
    pub fn new(count: u16) -> Links {
        assert!(count < NIL, "at most 65534 buffers per shard");
        Links {
            next: vec![NIL; count as usize].into_boxed_slice(),
            len: vec![0; count as usize].into_boxed_slice(),
            in_use: 0,
        }
    }

    /// Buffers currently held in chains.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }
}

/// A connection's chain of filled buffers: 8 bytes inside [`crate::Conn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    head: u16,
    tail: u16,
    /// Bytes of the head buffer already sent.
    sent: u32,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: NIL,
            tail: NIL,
            sent: 0,
        }
    }
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// Appends buffer `bid` holding `len` bytes.
    pub fn push(&mut self, links: &mut Links, bid: u16, len: u32) {
        debug_assert!(len > 0);
        links.next[bid as usize] = NIL;
        links.len[bid as usize] = len;
        links.in_use += 1;
        if self.head == NIL {
            self.head = bid;
        } else {
            links.next[self.tail as usize] = bid;
        }
        self.tail = bid;
    }

    /// The next bytes to send: `(buffer id, offset, length)`.
    pub fn front(&self, links: &Links) -> Option<(u16, u32, u32)> {
        (self.head != NIL).then(|| {
            let len = links.len[self.head as usize];
            (self.head, self.sent, len - self.sent)
        })
    }

    /// Records that `n` bytes of the front were sent. Returns the buffer id if the head buffer is now
    /// fully sent (the caller recycles it at once).
    pub fn consume(&mut self, links: &mut Links, n: u32) -> Option<u16> {
        debug_assert!(self.head != NIL);
        let bid = self.head;
        self.sent += n;
        let len = links.len[bid as usize];
        debug_assert!(self.sent <= len);
        if self.sent < len {
            return None;
        }
        self.pop(links)
    }

    /// Removes and returns the head buffer (for recycling), whatever was sent of it.
    pub fn pop(&mut self, links: &mut Links) -> Option<u16> {
        if self.head == NIL {
            return None;
        }
        let bid = self.head;
        self.head = links.next[bid as usize];
        if self.head == NIL {
            self.tail = NIL;
        }
        self.sent = 0;
        links.in_use -= 1;
        Some(bid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_fifo_and_partial_sends() {
        let mut l = Links::new(8);
        let mut a = Chain::default();
        let mut b = Chain::default();
        a.push(&mut l, 3, 100);
        b.push(&mut l, 4, 10);
        a.push(&mut l, 5, 50);
        assert_eq!(l.in_use(), 3);
        assert_eq!(a.front(&l), Some((3, 0, 100)));
        assert_eq!(a.consume(&mut l, 60), None);
        assert_eq!(a.front(&l), Some((3, 60, 40)));
        assert_eq!(a.consume(&mut l, 40), Some(3));
        assert_eq!(a.front(&l), Some((5, 0, 50)));
        assert_eq!(b.front(&l), Some((4, 0, 10)));
        assert_eq!(a.consume(&mut l, 50), Some(5));
        assert!(a.is_empty());
        assert_eq!(a.front(&l), None);
        assert_eq!(b.pop(&mut l), Some(4));
        assert_eq!(l.in_use(), 0);
        // Reuse after drain.
        a.push(&mut l, 5, 1);
        assert_eq!(a.front(&l), Some((5, 0, 1)));
    }
}
