//! How many connections the host holds as configured, and which limit binds first. Shared by
//! `ringhold doctor` and the start-up line of `ringhold serve` ([`binding_limit_line`]).

use ringhold_core::units::fmt_bytes;

use super::sys::{Host, CAP_SYS_ADMIN};
use crate::cli::Engine;

/// File descriptors the server keeps for itself (listeners, rings, epoll, metrics, logs, spare).
pub const FD_RESERVE: u64 = 64;
/// The kernel's cap on one fixed-file table (IORING_MAX_FIXED_FILES).
pub const IORING_MAX_FIXED_FILES: u64 = 1 << 20;
/// Kernel memory of one idle TCP socket, measured here on loopback (socket, inode, dentry, file).
pub const KERNEL_BYTES_PER_SOCKET: u64 = 3_900;
/// User-space budget of one connection in the server (slot state; see DESIGN.md).
pub const USER_BYTES_PER_CONN: u64 = 64;
/// Kernel bytes per fixed-file table slot (a pointer in the table plus its bitmap bit, rounded up).
pub const BYTES_PER_FIXED_SLOT: u64 = 8;
/// `serve` defaults: receive buffers per shard × their size.
pub const DEFAULT_SHARD_BUFFER_BYTES: u64 = 4096 * 2048;

/// What the server would run with.
#[derive(Clone, Debug)]
pub struct Plan {
    pub engine: Engine,
    pub shards: u64,
    /// io_uring accepts into direct descriptors (no process fd per connection).
    pub direct: bool,
    /// Slots asked for per fixed-file table (0 = the RLIMIT_NOFILE soft limit, as `serve` does).
    pub fixed_files: u64,
    /// `--max-connections` (0 = none).
    pub max_connections: u64,
    /// Kernel sockets per connection on this host: 1 for the server alone, 2 when the load
    /// generator runs here too (both ends on loopback).
    pub sockets_per_conn: u64,
    pub shard_buffer_bytes: u64,
    /// Whether conntrack tracks this namespace's connections (each takes one entry).
    pub conntrack_applies: bool,
}

impl Plan {
    /// Slots one fixed-file table really gets: the kernel refuses more than RLIMIT_NOFILE soft
    /// (`serve` raises soft to hard first) and more than IORING_MAX_FIXED_FILES.
    pub fn table_slots(&self, host: &Host) -> u64 {
        let cap = host.serve_nofile().min(IORING_MAX_FIXED_FILES);
        if self.fixed_files == 0 {
            cap
        } else {
            self.fixed_files.min(cap)
        }
    }

    pub fn bytes_per_conn(&self) -> u64 {
        self.sockets_per_conn * KERNEL_BYTES_PER_SOCKET + USER_BYTES_PER_CONN
    }

    /// Memory the server takes whatever the connection count: buffers and fixed-file tables.
    pub fn fixed_bytes(&self, host: &Host) -> u64 {
        let tables = if self.direct {
            self.shards * self.table_slots(host) * BYTES_PER_FIXED_SLOT
        } else {
            0
        };
        self.shards * self.shard_buffer_bytes + tables
    }
}

/// One limit on the number of connections.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Limit {
    pub id: &'static str,
    pub connections: u64,
    pub text: String,
}

/// Every limit that applies to the plan, in the order they are usually hit.
pub fn limits(host: &Host, plan: &Plan) -> Vec<Limit> {
    let mut out = Vec::new();
    if plan.direct {
        let slots = plan.table_slots(host);
        out.push(Limit {
            id: "io_uring.fixed_files",
            connections: plan.shards * slots,
            text: format!("fixed-file tables: {} shards × {slots} slots", plan.shards),
        });
    } else {
        let soft = host.serve_nofile();
        out.push(Limit {
            id: "rlimit.nofile",
            connections: soft.saturating_sub(FD_RESERVE),
            text: format!(
                "RLIMIT_NOFILE {soft} (one fd per connection, {FD_RESERVE} kept for the server)"
            ),
        });
    }
    if let Some(avail) = host.mem_available {
        let per = plan.bytes_per_conn();
        out.push(Limit {
            id: "memory",
            connections: avail.saturating_sub(plan.fixed_bytes(host)) / per,
            text: format!(
                "MemAvailable {} at {per} B per connection ({} socket{} × {KERNEL_BYTES_PER_SOCKET} B + \
                 {USER_BYTES_PER_CONN} B)",
                fmt_bytes(avail),
                plan.sockets_per_conn,
                if plan.sockets_per_conn == 1 { "" } else { "s" },
            ),
        });
    }
    // fs.file-max does not apply to CAP_SYS_ADMIN (the kernel lets it allocate files beyond it).
    if let (Some(max), false) = (host.file_max, host.has_cap(CAP_SYS_ADMIN)) {
        let free = max.saturating_sub(host.files_open.unwrap_or(0));
        out.push(Limit {
            id: "fs.file_max",
            connections: free / plan.sockets_per_conn.max(1),
            text: format!("fs.file-max {max} (every socket is a file, direct descriptor or not)"),
        });
    }
    if plan.conntrack_applies {
        if let Some(max) = host.conntrack_max {
            out.push(Limit {
                id: "net.conntrack",
                connections: max.saturating_sub(host.conntrack_count.unwrap_or(0)),
                text: format!("nf_conntrack_max {max} (one entry per connection)"),
            });
        }
    }
    if plan.max_connections > 0 {
        out.push(Limit {
            id: "max_connections",
            connections: plan.max_connections,
            text: "--max-connections".to_string(),
        });
    }
    out
}

/// The smallest limit (the first of equals).
pub fn binding(limits: &[Limit]) -> Option<&Limit> {
    limits
        .iter()
        .fold(None, |best: Option<&Limit>, l| match best {
            Some(b) if b.connections <= l.connections => Some(b),
            _ => Some(l),
        })
}

/// `capacity=N connections (bound by …)` for the start-up line of `serve`: the same logic as
/// `ringhold doctor`, from /proc reads only (no probes). Call it after RLIMIT_NOFILE was raised.
pub fn binding_limit_line(
    engine: Engine,
    shards: usize,
    direct: bool,
    fixed_files: u64,
    max_connections: usize,
) -> String {
    let host = Host::read();
    let plan = Plan {
        engine,
        shards: shards as u64,
        direct,
        fixed_files,
        max_connections: max_connections as u64,
        sockets_per_conn: 1,
        shard_buffer_bytes: DEFAULT_SHARD_BUFFER_BYTES,
        conntrack_applies: host.conntrack_count.is_some_and(|c| c > 0),
    };
    let limits = limits(&host, &plan);
    match binding(&limits) {
        Some(b) => format!(
            "capacity={} connections (bound by {})",
            b.connections, b.text
        ),
        None => "capacity=unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            nofile_soft: 1024,
            nofile_hard: 20_000,
            mem_available: Some(24 << 30),
            file_max: Some(2_466_174),
            files_open: Some(300),
            cap_eff: Some(1 << CAP_SYS_ADMIN),
            conntrack_max: Some(262_144),
            conntrack_count: Some(0),
            page_size: 4096,
            cores: 2,
            ..Host::default()
        }
    }

    fn plan(direct: bool, shards: u64) -> Plan {
        Plan {
            engine: if direct { Engine::Uring } else { Engine::Epoll },
            shards,
            direct,
            fixed_files: 0,
            max_connections: 0,
            sockets_per_conn: 2,
            shard_buffer_bytes: DEFAULT_SHARD_BUFFER_BYTES,
            conntrack_applies: false,
        }
    }

    #[test]
    fn direct_descriptors_scale_with_shards() {
        let h = host();
        let l = limits(&h, &plan(true, 50));
        let b = binding(&l).unwrap();
        // 50 × 20000 = 1e6 slots; memory at 7864 B/conn on 24 GiB is ~3.2e6.
        assert_eq!((b.id, b.connections), ("io_uring.fixed_files", 1_000_000));
        let l = limits(&h, &plan(true, 2));
        assert_eq!(binding(&l).unwrap().connections, 40_000);
    }

    #[test]
    fn plain_fds_bound_by_the_hard_limit() {
        let l = limits(&host(), &plan(false, 2));
        let b = binding(&l).unwrap();
        assert_eq!(
            (b.id, b.connections),
            ("rlimit.nofile", 20_000 - FD_RESERVE)
        );
    }

    #[test]
    fn memory_binds_when_tables_are_large() {
        let mut h = host();
        h.nofile_hard = 1 << 20;
        h.mem_available = Some(1 << 30);
        let l = limits(&h, &plan(true, 4));
        assert_eq!(binding(&l).unwrap().id, "memory");
    }

    #[test]
    fn conntrack_and_file_max_only_when_they_apply() {
        let mut h = host();
        let mut p = plan(false, 1);
        assert!(!limits(&h, &p)
            .iter()
            .any(|l| l.id == "net.conntrack" || l.id == "fs.file_max"));
        p.conntrack_applies = true;
        h.cap_eff = Some(0);
        let ids: Vec<_> = limits(&h, &p).iter().map(|l| l.id).collect();
        assert!(ids.contains(&"net.conntrack") && ids.contains(&"fs.file_max"));
    }

    #[test]
    fn max_connections_binds_when_smaller() {
        let mut p = plan(true, 2);
        p.max_connections = 10;
        assert_eq!(binding(&limits(&host(), &p)).unwrap().id, "max_connections");
    }

    #[test]
    fn fixed_files_capped_by_the_soft_limit() {
        let mut p = plan(true, 1);
        p.fixed_files = 50_000;
        assert_eq!(p.table_slots(&host()), 20_000);
        p.fixed_files = 100;
        assert_eq!(p.table_slots(&host()), 100);
    }
}
