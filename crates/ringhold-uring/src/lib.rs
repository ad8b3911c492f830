//! io_uring engine of ringhold (stub: being written).

use std::io;

use ringhold_core::ShardSpec;

pub struct Shard {
    _spec: ShardSpec,
}

impl Shard {
    pub fn new(spec: ShardSpec) -> io::Result<Shard> {
        Ok(Shard { _spec: spec })
    }

    pub fn run(self) -> io::Result<()> {
        Err(io::Error::other("the io_uring engine is not written yet"))
    }
}

/// Checks that io_uring can be used with what ringhold needs; the error names the cause.
pub fn probe() -> Result<(), String> {
    Ok(())
}
