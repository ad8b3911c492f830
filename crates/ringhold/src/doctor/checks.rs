//! The checks: each compares what the host has with what N connections need and says how to fix it.

use std::io;

use ringhold_core::units::fmt_bytes;
use serde::Serialize;

use super::capacity::{Plan, FD_RESERVE, IORING_MAX_FIXED_FILES, KERNEL_BYTES_PER_SOCKET};
use super::sys::{Host, CAP_SYS_ADMIN, CAP_SYS_RESOURCE};
use super::uring::UringReport;
use crate::cli::Engine;

/// The most shards `serve --shards` accepts.
pub const MAX_SHARDS: u64 = 1024;
/// The file `fix` lines append to.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-ringhold.conf";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable identifier (`rlimit.nofile`, `io_uring.fixed_files`, `net.ephemeral_ports`, …).
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    pub current: String,
    pub needed: String,
    /// Exact commands or config lines, one per entry; empty when there is nothing to do.
    pub fix: Vec<String>,
    /// Why it matters or how the value was found; may be empty.
    pub note: String,
}

impl Check {
    fn new(id: &'static str, title: &'static str) -> Check {
        Check {
            id,
            title,
            status: Status::Ok,
            current: String::new(),
            needed: String::new(),
            fix: Vec::new(),
            note: String::new(),
        }
    }
}

/// What the checks are asked about.
pub struct Ctx<'a> {
    pub host: &'a Host,
    pub plan: &'a Plan,
    pub connections: u64,
    /// Source addresses of a load generator on this host (0: it runs elsewhere).
    pub sources: u64,
    pub targets: u64,
    pub backlog: u64,
    pub kernel: (u32, u32),
    /// The port `serve` listens on.
    pub port: u16,
}

impl Ctx<'_> {
    fn loadgen_here(&self) -> bool {
        self.sources > 0
    }
}

pub fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 0 {
        u64::MAX
    } else {
        a.div_ceil(b)
    }
}

/// `sysctl -w` now, and the line that keeps it across reboots.
pub fn sysctl_fix(key: &str, value: &str) -> Vec<String> {
    let now = if value.contains(' ') {
        format!("sysctl -w {key}=\"{value}\"")
    } else {
        format!("sysctl -w {key}={value}")
    };
    vec![now, format!("echo '{key} = {value}' >> {SYSCTL_FILE}")]
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
}

fn nums(v: &Option<Vec<u64>>) -> String {
    match v {
        Some(v) => v
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        None => "unknown".into(),
    }
}

/// How to raise RLIMIT_NOFILE to `to` where ringhold starts.
fn nofile_fix(host: &Host, to: u64) -> Vec<String> {
    let mut fix = vec![
        format!("LimitNOFILE={to}   # systemd unit, [Service] (deploy/systemd/ringhold.service)"),
        format!("ulimit -n {to}   # in the shell that starts ringhold (as root)"),
    ];
    if host.nr_open.is_some_and(|n| n < to) {
        fix.extend(sysctl_fix("fs.nr_open", &to.to_string()));
    }
    fix
}

fn cap_note(host: &Host) -> String {
    if host.cap_eff.is_some() && !host.has_cap(CAP_SYS_RESOURCE) {
        "this process lacks CAP_SYS_RESOURCE, so its hard limit cannot be raised from inside (a container \
         or a restricted session): raise it where the process is started (systemd LimitNOFILE=, the container \
         runtime's nofile ulimit)"
            .into()
    } else {
        String::new()
    }
}

pub fn nofile(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new("rlimit.nofile", "RLIMIT_NOFILE (open files per process)");
    k.current = format!("soft {}, hard {}", h.nofile_soft, h.nofile_hard);
    let plain_need = c.connections + FD_RESERVE;
    if c.plan.direct {
        k.needed = format!(
            "{FD_RESERVE} fds for the server itself; connections use io_uring direct descriptors, not fds \
             (each shard's fixed-file table is capped by the soft limit: see io_uring.fixed_files)"
        );
        let slots = c.plan.table_slots(h);
        if c.plan.shards * slots < c.connections {
            let shards = div_ceil(c.connections, slots);
            k.status = Status::Warn;
            k.current = format!(
                "soft {}, hard {}: each fixed-file table ≤ {slots} slots, {} shards hold {}",
                h.nofile_soft,
                h.nofile_hard,
                c.plan.shards,
                c.plan.shards * slots
            );
            k.fix.push(format!(
                "ringhold serve --shards {shards}   # {shards} × {slots} direct descriptors; or raise the limit (see \
                 io_uring.fixed_files)"
            ));
        }
        if h.nofile_hard < plain_need {
            k.note = format!(
                "the plain-fd path (--engine epoll or --no-direct-descriptors) would need {plain_need} and hold \
                 only {}",
                h.serve_nofile().saturating_sub(FD_RESERVE)
            );
        }
    } else {
        k.needed = format!("{plain_need} (one fd per connection + {FD_RESERVE})");
        if h.serve_nofile() < plain_need {
            k.status = Status::Fail;
            k.fix = nofile_fix(h, plain_need);
            let slots = h.serve_nofile().min(IORING_MAX_FIXED_FILES);
            k.fix.push(format!(
                "or use io_uring direct descriptors, which need no process fds: ringhold serve --engine uring \
                 --shards {}   # {} × {slots} fixed-file slots",
                div_ceil(c.connections, slots),
                div_ceil(c.connections, slots)
            ));
        }
    }
    if h.nofile_soft < h.nofile_hard {
        k.status = k.status.max(Status::Warn);
        k.fix.push(format!(
            "ulimit -n {}   # ringhold serve raises its soft limit to the hard one itself; the load generator \
             and other tools need this",
            h.nofile_hard
        ));
    }
    let note = cap_note(h);
    if !note.is_empty() && k.status != Status::Ok {
        k.note = [k.note.clone(), note]
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
    }
    k
}

pub fn nr_open(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new("fs.nr_open", "fs.nr_open (ceiling of RLIMIT_NOFILE)");
    k.current = opt(h.nr_open);
    let (need, sev) = if c.plan.direct {
        let per = div_ceil(c.connections, c.plan.shards).min(IORING_MAX_FIXED_FILES);
        k.needed = format!(
            "{per} to size {} fixed-file tables by RLIMIT_NOFILE alone (or add shards)",
            c.plan.shards
        );
        (per, Status::Warn)
    } else {
        let n = c.connections + FD_RESERVE;
        k.needed = format!("{n} (the hard RLIMIT_NOFILE can never exceed it)");
        (n, Status::Fail)
    };
    if let Some(cur) = h.nr_open {
        if cur < need {
            k.status = sev;
            k.fix = sysctl_fix("fs.nr_open", &need.to_string());
        }
    }
    k
}

pub fn file_max(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new("fs.file_max", "fs.file-max (open files, system-wide)");
    let socks = c.connections * c.plan.sockets_per_conn;
    let need = socks + h.files_open.unwrap_or(0) + 1024;
    k.current = format!("{} ({} open now)", opt(h.file_max), opt(h.files_open));
    k.needed = format!(
        "{need} ({socks} sockets + files open now + 1024; direct descriptors are files too)"
    );
    if h.file_max.is_some_and(|m| m < need) {
        if h.has_cap(CAP_SYS_ADMIN) {
            k.status = Status::Warn;
            k.note = "not enforced for this process (CAP_SYS_ADMIN), but it is for others".into();
        } else {
            k.status = Status::Fail;
        }
        k.fix = sysctl_fix("fs.file-max", &need.to_string());
    }
    k
}

pub fn memlock(c: &Ctx<'_>) -> Check {
    let mut k = Check::new("rlimit.memlock", "RLIMIT_MEMLOCK (locked memory)");
    k.current = match c.host.memlock_soft {
        Some(u64::MAX) => "unlimited".into(),
        Some(v) => fmt_bytes(v),
        None => "unknown".into(),
    };
    if c.kernel >= (5, 12) {
        k.needed = "nothing: since Linux 5.12 io_uring charges rings to the memory cgroup, not to RLIMIT_MEMLOCK".into();
    } else {
        let need = c.plan.shards * (c.plan.shard_buffer_bytes + (1 << 20));
        k.needed = format!(
            "{} (rings and buffer rings of {} shards are locked memory before 5.12)",
            fmt_bytes(need),
            c.plan.shards
        );
        if c.host.memlock_soft.is_some_and(|v| v < need) && c.plan.engine == Engine::Uring {
            k.status = Status::Fail;
            k.fix = vec![
                "LimitMEMLOCK=infinity   # systemd unit, [Service]".into(),
                "ulimit -l unlimited".into(),
            ];
        }
    }
    k
}

pub fn backlog(c: &Ctx<'_>) -> [Check; 2] {
    let h = c.host;
    let mut a = Check::new(
        "net.somaxconn",
        "net.core.somaxconn (caps every listen backlog)",
    );
    a.current = opt(h.somaxconn);
    a.needed = format!(
        "≥ {} (serve --backlog; the kernel silently caps the backlog at somaxconn)",
        c.backlog
    );
    if h.somaxconn.is_some_and(|v| v < c.backlog) {
        a.status = Status::Warn;
        a.fix = sysctl_fix("net.core.somaxconn", &c.backlog.to_string());
        a.note = "a small backlog drops SYNs while many clients connect at once; nothing is lost once connected".into();
    }
    let mut b = Check::new(
        "net.syn_backlog",
        "net.ipv4.tcp_max_syn_backlog (half-open connections)",
    );
    b.current = opt(h.tcp_max_syn_backlog);
    b.needed = format!("≥ {} (the listen backlog)", c.backlog);
    if h.tcp_max_syn_backlog.is_some_and(|v| v < c.backlog) {
        b.status = Status::Warn;
        b.fix = sysctl_fix("net.ipv4.tcp_max_syn_backlog", &c.backlog.to_string());
        b.note =
            "under a burst of SYNs beyond it the kernel falls back to SYN cookies or drops".into();
    }
    [a, b]
}

/// Connections a load generator on this host can open: ports × sources × targets.
pub fn port_capacity(c: &Ctx<'_>) -> Option<u64> {
    let (lo, hi) = c.host.port_range?;
    Some((hi - lo + 1) * c.sources * c.targets)
}

pub fn ephemeral_ports(c: &Ctx<'_>) -> Check {
    let mut k = Check::new(
        "net.ephemeral_ports",
        "ephemeral ports (net.ipv4.ip_local_port_range) for a load generator here",
    );
    let Some((lo, hi)) = c.host.port_range else {
        k.status = Status::Warn;
        k.current = "unknown".into();
        return k;
    };
    let ports = hi - lo + 1;
    if !c.loadgen_here() {
        k.current = format!("{lo}-{hi} ({ports} ports)");
        k.needed = "nothing: no load generator on this host (--sources 0)".into();
        return k;
    }
    let have = ports * c.sources * c.targets;
    k.current = format!(
        "{lo}-{hi}: {ports} ports × {} source address{} × {} target{} = {have} connections",
        c.sources,
        if c.sources == 1 { "" } else { "es" },
        c.targets,
        if c.targets == 1 { "" } else { "s" }
    );
    k.needed = format!("{} connections from this host", c.connections);
    k.note = "each (source address, target) pair has its own port range when the client binds its source \
              address with IP_BIND_ADDRESS_NO_PORT before connect()"
        .into();
    if have < c.connections {
        k.status = Status::Fail;
        let k1 = div_ceil(c.connections, ports * c.targets);
        let wide = 65535 - 1024 + 1;
        let k2 = div_ceil(c.connections, wide * c.targets);
        k.fix = vec![format!(
            "use {k1} source addresses (127.0.0.1 … 127.0.0.{k1} on loopback) with IP_BIND_ADDRESS_NO_PORT; \
             re-check with ringhold doctor --sources {k1}"
        )];
        k.fix
            .extend(sysctl_fix("net.ipv4.ip_local_port_range", "1024 65535"));
        k.fix.push(format!(
            "with 1024-65535 ({wide} ports), {k2} source addresses suffice"
        ));
    }
    k
}

pub fn loadgen_fds(c: &Ctx<'_>) -> Option<Check> {
    if !c.loadgen_here() {
        return None;
    }
    let h = c.host;
    let mut k = Check::new(
        "load.nofile",
        "file descriptors of a load generator here (one fd per client socket)",
    );
    let per = h.nofile_hard.saturating_sub(FD_RESERVE).max(1);
    let procs = div_ceil(c.connections, per);
    k.current = format!(
        "hard RLIMIT_NOFILE {}: {per} client sockets per process",
        h.nofile_hard
    );
    k.needed = format!("{} client sockets", c.connections);
    if procs > 1 {
        k.status = Status::Warn;
        k.fix = vec![
            format!("run {procs} load generator processes of ≤ {per} connections each (each process has its own limit)"),
            format!("or raise the hard limit where the load generator starts: ulimit -n {}", c.connections + FD_RESERVE),
        ];
        k.note = cap_note(h);
    }
    Some(k)
}

pub fn memory(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new(
        "memory",
        "memory (MemAvailable) for the kernel sockets and the server",
    );
    let per = c.plan.bytes_per_conn();
    let need = c.connections * per + c.plan.fixed_bytes(h);
    k.current = format!(
        "MemAvailable {} of {}",
        h.mem_available.map(fmt_bytes).unwrap_or("unknown".into()),
        h.mem_total.map(fmt_bytes).unwrap_or("unknown".into())
    );
    k.needed = format!(
        "{} = {} connections × {per} B ({} socket{} × ~{KERNEL_BYTES_PER_SOCKET} B measured per idle loopback \
         socket + user state) + {} of buffers and tables",
        fmt_bytes(need),
        c.connections,
        c.plan.sockets_per_conn,
        if c.plan.sockets_per_conn == 1 { "" } else { "s" },
        fmt_bytes(c.plan.fixed_bytes(h))
    );
    if h.mem_available.is_some_and(|a| a < need) {
        k.status = Status::Fail;
        k.fix = vec![
            format!(
                "free or add {} of memory, or spread the connections over more hosts",
                fmt_bytes(need - h.mem_available.unwrap_or(0))
            ),
            "fewer --buffers per shard if buffers take a large share".into(),
        ];
    }
    k
}

pub fn tcp_mem(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new(
        "net.tcp_mem",
        "net.ipv4.tcp_mem (pages all TCP buffers may use)",
    );
    let page = h.page_size;
    let socks = c.connections * c.plan.sockets_per_conn;
    k.current = match &h.tcp_mem {
        Some(v) => format!(
            "{} pages (max {})",
            nums(&h.tcp_mem),
            fmt_bytes(v[2] * page)
        ),
        None => "unknown".into(),
    };
    k.needed = format!(
        "max ≥ {socks} pages ({}) to let every socket queue one page at the same moment",
        fmt_bytes(socks * page)
    );
    k.note = "idle sockets queue nothing and cost no tcp_mem; past the max the kernel drops segments (they are retransmitted)".into();
    if let Some(v) = &h.tcp_mem {
        if v[2] < socks {
            k.status = Status::Warn;
            let high = socks;
            k.fix = sysctl_fix(
                "net.ipv4.tcp_mem",
                &format!("{} {} {high}", high / 2, high * 3 / 4),
            );
            if let Some(total) = h.mem_total {
                if high * page > total / 3 {
                    k.fix.push(format!("that is more than a third of the memory ({}): keep the max lower if the connections are mostly idle", fmt_bytes(total)));
                }
            }
        }
    }
    k
}

pub fn tcp_buffers(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new(
        "net.tcp_buffers",
        "net.ipv4.tcp_rmem / tcp_wmem (per-socket buffer sizes)",
    );
    k.current = format!("rmem {}, wmem {}", nums(&h.tcp_rmem), nums(&h.tcp_wmem));
    k.needed = format!(
        "minimums ≤ one page ({} B) so that sockets shrink to a page under memory pressure",
        h.page_size
    );
    if let (Some(r), Some(w)) = (&h.tcp_rmem, &h.tcp_wmem) {
        k.note = format!(
            "the defaults are limits, not allocations: an idle socket holds no buffer; a busy one up to {} by default",
            fmt_bytes(r[1] + w[1])
        );
        if r[0] > h.page_size || w[0] > h.page_size {
            k.status = Status::Warn;
            k.fix = sysctl_fix(
                "net.ipv4.tcp_rmem",
                &format!("{} {} {}", h.page_size, r[1], r[2]),
            );
            k.fix.extend(sysctl_fix(
                "net.ipv4.tcp_wmem",
                &format!("{} {} {}", h.page_size, w[1], w[2]),
            ));
        }
    }
    k
}

/// `applies`: whether conntrack tracked a loopback connection in this namespace (see net.rs).
pub fn conntrack(c: &Ctx<'_>, applies: Option<bool>) -> Check {
    let h = c.host;
    let mut k = Check::new(
        "net.conntrack",
        "netfilter connection tracking (nf_conntrack_max)",
    );
    let Some(max) = h.conntrack_max else {
        k.current = "nf_conntrack not loaded".into();
        k.needed = "nothing".into();
        return k;
    };
    k.current = format!(
        "nf_conntrack_max {max}, {} entries now",
        opt(h.conntrack_count)
    );
    match applies {
        Some(false) => {
            k.needed = format!(
                "nothing now: the module is loaded but tracked no test connection in this network namespace (no rule \
                 uses it); if a firewall rule starts using it, ≥ {}",
                c.connections
            );
        }
        _ => {
            k.needed = format!("≥ {} (one entry per connection)", c.connections);
            if applies.is_none() {
                k.note = "could not tell whether it applies (the loopback probe failed); assuming it does".into();
            }
            if max < c.connections + h.conntrack_count.unwrap_or(0) {
                k.status = Status::Fail;
                let n = c.connections + c.connections / 4;
                k.fix = sysctl_fix("net.netfilter.nf_conntrack_max", &n.to_string());
                k.fix.push(format!(
                    "or exempt the port: iptables -t raw -A PREROUTING -p tcp --dport {p} -j NOTRACK; \
                     iptables -t raw -A OUTPUT -p tcp --sport {p} -j NOTRACK",
                    p = c.port
                ));
            }
        }
    }
    k
}

pub fn time_wait(c: &Ctx<'_>) -> Check {
    let h = c.host;
    let mut k = Check::new(
        "net.time_wait",
        "TIME_WAIT (net.ipv4.tcp_tw_reuse, tcp_max_tw_buckets)",
    );
    k.current = format!(
        "tcp_tw_reuse {}, tcp_max_tw_buckets {}",
        opt(h.tcp_tw_reuse),
        opt(h.tcp_max_tw_buckets)
    );
    k.needed = if c.loadgen_here() {
        "tcp_tw_reuse 1 (or 2, loopback only) so a load generator here can reuse ports held in TIME_WAIT".into()
    } else {
        "nothing for the server: it closes idle connections first, and past tcp_max_tw_buckets the kernel skips \
         TIME_WAIT (\"time wait bucket table overflow\" in dmesg, harmless)"
            .into()
    };
    if c.loadgen_here() && h.tcp_tw_reuse == Some(0) {
        k.status = Status::Warn;
        k.fix = sysctl_fix("net.ipv4.tcp_tw_reuse", "1");
    }
    if h.tcp_max_tw_buckets.is_some_and(|b| b < c.connections) {
        k.note = format!(
            "when all {} connections close at once (idle timeout, restart), up to {} stay in TIME_WAIT and the rest \
             close without it",
            c.connections,
            opt(h.tcp_max_tw_buckets)
        );
    }
    k
}

fn os_err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{} ({})", e, errno_name(n)),
        None => e.to_string(),
    }
}

fn errno_name(n: i32) -> &'static str {
    match n {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EACCES => "EACCES",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        _ => "errno",
    }
}

/// io_uring checks from the sysctls, seccomp and the probe. `sev` is FAIL for `--engine uring`,
/// WARN otherwise (epoll does not need io_uring).
pub fn uring(c: &Ctx<'_>, r: &UringReport) -> Vec<Check> {
    let h = c.host;
    let sev = if c.plan.engine == Engine::Uring {
        Status::Fail
    } else {
        Status::Warn
    };
    let blocked = r.setup.as_ref().err().and_then(|e| e.raw_os_error());
    let mut out = Vec::new();

    let mut k = Check::new("io_uring.disabled", "kernel.io_uring_disabled");
    k.current = match (h.io_uring_disabled, h.io_uring_group) {
        (None, _) => "not present (kernel before 6.6: io_uring always on)".into(),
        (Some(v), g) => format!(
            "{v} (io_uring_group {})",
            g.map(|g| g.to_string()).unwrap_or("unknown".into())
        ),
    };
    k.needed =
        "0 (1 allows only io_uring_group members and CAP_SYS_ADMIN, 2 disables io_uring)".into();
    if h.io_uring_disabled.is_some_and(|v| v > 0) {
        k.status = if r.setup.is_ok() { Status::Warn } else { sev };
        k.fix = sysctl_fix("kernel.io_uring_disabled", "0");
        k.fix.push("or --engine epoll".into());
    }
    out.push(k);

    let mut k = Check::new("io_uring.seccomp", "seccomp filter on this process");
    k.current = match (h.seccomp, h.seccomp_filters) {
        (Some(0), _) => "none (Seccomp: 0)".into(),
        (Some(m), f) => format!(
            "Seccomp: {m} ({} filter{})",
            opt(f),
            if f == Some(1) { "" } else { "s" }
        ),
        (None, _) => "unknown".into(),
    };
    k.needed = "a filter that allows io_uring_setup, io_uring_enter and io_uring_register".into();
    if h.seccomp.is_some_and(|m| m > 0) && matches!(blocked, Some(libc::EPERM) | Some(libc::ENOSYS))
    {
        k.status = sev;
        k.fix = vec![
            "Kubernetes: securityContext.seccompProfile of type Localhost with deploy/kubernetes/seccomp/ringhold.json \
             (RuntimeDefault blocks io_uring in containerd ≥ 1.7 and docker ≥ 25)"
                .into(),
            "docker: --security-opt seccomp=deploy/kubernetes/seccomp/ringhold.json".into(),
            "systemd: SystemCallFilter=@system-service keeps io_uring (its @aio group has io_uring_*); never ~@aio".into(),
            "or --engine epoll".into(),
        ];
        k.note = "io_uring_setup failed with a seccomp filter in place".into();
    } else if h.seccomp.is_some_and(|m| m > 0) {
        k.note = "a filter is present but the probe below created a ring".into();
    }
    out.push(k);

    let mut k = Check::new("io_uring.setup", "io_uring ring creation (io_uring_setup)");
    k.needed = "a ring (SINGLE_ISSUER|DEFER_TASKRUN on Linux ≥ 6.1, plain otherwise)".into();
    match &r.setup {
        Ok(flags) => {
            k.current = format!(
                "created, flags {flags}; recv bundles {}",
                if r.bundle { "yes" } else { "no" }
            )
        }
        Err(e) => {
            k.current = format!("failed: {}", os_err(e));
            k.status = sev;
            k.fix = match e.raw_os_error() {
                Some(libc::ENOSYS) => vec![
                    "a kernel built with CONFIG_IO_URING (Linux ≥ 6.0)".into(),
                    "or --engine epoll".into(),
                ],
                Some(libc::ENOMEM) => vec![
                    "LimitMEMLOCK=infinity / ulimit -l unlimited (kernels before 5.12)".into(),
                    "or --engine epoll".into(),
                ],
                _ => {
                    let mut f = Vec::new();
                    if h.io_uring_disabled.is_some_and(|v| v > 0) {
                        f.extend(sysctl_fix("kernel.io_uring_disabled", "0"));
                    }
                    if h.seccomp.is_some_and(|m| m > 0) {
                        f.push("a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register (see io_uring.seccomp)".into());
                    }
                    if f.is_empty() {
                        f.push("io_uring is refused by a security module (LSM) or a container runtime: allow io_uring_setup".into());
                    }
                    f.push("or --engine epoll".into());
                    f
                }
            };
        }
    }
    out.push(k);
    if r.setup.is_err() {
        return out;
    }

    let mut k = Check::new(
        "io_uring.opcodes",
        "io_uring opcodes ringhold uses (IORING_REGISTER_PROBE)",
    );
    let missing: Vec<_> = r.opcodes.iter().filter(|o| !o.1).collect();
    k.current = if missing.is_empty() {
        format!(
            "all supported: {}",
            r.opcodes.iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
        )
    } else {
        format!(
            "missing: {}",
            missing.iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
        )
    };
    k.needed = "ACCEPT, RECV, SEND, CLOSE, ASYNC_CANCEL (URING_CMD for setsockopt on direct descriptors: optional)".into();
    if missing.iter().any(|o| o.2) {
        k.status = sev;
        k.fix = vec!["Linux ≥ 6.0 (multishot recv), or --engine epoll".into()];
    } else if !missing.is_empty() {
        k.status = Status::Warn;
        k.fix = vec!["Linux ≥ 6.7 for setsockopt via URING_CMD".into()];
    }
    out.push(k);

    let mut k = Check::new(
        "io_uring.buf_ring",
        "provided buffer ring (IORING_REGISTER_PBUF_RING)",
    );
    k.needed = "registration works (Linux ≥ 5.19)".into();
    match &r.buf_ring {
        Some(Ok(())) => k.current = "registered".into(),
        Some(Err(e)) => {
            k.current = format!("failed: {}", os_err(e));
            k.status = sev;
            k.fix = vec!["Linux ≥ 5.19, or --engine epoll".into()];
        }
        None => {
            k.current = "not tried (no fixed-file table)".into();
            k.status = sev;
        }
    }
    out.push(k);

    let mut k = Check::new(
        "io_uring.multishot",
        "loopback echo: multishot accept into a direct descriptor, multishot recv with buffer select, send, close, cancel",
    );
    k.needed = "every step completes (Linux ≥ 6.0)".into();
    match &r.live {
        Some(Ok(())) => k.current = "worked".into(),
        Some(Err(e)) => {
            k.current = format!("failed: {e}");
            k.status = sev;
            k.fix = vec!["Linux ≥ 6.0, or --no-direct-descriptors, or --engine epoll".into()];
        }
        None => {
            k.current = "not tried (setup above failed)".into();
            k.status = sev;
        }
    }
    out.push(k);

    let mut k = Check::new(
        "io_uring.setsockopt",
        "setsockopt on a direct descriptor (URING_CMD SOCKET_URING_OP_SETSOCKOPT)",
    );
    k.needed = "works (Linux ≥ 6.7) for --tcp-keepalive with direct descriptors".into();
    match &r.setsockopt {
        Some(Ok(())) => k.current = "SO_KEEPALIVE set".into(),
        Some(Err(e)) => {
            k.current = format!("failed: {}", os_err(e));
            k.status = Status::Warn;
            k.fix = vec![
                "Linux ≥ 6.7, or --no-direct-descriptors when --tcp-keepalive is needed".into(),
            ];
        }
        None => {
            k.current = "not tried".into();
            k.status = Status::Warn;
        }
    }
    out.push(k);

    out.push(fixed_files(c, r));
    out
}

fn fixed_files(c: &Ctx<'_>, r: &UringReport) -> Check {
    let h = c.host;
    let plan = c.plan;
    let mut k = Check::new(
        "io_uring.fixed_files",
        "io_uring fixed-file tables (direct descriptors: no process fd per connection)",
    );
    let slots = plan.table_slots(h);
    let soft = h.serve_nofile();
    let have = plan.shards * slots;
    let probe = match &r.table {
        Some((n, Ok(()))) => format!("registered a sparse table of {n} slots"),
        Some((n, Err(e))) => format!("a table of {n} slots failed: {}", os_err(e)),
        None => "table not tried".into(),
    };
    let over = match &r.table_over {
        Some((n, Err(e))) if e.raw_os_error() == Some(libc::EMFILE) => {
            format!("; {n} slots: EMFILE (the cap is RLIMIT_NOFILE)")
        }
        Some((n, Err(e))) => format!("; {n} slots: {}", os_err(e)),
        Some((n, Ok(()))) => format!("; {n} slots: accepted"),
        None => String::new(),
    };
    k.current = format!(
        "{} shards × {slots} slots = {have} (each table ≤ RLIMIT_NOFILE soft {soft}, serve raises soft to hard; {probe}{over})",
        plan.shards
    );
    let per = div_ceil(c.connections, plan.shards);
    k.needed = format!(
        "{} slots in all: {per} per shard with {} shards",
        c.connections, plan.shards
    );
    if !plan.direct {
        k.needed =
            "nothing: direct descriptors are off (--engine epoll or --no-direct-descriptors)"
                .into();
        return k;
    }
    if matches!(r.table, Some((_, Err(_)))) {
        k.status = Status::Fail;
    }
    if have < c.connections {
        k.status = Status::Fail;
        let shards = div_ceil(c.connections, slots);
        let mut fix = Vec::new();
        if shards <= MAX_SHARDS {
            fix.push(format!(
                "ringhold serve --shards {shards}   # {shards} shards × {slots} slots = {} direct descriptors ≥ {}: \
                 connections need no process fds, so RLIMIT_NOFILE {soft} is enough; shards beyond the {} cores \
                 share them (re-check: ringhold doctor --connections {} --shards {shards})",
                shards * slots,
                c.connections,
                h.cores,
                c.connections
            ));
        } else {
            fix.push(format!("{shards} shards of {slots} slots would be needed (serve allows {MAX_SHARDS}): raise RLIMIT_NOFILE below"));
        }
        let per_capped = per.min(IORING_MAX_FIXED_FILES);
        if per_capped * plan.shards >= c.connections {
            fix.push(format!(
                "or keep {} shards and make each table {per} slots:",
                plan.shards
            ));
            fix.extend(nofile_fix(h, per));
        } else {
            let s = div_ceil(c.connections, IORING_MAX_FIXED_FILES);
            fix.push(format!("or ≥ {s} shards with tables of up to {IORING_MAX_FIXED_FILES} slots (the kernel's cap):"));
            fix.extend(nofile_fix(h, IORING_MAX_FIXED_FILES));
        }
        k.fix = fix;
        k.note = cap_note(h);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_fix_quotes_values_with_spaces() {
        let f = sysctl_fix("net.ipv4.ip_local_port_range", "1024 65535");
        assert_eq!(
            f[0],
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
        );
        assert_eq!(
            f[1],
            format!("echo 'net.ipv4.ip_local_port_range = 1024 65535' >> {SYSCTL_FILE}")
        );
        assert_eq!(sysctl_fix("fs.nr_open", "5")[0], "sysctl -w fs.nr_open=5");
    }

    #[test]
    fn status_orders_by_severity() {
        assert!(Status::Ok < Status::Warn && Status::Warn < Status::Fail);
    }
}
