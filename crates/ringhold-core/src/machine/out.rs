//! Output queues. What a connection has to send is a FIFO of segments, each naming where its bytes are:
//! a receive buffer (echo, a request body, a WebSocket payload unmasked in place), static bytes, a few
//! inline bytes (a frame header), or a shard-owned generated slot (a response head). The nodes of every
//! connection's queue live in one per-shard table, so a connection needs only a head and a tail (8 bytes
//! inside `Conn`), and nothing is allocated per message once the table has grown to the shard's peak.
//!
//! Receive buffers and generated slots are reference counted: a buffer is given back to the engine's
//! pool when the last segment that points into it was sent (or dropped at close).

use crate::protocol::MAX_GENERATED;

/// "No node".
pub const NIL: u32 = u32::MAX;

/// Bytes of one generated slot. Response heads and small bodies of pipelined requests are appended into
/// the connection's current slot, so one send carries several of them.
pub const GEN_SLOT: usize = 2048;
const _: () = assert!(GEN_SLOT >= MAX_GENERATED);

/// Most bytes an inline segment carries (a WebSocket server frame header is at most 10).
pub const INLINE: usize = 14;

/// Where a segment's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// `len` bytes at `off` of receive buffer `bid`.
    Buf { bid: u16, off: u32, len: u32 },
    /// Static bytes.
    Static(&'static [u8]),
    /// Bytes kept in the segment itself.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// `len` bytes at `off` of generated slot `slot`.
    Gen { slot: u32, off: u32, len: u32 },
}

impl Seg {
    pub fn len(&self) -> usize {
        match *self {
            Seg::Buf { len, .. } | Seg::Gen { len, .. } => len as usize,
            Seg::Static(b) => b.len(),
            Seg::Inline { len, .. } => len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (they were sent).
    fn advance(&mut self, n: usize) {
        match self {
            Seg::Buf { off, len, .. } | Seg::Gen { off, len, .. } => {
                *off += n as u32;
                *len -= n as u32;
            }
            Seg::Static(b) => *b = &b[n..],
            Seg::Inline { len, bytes } => {
                bytes.copy_within(n..*len as usize, 0);
                *len -= n as u8;
            }
        }
    }
}

/// What to send next, resolved: a receive buffer range (the engine owns that memory) or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front<'a> {
    Buf { bid: u16, off: u32, len: u32 },
    Bytes(&'a [u8]),
}

/// Bytes one queued segment takes in the per-shard node table.
pub const NODE_BYTES: usize = std::mem::size_of::<Node>();

#[derive(Clone, Copy, Debug)]
struct Node {
    seg: Seg,
    next: u32,
}

/// The node table, in fixed chunks that never move once allocated: an io_uring send may point into an
/// inline segment's bytes while the table grows (a `Vec<Node>` would reallocate and leave the kernel
/// reading freed memory).
#[derive(Debug, Default)]
struct Nodes {
    chunks: Vec<Box<[Node; NODE_CHUNK]>>,
    len: u32,
}

const NODE_CHUNK: usize = 256;

impl Nodes {
    fn push(&mut self, n: Node) -> u32 {
        let i = self.len;
        let (c, k) = (i as usize / NODE_CHUNK, i as usize % NODE_CHUNK);
        if c == self.chunks.len() {
            self.chunks.push(Box::new(
                [Node {
                    seg: Seg::Static(&[]),
                    next: NIL,
                }; NODE_CHUNK],
            ));
        }
        self.chunks[c][k] = n;
        self.len += 1;
        i
    }
}

impl std::ops::Index<u32> for Nodes {
    type Output = Node;
    fn index(&self, i: u32) -> &Node {
        &self.chunks[i as usize / NODE_CHUNK][i as usize % NODE_CHUNK]
    }
}

impl std::ops::IndexMut<u32> for Nodes {
    fn index_mut(&mut self, i: u32) -> &mut Node {
        &mut self.chunks[i as usize / NODE_CHUNK][i as usize % NODE_CHUNK]
    }
}

/// One connection's queue: 8 bytes inside `Conn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    head: u32,
    tail: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            head: NIL,
            tail: NIL,
        }
    }
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

/// What a queue operation released, for the owner's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// A receive buffer whose last reference went: give it back to the pool.
    pub buffer: Option<u16>,
    /// A generated slot went back to the shard's free list.
    pub slot: bool,
}

/// The per-shard table behind every queue, the reference counts of the receive buffers, and the
/// generated slots.
#[derive(Debug)]
pub struct Out {
    nodes: Nodes,
    free_node: u32,
    refs: Box<[u16]>,
    buffers_held: u32,
    /// Boxed one by one: an io_uring send may point into a slot while the vector grows, so a slot's
    /// bytes must never move.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<[u8; GEN_SLOT]>>,
    slot_refs: Vec<u32>,
    slot_fill: Vec<u32>,
    free_slots: Vec<u32>,
}

impl Out {
    /// A table for a pool of `buffers` receive buffers.
    pub fn new(buffers: usize) -> Out {
        Out {
            nodes: Nodes::default(),
            free_node: NIL,
            refs: vec![0; buffers].into_boxed_slice(),
            buffers_held: 0,
            slots: Vec::new(),
            slot_refs: Vec::new(),
            slot_fill: Vec::new(),
            free_slots: Vec::new(),
        }
    }

    /// Receive buffers referenced by some queue (or a held input).
    pub fn buffers_held(&self) -> u32 {
        self.buffers_held
    }

    /// Generated slots allocated so far (each [`GEN_SLOT`] bytes; kept for reuse).
    pub fn slots_allocated(&self) -> usize {
        self.slots.len()
    }

    /// Queue nodes allocated so far (each [`NODE_BYTES`]; kept for reuse).
    pub fn nodes_allocated(&self) -> usize {
        self.nodes.len as usize
    }

    /// Generated slots in use.
    pub fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// References to buffer `bid`.
    pub fn refs(&self, bid: u16) -> u16 {
        self.refs[bid as usize]
    }

    /// Takes a reference to buffer `bid`; `true` if it is the first one.
    pub fn ref_buffer(&mut self, bid: u16) -> bool {
        let r = &mut self.refs[bid as usize];
        *r += 1;
        if *r == 1 {
            self.buffers_held += 1;
            true
        } else {
            false
        }
    }

    /// Drops a reference to buffer `bid`; `true` if it was the last one (the caller recycles it).
    pub fn unref_buffer(&mut self, bid: u16) -> bool {
        let r = &mut self.refs[bid as usize];
        debug_assert!(*r > 0, "buffer {bid} unreferenced twice");
        *r -= 1;
        if *r == 0 {
            self.buffers_held -= 1;
            true
        } else {
            false
        }
    }

    fn node(&mut self, seg: Seg) -> u32 {
        let n = Node { seg, next: NIL };
        if self.free_node != NIL {
            let i = self.free_node;
            self.free_node = self.nodes[i].next;
            self.nodes[i] = n;
            i
        } else {
            self.nodes.push(n)
        }
    }

    fn link(&mut self, q: &mut Queue, i: u32) {
        if q.tail == NIL {
            q.head = i;
        } else {
            self.nodes[q.tail].next = i;
        }
        q.tail = i;
    }

    /// Appends `seg` (whose buffer or slot reference the caller already took).
    pub fn push(&mut self, q: &mut Queue, seg: Seg) {
        if seg.is_empty() {
            return;
        }
        // Contiguous with the tail? Extend it instead (a buffer echoed in pieces, say).
        if q.tail != NIL {
            let tail = &mut self.nodes[q.tail].seg;
            if let (
                Seg::Buf { bid, off, len },
                Seg::Buf {
                    bid: b2,
                    off: o2,
                    len: l2,
                },
            ) = (tail, seg)
            {
                if *bid == b2 && *off + *len == o2 {
                    *len += l2;
                    self.unref_buffer(b2);
                    return;
                }
            }
        }
        let i = self.node(seg);
        self.link(q, i);
    }

    /// Puts the segments of `front` before those of `q`, in order; `front` is left empty.
    pub fn prepend(&mut self, q: &mut Queue, front: &mut Queue) {
        if front.is_empty() {
            return;
        }
        if !q.is_empty() {
            self.nodes[front.tail].next = q.head;
            q.head = front.head;
        } else {
            *q = *front;
        }
        *front = Queue::default();
    }

    /// Appends a copy of `bytes`: inline when tiny, else into the queue's current generated slot when it
    /// has room, else into new slots. Returns how many new slots were taken (the caller counts them:
    /// each is released on its own). More than one when `bytes` is longer than a slot.
    pub fn push_copy(&mut self, q: &mut Queue, bytes: &[u8]) -> u16 {
        let mut rest = bytes;
        let mut took = 0;
        if rest.len() <= INLINE && !self.tail_slot_has_room(q, rest.len()) {
            let mut b = [0u8; INLINE];
            b[..rest.len()].copy_from_slice(rest);
            self.push(
                q,
                Seg::Inline {
                    len: rest.len() as u8,
                    bytes: b,
                },
            );
            return 0;
        }
        while !rest.is_empty() {
            if let Some((slot, at, room)) = self.tail_slot(q) {
                let k = room.min(rest.len());
                self.slots[slot as usize][at..at + k].copy_from_slice(&rest[..k]);
                self.slot_fill[slot as usize] += k as u32;
                if let Seg::Gen { len, .. } = &mut self.nodes[q.tail].seg {
                    *len += k as u32;
                }
                rest = &rest[k..];
                continue;
            }
            let slot = self.take_slot();
            took += 1;
            let k = GEN_SLOT.min(rest.len());
            self.slots[slot as usize][..k].copy_from_slice(&rest[..k]);
            self.slot_fill[slot as usize] = k as u32;
            self.slot_refs[slot as usize] = 1;
            let i = self.node(Seg::Gen {
                slot,
                off: 0,
                len: k as u32,
            });
            self.link(q, i);
            rest = &rest[k..];
        }
        took
    }

    fn tail_slot(&self, q: &Queue) -> Option<(u32, usize, usize)> {
        if q.tail == NIL {
            return None;
        }
        match self.nodes[q.tail].seg {
            Seg::Gen { slot, off, len } if self.slot_fill[slot as usize] == off + len => {
                let at = (off + len) as usize;
                (at < GEN_SLOT).then_some((slot, at, GEN_SLOT - at))
            }
            _ => None,
        }
    }

    fn tail_slot_has_room(&self, q: &Queue, n: usize) -> bool {
        self.tail_slot(q).is_some_and(|(_, _, room)| room >= n)
    }

    fn take_slot(&mut self) -> u32 {
        if let Some(s) = self.free_slots.pop() {
            return s;
        }
        self.slots.push(Box::new([0; GEN_SLOT]));
        self.slot_refs.push(0);
        self.slot_fill.push(0);
        (self.slots.len() - 1) as u32
    }

    /// The next bytes to send.
    pub fn front(&self, q: &Queue) -> Option<Front<'_>> {
        if q.head == NIL {
            return None;
        }
        let n = &self.nodes[q.head];
        Some(match &n.seg {
            Seg::Buf { bid, off, len } => Front::Buf {
                bid: *bid,
                off: *off,
                len: *len,
            },
            Seg::Static(b) => Front::Bytes(b),
            Seg::Inline { len, bytes } => Front::Bytes(&bytes[..*len as usize]),
            Seg::Gen { slot, off, len } => {
                Front::Bytes(&self.slots[*slot as usize][*off as usize..(*off + *len) as usize])
            }
        })
    }

    /// Records that `n` bytes of the front were sent (`n` ≤ the front's length). Returns what that
    /// released; at most one thing, since `n` never spans segments.
    pub fn consume(&mut self, q: &mut Queue, n: usize) -> Released {
        debug_assert!(q.head != NIL);
        let node = &mut self.nodes[q.head];
        debug_assert!(n <= node.seg.len());
        if n < node.seg.len() {
            node.seg.advance(n);
            return Released::default();
        }
        self.pop(q)
    }

    /// Removes the front segment, sent or not, and releases what it referenced.
    pub fn pop(&mut self, q: &mut Queue) -> Released {
        let i = q.head;
        debug_assert!(i != NIL);
        let Node { seg, next } = self.nodes[i];
        q.head = next;
        if next == NIL {
            q.tail = NIL;
        }
        self.nodes[i].next = self.free_node;
        self.free_node = i;
        let mut r = Released::default();
        match seg {
            Seg::Buf { bid, .. } => {
                if self.unref_buffer(bid) {
                    r.buffer = Some(bid);
                }
            }
            Seg::Gen { slot, .. } => {
                let refs = &mut self.slot_refs[slot as usize];
                *refs -= 1;
                if *refs == 0 {
                    self.slot_fill[slot as usize] = 0;
                    self.free_slots.push(slot);
                    r.slot = true;
                }
            }
            Seg::Static(_) | Seg::Inline { .. } => {}
        }
        r
    }

    /// Bytes queued in `q` (tests and debugging; walks the queue).
    pub fn bytes_total(&self, q: &Queue) -> usize {
        let mut n = 0;
        let mut i = q.head;
        while i != NIL {
            n += self.nodes[i].seg.len();
            i = self.nodes[i].next;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut Out, q: &mut Queue, mem: &[Vec<u8>]) -> (Vec<u8>, Vec<u16>, usize) {
        let mut bytes = Vec::new();
        let mut recycled = Vec::new();
        let mut slots = 0;
        while let Some(f) = out.front(q) {
            let chunk = match f {
                Front::Buf { bid, off, len } => {
                    mem[bid as usize][off as usize..(off + len) as usize].to_vec()
                }
                Front::Bytes(b) => b.to_vec(),
            };
            // Send in two halves to exercise partial sends.
            let half = chunk.len().div_ceil(2);
            bytes.extend_from_slice(&chunk[..half]);
            let r = out.consume(q, half);
            if half < chunk.len() {
                assert_eq!(r, Released::default());
                bytes.extend_from_slice(&chunk[half..]);
                let r = out.consume(q, chunk.len() - half);
                recycled.extend(r.buffer);
                slots += r.slot as usize;
            } else {
                recycled.extend(r.buffer);
                slots += r.slot as usize;
            }
        }
        (bytes, recycled, slots)
    }

    #[test]
    fn mixed_segments_come_out_in_order_and_release_once() {
        let mem = vec![b"hello world".to_vec(), b"0123456789".to_vec()];
        let mut out = Out::new(2);
        let mut q = Queue::default();
        assert!(out.ref_buffer(0));
        out.push(
            &mut q,
            Seg::Buf {
                bid: 0,
                off: 0,
                len: 5,
            },
        );
        out.push(&mut q, Seg::Static(b" static "));
        out.push_copy(&mut q, b"[in]");
        assert!(!out.ref_buffer(0));
        out.push(
            &mut q,
            Seg::Buf {
                bid: 0,
                off: 6,
                len: 5,
            },
        );
        let big = vec![b'g'; 3000];
        assert_eq!(out.push_copy(&mut q, &big), 2);
        assert!(out.ref_buffer(1));
        out.push(
            &mut q,
            Seg::Buf {
                bid: 1,
                off: 2,
                len: 3,
            },
        );
        assert_eq!(out.buffers_held(), 2);
        let total = out.bytes_total(&q);
        let (bytes, recycled, slots) = drain(&mut out, &mut q, &mem);
        let mut want = b"hello static [in]world".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"234");
        assert_eq!(bytes, want);
        assert_eq!(total, want.len());
        assert_eq!(recycled, vec![0, 1]);
        assert_eq!(slots, 2, "3000 bytes took two 2 KiB slots");
        assert_eq!(out.buffers_held(), 0);
        assert_eq!(out.slots_in_use(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn contiguous_buffer_ranges_merge_and_copies_share_a_slot() {
        let mut out = Out::new(1);
        let mut q = Queue::default();
        out.ref_buffer(0);
        out.push(
            &mut q,
            Seg::Buf {
                bid: 0,
                off: 0,
                len: 3,
            },
        );
        out.ref_buffer(0);
        out.push(
            &mut q,
            Seg::Buf {
                bid: 0,
                off: 3,
                len: 4,
            },
        );
        assert_eq!(out.refs(0), 1, "merged into one segment");
        assert_eq!(
            out.front(&q),
            Some(Front::Buf {
                bid: 0,
                off: 0,
                len: 7
            })
        );
        assert_eq!(out.pop(&mut q).buffer, Some(0));
        let head = [b'h'; 100];
        assert_eq!(out.push_copy(&mut q, &head), 1);
        assert_eq!(out.push_copy(&mut q, &head), 0, "appended to the same slot");
        assert!(
            out.push_copy(&mut q, b"tiny") == 0,
            "tiny copies join the open slot"
        );
        assert_eq!(
            out.front(&q).map(|f| match f {
                Front::Bytes(b) => b.len(),
                Front::Buf { .. } => 0,
            }),
            Some(204)
        );
        assert!(out.pop(&mut q).slot);
        assert_eq!(out.slots_allocated(), 1);
    }
}
