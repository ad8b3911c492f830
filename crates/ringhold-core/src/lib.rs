//! Sans-IO heart of ringhold.
//!
//! Everything both engines (`ringhold-uring`, `ringhold-epoll`) share and that can be tested without a
//! socket: the connection machine that holds every rule of a connection's life ([`machine`]: events
//! in, actions out, output queues), the per-connection state ([`conn::Conn`], at most 64 bytes), the
//! protocol seam ([`protocol`]), the per-shard slot slab with generations ([`slab`]), the coarse timer
//! wheel ([`wheel`]), token buckets ([`bucket`]), shard-wide counters ([`counters`]), the sans-IO
//! protocols behind the seam ([`http`]: the HTTP/1.1 of `--protocol http`; [`ws`]: the WebSocket echo),
//! the process-wide admission state ([`shared`]), the engine configuration ([`config`]) and the
//! human-unit parsers used by the CLI ([`units`]).
//!
//! What this crate must not do: open sockets, make syscalls, spawn threads, allocate per message or per
//! idle connection, or know which engine runs it.

pub mod bucket;
pub mod config;
pub mod conn;
pub mod counters;
pub mod engine;
pub mod http;
pub mod machine;
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
pub use machine::{Action, Id, Machine, Pool};
pub use shared::Shared;
