//! Process-wide gauges computed by the exporter thread on each scrape: resident memory from
//! /proc/self/statm and resident bytes per open connection.

use std::fs;
use std::io;

use metrics::gauge;

use crate::names::{LOAD_RESIDENT_MEMORY, RESIDENT_MEMORY, RESIDENT_PER_CONNECTION};

/// Resident set size of this process in bytes.
pub fn resident_bytes() -> io::Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm")?;
    let pages = parse_statm_resident(&statm).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/self/statm: {statm:?}"),
        )
    })?;
    Ok(pages * page_size())
}

fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Resident bytes divided by open connections; NaN when there is none (undefined, not zero).
pub(crate) fn per_connection(resident: u64, active: u64) -> f64 {
    if active == 0 {
        f64::NAN
    } else {
        resident as f64 / active as f64
    }
}

/// Sets the two process gauges. A failed read leaves the previous values (and is logged once).
pub(crate) fn update(active: u64) {
    match resident_bytes() {
        Ok(rss) => {
            gauge!(RESIDENT_MEMORY).set(rss as f64);
            gauge!(RESIDENT_PER_CONNECTION).set(per_connection(rss, active));
        }
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!("cannot read resident memory: {e}"));
        }
    }
}

/// The load generator's resident memory gauge (its per-connection cost is on the dashboard, from the
/// open connections).
pub(crate) fn update_load() {
    if let Ok(rss) = resident_bytes() {
        gauge!(LOAD_RESIDENT_MEMORY).set(rss as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statm() {
        assert_eq!(parse_statm_resident("1234 567 89 1 0 100 0\n"), Some(567));
        assert_eq!(parse_statm_resident("1234"), None);
        assert_eq!(parse_statm_resident(""), None);
    }

    #[test]
    fn reads_own_rss() {
        assert!(resident_bytes().unwrap() > 0);
    }

    #[test]
    fn per_connection_is_nan_without_connections() {
        assert!(per_connection(1000, 0).is_nan());
        assert_eq!(per_connection(1000, 4), 250.0);
    }
}
