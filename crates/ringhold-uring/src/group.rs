//! Several rings on one thread.
//!
//! A ring's fixed-file table holds at most `RLIMIT_NOFILE` slots, so where that limit is low (20,000
//! here) a million direct descriptors need fifty rings or more. A thread per ring would put fifty
//! threads on a few cores, and on a sparse, mostly idle load nearly every completion would then cost a
//! context switch (perf: `finish_task_switch` 15–30 % of a 64-thread server's samples). Instead one
//! thread drives several rings: each ring signals its own eventfd (`IORING_REGISTER_EVENTFD`, which
//! the kernel signals both for posted completions and, under DEFER_TASKRUN, for deferred work that
//! waits for the thread), one epoll set waits on all of them edge-triggered, and the thread then
//! enters only the rings that woke it (`IORING_ENTER_GETEVENTS` with no minimum: submit, run the
//! deferred work, reap, never block).
//!
//! The eventfds are never read: an edge-triggered epoll item reports every write, and the kernel's
//! counter cannot overflow in practice (2^64 − 2 signals).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Waits for any of a thread's rings.
pub struct Waiter {
    epoll: OwnedFd,
    /// One eventfd per ring, in the order they were added; the epoll item's data is the index.
    eventfds: Vec<OwnedFd>,
    events: Vec<libc::epoll_event>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Waiter {
    pub fn new() -> io::Result<Waiter> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by epoll_create1 and nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waiter {
            epoll,
            eventfds: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Registers a new eventfd with `ring` and adds it to the set; returns the ring's index.
    pub fn add(&mut self, ring: &io_uring::Submitter<'_>) -> io::Result<usize> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.register_eventfd(efd.as_raw_fd())?;
        let index = self.eventfds.len();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: index as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; both fds are open.
        cvt(unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                efd.as_raw_fd(),
                &mut ev,
            )
        })?;
        self.eventfds.push(efd);
        self.events.push(libc::epoll_event { events: 0, u64: 0 });
        Ok(index)
    }

    /// Waits up to `timeout` (rounded up to a millisecond; zero polls) for any ring to signal, and
    /// sets `ready[i]` for each ring `i` that did. A signal interrupting the wait is not an error.
    pub fn wait(&mut self, timeout: Duration, ready: &mut [bool]) -> io::Result<usize> {
        let ms = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: `events` has `events.len()` initialised entries for the kernel to overwrite.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len().max(1) as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for ev in &self.events[..n as usize] {
            if let Some(r) = ready.get_mut(ev.u64 as usize) {
                *r = true;
            }
        }
        Ok(n as usize)
    }
}

/// Deferred work one turn of a grouped ring runs at the most before it reaps (the kernel runs up to
/// this many items when asked for this many completions); a turn that reaped this many goes again
/// at once, because the kernel may have left work that no eventfd signal will announce.
pub const TURN_WANT: usize = 1024;

/// Submits what is queued, runs up to [`TURN_WANT`] items of the ring's deferred work and makes their
/// completions visible, without waiting: `io_uring_enter(to_submit, TURN_WANT, GETEVENTS | EXT_ARG)`
/// with a zero timeout (so ETIME is the usual answer). EINTR and EBUSY (reap first) are normal too.
pub fn enter_nowait(sub: &io_uring::Submitter<'_>) -> io::Result<()> {
    let ts = io_uring::types::Timespec::new();
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    match sub.submit_with_args(TURN_WANT, &args) {
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

/// Whether a ring that signalled has anything for a turn: deferred work (`IORING_SQ_TASKRUN`, with
/// `IORING_SETUP_TASKRUN_FLAG`), completions, unsubmitted entries or kept overflow. A ring signals
/// its eventfd also for the completions its own last turn posted; this check (no system call) keeps
/// those wake-ups from costing an `io_uring_enter`.
pub fn has_work(ring: &mut io_uring::IoUring) -> bool {
    let (_, sq, cq) = ring.split();
    sq.taskrun() || sq.cq_overflow() || !sq.is_empty() || !cq.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, IoUring};

    fn ring() -> IoUring {
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(8)
            .expect("io_uring")
    }

    /// A completion on either ring wakes the waiter and names that ring only; entering it without
    /// waiting makes the completion visible (DEFER_TASKRUN: the enter runs the deferred work).
    #[test]
    fn a_completion_wakes_the_waiter_for_its_own_ring() {
        let mut a = ring();
        let b = ring();
        let mut w = Waiter::new().unwrap();
        assert_eq!(w.add(&a.submitter()).unwrap(), 0);
        assert_eq!(w.add(&b.submitter()).unwrap(), 1);

        let mut ready = [false; 2];
        assert_eq!(w.wait(Duration::ZERO, &mut ready).unwrap(), 0);

        // A timeout op completes in the kernel later, through deferred work.
        let ts = io_uring::types::Timespec::new().nsec(20_000_000);
        let e = opcode::Timeout::new(&ts).build().user_data(7);
        // SAFETY: `ts` outlives the operation (we wait for its completion below).
        unsafe { a.submission().push(&e).unwrap() };
        a.submit().unwrap();
        let n = w.wait(Duration::from_secs(5), &mut ready).unwrap();
        assert_eq!(n, 1);
        assert_eq!(ready, [true, false]);
        assert!(
            has_work(&mut a),
            "a signalled ring with deferred work has work"
        );
        enter_nowait(&a.submitter()).unwrap();
        let got: Vec<u64> = a.completion().map(|c| c.user_data()).collect();
        assert_eq!(got, vec![7]);
        // Posting that completion signalled the eventfd once more: the waiter reports the ring again,
        // but it has nothing to do (the check `run_group` makes before it enters a ring).
        let mut ready = [false; 2];
        w.wait(Duration::from_millis(30), &mut ready).unwrap();
        assert!(!has_work(&mut a));
        // Edge-triggered and never read: nothing new, no wake-up.
        let mut ready = [false; 2];
        assert_eq!(w.wait(Duration::from_millis(30), &mut ready).unwrap(), 0);
    }
}
