//! epoll engine of ringhold: the same shard interface, connection core and counters as the io_uring
//! engine (see the engine contract in `ringhold-core`), on edge-triggered epoll, so that `--engine`
//! compares engines and nothing else.
//!
//! Files: `sys` (every syscall, `syscall!` returning `io::Result`, `OwnedFd`s), `buffers` (the
//! shard's receive buffers and free list), `accept` (accept loop, spare-fd trick, accept rate),
//! `conn` (sending and reading for one connection), `timers` (clock, throttle heap, poll timeout),
//! `shard` (the loop).
//!
//! What it must not do: keep per-connection state beyond the core's `Conn`, allocate per message or per
//! idle connection, block, or spin while waiting for buffers, descriptors or rate limits.

mod accept;
mod buffers;
mod conn;
mod shard;
mod sys;
mod timers;

pub use shard::Shard;
