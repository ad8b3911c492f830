//! The shard interface both engines implement: `Shard::new(ShardSpec)` on the shard's own thread (ring
//! or epoll setup; errors here abort start-up with a clear message), then `Shard::run()` until shutdown.

use std::net::TcpListener;
use std::sync::Arc;

use crate::{EngineConfig, ShardCounters, Shared};

/// Called by a shard about once a second with its counters (the binary points it at `ringhold-metrics`).
pub type Flush = Box<dyn FnMut(&ShardCounters) + Send>;

/// What the binary hands each shard.
pub struct ShardSpec {
    /// Shard number, from 0 (the `shard` metric label).
    pub id: usize,
    /// This shard's own SO_REUSEPORT listener, non-blocking, already listening.
    pub listener: TcpListener,
    pub config: Arc<EngineConfig>,
    pub shared: Arc<Shared>,
    pub flush: Flush,
}
