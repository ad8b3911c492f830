//! The per-shard slot table. A connection's slot index is its descriptor: the fixed-file index the
//! kernel picked (io_uring direct descriptors) or its fd (plain fds, epoll). Both are small, dense and
//! unique while the connection is open, so the table needs no free list: it grows to the highest index
//! seen. Each slot keeps a generation that moves on when a new connection takes the slot, so a stale
//! completion or event is recognised and dropped.

use crate::conn::{flag, Conn};

/// Generations are 24 bits wide (see the io_uring `user_data` layout).
pub const GEN_MASK: u32 = 0x00FF_FFFF;

#[derive(Debug, Default)]
pub struct Slots {
    conns: Vec<Conn>,
    live: usize,
}

impl Slots {
    pub fn new() -> Slots {
        Slots::default()
    }

    /// Starts a connection in slot `idx`; returns its generation. `None` if the slot is still live
    /// (which would be a bug in the engine: it must not reuse a descriptor before freeing the slot).
    pub fn open(&mut self, idx: u32, stamp: u32) -> Option<u32> {
        let i = idx as usize;
        if i >= self.conns.len() {
            // Grow in steps so that a burst of accepts does not reallocate each time.
            let want = (i + 1).next_power_of_two().max(64);
            self.conns.resize(want, Conn::default());
        }
        let c = &mut self.conns[i];
        if c.is_live() {
            return None;
        }
        let gen = (c.gen + 1) & GEN_MASK;
        *c = Conn {
            gen,
            stamp,
            flags: flag::LIVE,
            ..Conn::default()
        };
        self.live += 1;
        Some(gen)
    }

    /// The live connection in `idx` if its generation is `gen`.
    pub fn get_mut(&mut self, idx: u32, gen: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(idx as usize)
            .filter(|c| c.is_live() && c.gen == gen)
    }

    pub fn get(&self, idx: u32, gen: u32) -> Option<&Conn> {
        self.conns
            .get(idx as usize)
            .filter(|c| c.is_live() && c.gen == gen)
    }

    /// The live connection in `idx`, whatever its generation.
    pub fn get_live(&self, idx: u32) -> Option<&Conn> {
        self.conns.get(idx as usize).filter(|c| c.is_live())
    }

    /// The live connection in `idx`, whatever its generation.
    pub fn live_mut(&mut self, idx: u32) -> Option<&mut Conn> {
        self.conns.get_mut(idx as usize).filter(|c| c.is_live())
    }

    /// Frees slot `idx` (its generation is kept, so the next owner gets a new one).
    pub fn free(&mut self, idx: u32) {
        if let Some(c) = self.conns.get_mut(idx as usize) {
            if c.is_live() {
                c.flags = 0;
                c.io = 0;
                c.inflight = 0;
                self.live -= 1;
            }
        }
    }

    /// Slots `0 .. slot_count()` exist (live or not).
    pub fn slot_count(&self) -> usize {
        self.conns.len()
    }

    /// Open connections.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Indices of live connections (for the shutdown drain; not a hot path).
    pub fn live_indices(&self) -> Vec<u32> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_live())
            .map(|(i, _)| i as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_move_on() {
        let mut s = Slots::new();
        let g1 = s.open(5, 0).unwrap();
        assert!(s.open(5, 0).is_none(), "live slot cannot be reopened");
        assert!(s.get_mut(5, g1).is_some());
        s.free(5);
        assert!(s.get_mut(5, g1).is_none());
        let g2 = s.open(5, 0).unwrap();
        assert_ne!(g1, g2);
        assert!(s.get_mut(5, g1).is_none(), "stale generation is dropped");
        assert!(s.get(5, g2).is_some());
        assert_eq!(s.live(), 1);
        assert_eq!(s.live_indices(), vec![5]);
        s.free(5);
        s.free(5);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn generation_wraps_in_24_bits() {
        let mut s = Slots::new();
        for _ in 0..3 {
            s.open(0, 0).unwrap();
            s.free(0);
        }
        s.conns[0].gen = GEN_MASK;
        assert_eq!(s.open(0, 0), Some(0));
    }
}
