//! What the host says about itself: /proc/sys, /proc/meminfo, /proc/self/status and getrlimit.
//! Read once into [`Host`]; nothing here changes the system.

use std::fs;

use crate::rlimit;

/// A sysctl as it reads under /proc/sys, by its dotted name (`net.core.somaxconn`).
pub fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// A sysctl holding whitespace-separated numbers (`net.ipv4.tcp_mem`, `ip_local_port_range`).
pub fn sysctl_nums(name: &str) -> Option<Vec<u64>> {
    let s = sysctl(name)?;
    s.split_whitespace().map(|w| w.parse().ok()).collect()
}

pub fn sysctl_u64(name: &str) -> Option<u64> {
    sysctl_nums(name)?.first().copied()
}

pub fn sysctl_i64(name: &str) -> Option<i64> {
    sysctl(name)?.split_whitespace().next()?.parse().ok()
}

/// A `Key: value` line of a /proc file (`/proc/self/status`, `/proc/meminfo`).
fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Everything the checks look at, read once.
#[derive(Clone, Debug, Default)]
pub struct Host {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub memlock_soft: Option<u64>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    /// Files open system-wide now (first field of fs.file-nr).
    pub files_open: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub port_range: Option<(u64, u64)>,
    /// net.ipv4.tcp_mem in pages: low, pressure, high.
    pub tcp_mem: Option<Vec<u64>>,
    pub tcp_rmem: Option<Vec<u64>>,
    pub tcp_wmem: Option<Vec<u64>>,
    pub mem_available: Option<u64>,
    pub mem_total: Option<u64>,
    /// net.netfilter.nf_conntrack_max when the conntrack module is loaded.
    pub conntrack_max: Option<u64>,
    pub conntrack_count: Option<u64>,
    pub tcp_tw_reuse: Option<u64>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub io_uring_disabled: Option<u64>,
    pub io_uring_group: Option<i64>,
    /// The `Seccomp:` line of /proc/self/status: 0 off, 1 strict, 2 filter.
    pub seccomp: Option<u64>,
    pub seccomp_filters: Option<u64>,
    /// Effective capabilities (CapEff), when readable.
    pub cap_eff: Option<u64>,
    pub page_size: u64,
    pub cores: usize,
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;

impl Host {
    pub fn read() -> Host {
        let (nofile_soft, nofile_hard) = match rlimit::nofile() {
            Ok(n) => (n.soft, n.hard),
            Err(_) => (0, 0),
        };
        let status = |k: &str| proc_field("/proc/self/status", k);
        let meminfo_bytes = |k: &str| {
            let v = proc_field("/proc/meminfo", k)?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some(kb * 1024)
        };
        let port_range = sysctl_nums("net.ipv4.ip_local_port_range").and_then(|v| match v[..] {
            [lo, hi] if lo <= hi => Some((lo, hi)),
            _ => None,
        });
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Host {
            nofile_soft,
            nofile_hard,
            memlock_soft: memlock(),
            nr_open: sysctl_u64("fs.nr_open"),
            file_max: sysctl_u64("fs.file-max"),
            files_open: sysctl_u64("fs.file-nr"),
            somaxconn: sysctl_u64("net.core.somaxconn"),
            tcp_max_syn_backlog: sysctl_u64("net.ipv4.tcp_max_syn_backlog"),
            port_range,
            tcp_mem: sysctl_nums("net.ipv4.tcp_mem").filter(|v| v.len() == 3),
            tcp_rmem: sysctl_nums("net.ipv4.tcp_rmem").filter(|v| v.len() == 3),
            tcp_wmem: sysctl_nums("net.ipv4.tcp_wmem").filter(|v| v.len() == 3),
            mem_available: meminfo_bytes("MemAvailable"),
            mem_total: meminfo_bytes("MemTotal"),
            conntrack_max: sysctl_u64("net.netfilter.nf_conntrack_max"),
            conntrack_count: sysctl_u64("net.netfilter.nf_conntrack_count"),
            tcp_tw_reuse: sysctl_u64("net.ipv4.tcp_tw_reuse"),
            tcp_max_tw_buckets: sysctl_u64("net.ipv4.tcp_max_tw_buckets"),
            io_uring_disabled: sysctl_u64("kernel.io_uring_disabled"),
            io_uring_group: sysctl_i64("kernel.io_uring_group"),
            seccomp: status("Seccomp").and_then(|v| v.parse().ok()),
            seccomp_filters: status("Seccomp_filters").and_then(|v| v.parse().ok()),
            cap_eff: status("CapEff").and_then(|v| u64::from_str_radix(&v, 16).ok()),
            page_size: if page > 0 { page as u64 } else { 4096 },
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    /// Whether the process has a capability; unknown counts as not.
    pub fn has_cap(&self, cap: u32) -> bool {
        self.cap_eff.is_some_and(|c| c & (1 << cap) != 0)
    }

    /// The soft RLIMIT_NOFILE `serve` runs with: it raises the soft limit to the hard one at start.
    pub fn serve_nofile(&self) -> u64 {
        self.nofile_hard.max(self.nofile_soft)
    }
}

fn memlock() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Some(r.rlim_cur as u64)
}
