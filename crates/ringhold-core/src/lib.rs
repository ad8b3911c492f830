//! Sans-IO heart of ringhold.
//!
//! Everything both engines (`ringhold-uring`, `ringhold-epoll`) share and that can be tested without a
//! socket: the per-connection state ([`conn::Conn`], a few dozen bytes), the buffer pool and the
//! per-connection chains of in-flight buffers ([`pool`]), the per-shard slot slab with generations
//! ([`slab`]), the coarse idle-timeout wheel ([`wheel`]), token buckets ([`bucket`]), shard-wide
//! counters ([`counters`]), the process-wide admission state ([`shared`]), the engine configuration
//! ([`config`]), the human-unit parsers used by the CLI ([`units`]) and the sans-IO protocols behind
//! the [`protocol`] seam ([`ws`]: the WebSocket echo).
//!
//! What this crate must not do: open sockets, make syscalls, spawn threads, allocate per message or per
//! idle connection, or know which engine runs it.

pub mod bucket;
pub mod config;
pub mod conn;
pub mod counters;
pub mod engine;
pub mod pool;
pub mod protocol;
pub mod shared;
pub mod slab;
pub mod units;
pub mod wheel;
pub mod ws;

pub use config::{EngineConfig, Keepalive};
pub use conn::Conn;
pub use counters::{CloseReason, RejectReason, ShardCounters};
pub use engine::{Flush, ShardSpec};
pub use shared::Shared;
