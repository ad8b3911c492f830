//! Ring setup: SINGLE_ISSUER | DEFER_TASKRUN (completions run only when the shard asks for them, no
//! inter-processor interrupts), falling back with a logged reason on kernels that refuse it; CQ sized 8×
//! the SQ so that multishot bursts do not overflow (and the kernel's NODROP keeps overflowed CQEs anyway).
//! TASKRUN_FLAG: the kernel flags pending deferred work in the SQ ring, so a thread that drives several
//! rings ([`crate::group`]) sees without a system call whether a ring that signalled needs a turn.

use std::io;

use io_uring::IoUring;
use tracing::{debug, warn};

/// Submission queue entries per shard.
pub const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries per shard (8 × SQ).
pub const CQ_ENTRIES: u32 = SQ_ENTRIES * 8;

/// Builds a shard's ring; returns it and a name for the setup that worked.
/// A named ring setup: what to ask the kernel for.
type Setup = (&'static str, fn(&mut io_uring::Builder));

pub fn build(shard: usize) -> io::Result<(IoUring, &'static str)> {
    let attempts: [Setup; 3] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (name, flags) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        flags(&mut b);
        match b.build(SQ_ENTRIES) {
            Ok(ring) => {
                if last.is_some() {
                    warn!("shard {shard}: io_uring set up as {name} (richer setups were refused)");
                } else {
                    debug!("shard {shard}: io_uring set up as {name}");
                }
                return Ok((ring, name));
            }
            // EINVAL: a flag this kernel does not know; try the next, simpler setup.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                debug!("shard {shard}: io_uring setup {name} refused: {e}");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

/// Submits what is queued and waits up to `timeout` for at least one completion. A timeout (ETIME),
/// a signal (EINTR) or a full completion queue (EBUSY: reap first) are normal outcomes, not errors.
pub fn submit_and_wait(
    submitter: &io_uring::Submitter<'_>,
    timeout: std::time::Duration,
) -> io::Result<()> {
    submit_and_wait_batch(submitter, timeout, None)
}

/// How a shard batches its waits: wait for up to `want` completions, but no longer than `min_wait`
/// once one has arrived (IORING_ENTER_EXT_ARG min-wait, kernel 6.12+).
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    pub want: usize,
    pub min_wait_usec: u32,
}

/// [`submit_and_wait`], batching completions as `batch` says (`None`: return on the first).
pub fn submit_and_wait_batch(
    submitter: &io_uring::Submitter<'_>,
    timeout: std::time::Duration,
    batch: Option<Batch>,
) -> io::Result<()> {
    let ts = io_uring::types::Timespec::from(timeout);
    let mut args = io_uring::types::SubmitArgs::new().timespec(&ts);
    let mut want = 1;
    if let Some(b) = batch {
        args = args.min_wait_usec(b.min_wait_usec);
        want = b.want;
    }
    match submitter.submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The submission side of a shard: SQ plus submitter, with "SQ full ⇒ submit and retry".
pub struct Io<'a> {
    pub sq: io_uring::SubmissionQueue<'a>,
    pub sub: io_uring::Submitter<'a>,
    /// SQEs handed to the kernel so far.
    pub submits: u64,
}

impl Io<'_> {
    pub fn push(&mut self, e: io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE a shard builds points only at memory that outlives the operation: the
            // buffer ring's memory (owned by the shard, dropped after the ring), the machine's generated
            // slots and static bytes (stable until the connection's slot is released, which waits for
            // every operation to complete), the boxed setsockopt and SO_LINGER values, or nothing.
            if unsafe { self.sq.push(&e) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    pub fn submit(&mut self) -> io::Result<()> {
        self.sq.sync();
        self.submits += self.sq.len() as u64;
        match self.sub.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        self.sq.sync();
        Ok(())
    }
}

/// Runs `$body` with `$f` bound to the connection's descriptor: a fixed-file index (direct descriptors)
/// or a plain fd.
#[macro_export]
macro_rules! with_fd {
    ($direct:expr, $idx:expr, |$f:ident| $body:expr) => {
        if $direct {
            let $f = io_uring::types::Fixed($idx);
            $body
        } else {
            let $f = io_uring::types::Fd($idx as i32);
            $body
        }
    };
}

/// Whole seconds since the Unix epoch by the coarse wall clock: `CLOCK_REALTIME_COARSE` is read from
/// the vDSO (no system call, a few ns) and lags `CLOCK_REALTIME` by at most one kernel tick (≤ 4 ms).
/// Read once per loop turn for the `Date` header. `SystemTime` if the coarse clock is unavailable.
pub fn wall_second() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        return u64::try_from(ts.tv_sec).unwrap_or(0);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
