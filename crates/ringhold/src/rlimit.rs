//! RLIMIT_NOFILE: read it, and raise the soft limit to the hard one at start.

use std::io;

#[derive(Clone, Copy, Debug)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

pub fn nofile() -> io::Result<NoFile> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NoFile {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// Raises the soft limit to the hard limit. Returns (before, after).
pub fn raise_nofile() -> io::Result<(NoFile, NoFile)> {
    let before = nofile()?;
    if before.soft < before.hard {
        let r = libc::rlimit {
            rlim_cur: before.hard as _,
            rlim_max: before.hard as _,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, nofile()?))
}
