//! The io_uring engine of ringhold.
//!
//! One ring per shard; a thread drives one shard or several ([`group`], `--threads`): multishot accept into the ring's fixed-file
//! table (direct descriptors: connections take no process fd), multishot receive with buffer select from
//! a provided buffer ring of small buffers, one echo send in flight per connection sent straight from the
//! receive buffer, and the buffer recycled the moment that send completes.
//!
//! Every rule of a connection's life (backpressure, rate limits, idle/stall/linger clocks, FIN, closes,
//! the protocol) is `ringhold_core::machine`'s: this crate feeds it completions as events and turns its
//! actions into SQEs.
//!
//! Files: [`ring`] (setup, fallbacks, the submission side), [`bufring`] (all buffer-ring `unsafe`),
//! [`token`] (the `user_data` layout), [`shard`] (the loop), [`group`] (several rings on a thread), `accept` (the listener), `conn`
//! (actions and completions of connections), `park` (quiet connections wait on a poll instead of an
//! armed receive), [`probe`] (start-up check).
//!
//! What it must not do: hold connection policy, allocate per message or per idle connection, keep a
//! timer per connection, block, or know which protocol runs.

mod accept;
pub mod bufring;
mod conn;
pub mod group;
mod park;
pub mod probe;
pub mod ring;
pub mod shard;
pub mod token;

pub use probe::probe;
pub use shard::{run_group, Shard};
