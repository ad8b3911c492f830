//! Kernel-wide TCP memory, sampled during the run: when sockets of both ends together pass
//! net.ipv4.tcp_mem's pressure threshold, TCP shrinks buffers and drops data, and heartbeats time out
//! for reasons no per-connection error shows. The summary then says so.

/// net.ipv4.tcp_mem: (low, pressure, high) in pages.
pub fn tcp_mem_limits() -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Pages TCP sockets use now (the `mem` field of /proc/net/sockstat's TCP line).
pub fn tcp_mem_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The note for the summary when TCP memory reached the pressure threshold during the run.
pub fn pressure_note(peak_pages: Option<u64>) -> Option<String> {
    let (peak, (_, pressure, high)) = (peak_pages?, tcp_mem_limits()?);
    (peak >= pressure).then(|| {
        format!(
            "kernel TCP memory reached {peak} pages, at or above net.ipv4.tcp_mem's pressure threshold ({pressure}; \
             hard limit {high}): TCP shrinks buffers and drops data there, so echoes stall and time out. \
             Raise net.ipv4.tcp_mem (sysctl -w net.ipv4.tcp_mem='LOW PRESSURE HIGH', in pages)"
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_kernel() {
        // Every Linux has both files; the values are whatever this host has.
        let (lo, p, hi) = super::tcp_mem_limits().expect("tcp_mem");
        assert!(lo <= p && p <= hi);
        assert!(super::tcp_mem_pages().is_some());
    }
}
