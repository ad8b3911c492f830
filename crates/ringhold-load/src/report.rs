//! What the user sees: progress lines, the final summary table and the `--json` document. All numbers
//! come from one `Outcome`, so the table and the JSON never disagree.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use ringhold_core::units::fmt_bytes;
use serde_json::{json, Value};

use crate::plan::{LoadProtocol, Plan};
use crate::stats::{Cause, Counts, CAUSES};

/// Formats microseconds for people.
pub fn fmt_us(v: u64) -> String {
    if v < 1_000 {
        format!("{v}µs")
    } else if v < 1_000_000 {
        format!("{:.1}ms", v as f64 / 1e3)
    } else {
        format!("{:.2}s", v as f64 / 1e6)
    }
}

/// "kernel-chosen", "4" or "12 (auto)": how many source addresses the run connects from.
pub fn sources_desc(p: &Plan) -> String {
    match (p.sources.len(), p.sources_auto) {
        (0, _) => "kernel-chosen".to_string(),
        (n, true) => format!("{n} (auto)"),
        (n, false) => n.to_string(),
    }
}

fn failures_brief(c: &Counts) -> String {
    let parts: Vec<String> = CAUSES
        .iter()
        .filter(|k| c.failed[k.index()] > 0)
        .map(|k| format!("{} {}", k.label(), c.failed[k.index()]))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// One progress line: `elapsed_s` since start, `msgs_per_s` over the last tick, latency of the tick.
pub fn progress_line(
    plan: &Plan,
    c: &Counts,
    elapsed_s: f64,
    msgs_per_s: f64,
    tick: &Histogram<u64>,
) -> String {
    let mut s = format!(
        "[{elapsed_s:>5.0}s] connected {}/{} alive {} pending {} failed {}{}",
        c.connected,
        plan.connections,
        c.alive,
        c.pending,
        c.failed_total(),
        failures_brief(c)
    );
    if plan.sends() {
        let unit = if plan.http.is_some() {
            "req/s"
        } else {
            "msg/s"
        };
        let _ = write!(s, " | {msgs_per_s:.0} {unit}");
        if !tick.is_empty() {
            let _ = write!(
                s,
                " p50 {} p99 {}",
                fmt_us(tick.value_at_quantile(0.5)),
                fmt_us(tick.value_at_quantile(0.99))
            );
        }
    }
    s
}

/// What a run would do (`--dry-run`), one `key value` line each.
pub fn plan_text(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "target         {}", p.target);
    if let Some((part, total)) = p.part {
        let _ = writeln!(s, "part           {part} of {total} connections");
    }
    let _ = writeln!(s, "connections    {}", p.connections);
    let _ = writeln!(
        s,
        "sources        {}",
        match (p.sources.first(), p.sources.last()) {
            (Some(a), Some(b)) => format!("{a}-{b} ({} addresses)", p.sources.len()),
            _ => "kernel-chosen".to_string(),
        }
    );
    let _ = writeln!(s, "connect rate   {}/s", p.connect_rate);
    let _ = writeln!(s, "protocol       {}", p.protocol.name());
    let _ = writeln!(s, "heartbeats     {}", heartbeat_desc(p));
    let _ = writeln!(
        s,
        "duration       {}",
        fmt_us(p.duration.as_micros() as u64)
    );
    let _ = write!(
        s,
        "workers        {} x {} fixed-file slots, on {} thread(s)",
        p.workers, p.slots_per_ring, p.threads
    );
    s
}

/// What each connection sends, for people.
fn heartbeat_desc(p: &Plan) -> String {
    if let Some(h) = &p.http {
        return match (h.kit, p.period, p.rate) {
            (Some(k), _, _) => format!(
                "http-kit pattern: GET {}?length={}..{}, pause {}..{} after each answer",
                h.path,
                k.length.0,
                k.length.1,
                fmt_us(k.pause_us.0),
                fmt_us(k.pause_us.1)
            ),
            (None, None, _) => "no requests (held idle)".into(),
            (None, Some(_), Some(r)) => {
                format!(
                    "GET {}?length={} at {r} req/s in total",
                    h.path, p.message_size
                )
            }
            (None, Some(d), None) => format!(
                "GET {}?length={} every {}",
                h.path,
                p.message_size,
                fmt_us(d.as_micros() as u64)
            ),
        };
    }
    match (p.period, p.rate) {
        (None, _) => "no heartbeats (held idle)".into(),
        (Some(_), Some(r)) => format!("{} B heartbeats at {r} msg/s in total", p.message_size),
        (Some(d), None) => format!(
            "{} B heartbeat every {}",
            p.message_size,
            fmt_us(d.as_micros() as u64)
        ),
    }
}

/// Everything measured in one run.
pub struct Outcome<'a> {
    pub plan: &'a Plan,
    pub setup: &'static str,
    pub counts: Counts,
    pub hist: &'a Histogram<u64>,
    pub elapsed_us: u64,
    pub rss_start: Option<u64>,
    pub rss_peak: Option<u64>,
    /// Most connections open at once (from the progress samples and the end).
    pub peak_alive: u64,
    /// Most pages TCP used system-wide during the run (both ends of loopback connections count).
    pub tcp_mem_peak: Option<u64>,
    /// Set when that reached net.ipv4.tcp_mem's pressure threshold.
    pub tcp_mem_note: Option<String>,
}

impl Outcome<'_> {
    pub fn lost(&self) -> u64 {
        self.counts.sent.saturating_sub(self.counts.echoed)
    }

    pub fn ramp_unfinished(&self) -> bool {
        self.counts.attempted < u64::from(self.plan.connections)
    }

    /// Success: every connection made and held, every heartbeat echoed intact.
    pub fn ok(&self) -> bool {
        self.counts.failed_total() == 0
            && self.lost() == 0
            && self.counts.connected == u64::from(self.plan.connections)
    }

    pub fn bytes_per_conn(&self) -> Option<u64> {
        let (start, peak) = (self.rss_start?, self.rss_peak?);
        (self.peak_alive > 0).then(|| peak.saturating_sub(start) / self.peak_alive)
    }

    fn msgs_per_s(&self) -> f64 {
        let secs = self.elapsed_us as f64 / 1e6;
        if secs > 0.0 {
            self.counts.echoed as f64 / secs
        } else {
            0.0
        }
    }

    /// The final table (printed to stdout).
    pub fn table(&self) -> String {
        let c = &self.counts;
        let p = self.plan;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ringhold load: {} {} connections to {} from {} source address(es), {} workers on {} thread(s) (setup: {}), {}",
            p.connections,
            p.protocol.name(),
            p.target,
            sources_desc(p),
            p.workers,
            p.threads,
            self.setup,
            heartbeat_desc(p)
        );
        if let Some((part, total)) = p.part {
            let _ = writeln!(
                s,
                "  part           {part} of a load of {total} connections; sources {}",
                match (p.sources.first(), p.sources.last()) {
                    (Some(a), Some(b)) => format!("{a}-{b}"),
                    _ => "kernel-chosen".to_string(),
                }
            );
        }
        let ramp = if c.ramp_done_us > 0 {
            format!("  (all connects settled after {})", fmt_us(c.ramp_done_us))
        } else {
            String::new()
        };
        let _ = writeln!(s, "  elapsed        {}{ramp}", fmt_us(self.elapsed_us));
        let _ = writeln!(
            s,
            "  connections    attempted {}  connected {}  alive at end {}  peak alive {}  failed {}",
            c.attempted,
            c.connected,
            c.alive,
            self.peak_alive,
            c.failed_total()
        );
        if p.sends() {
            let (what, done, unit) = if p.http.is_some() {
                ("requests  ", "answered", "req/s")
            } else {
                ("heartbeats", "echoed", "msg/s")
            };
            let _ = writeln!(
                s,
                "  {what}     sent {}  {done} {}  lost {}  late {}  ({:.0} {unit})",
                c.sent,
                c.echoed,
                self.lost(),
                c.late,
                self.msgs_per_s()
            );
            let _ = writeln!(
                s,
                "  bytes          sent {}  received {}",
                c.bytes_sent, c.bytes_received
            );
            if !self.hist.is_empty() {
                let h = self.hist;
                let note = if p.period.is_some() {
                    " incl. coordinated-omission correction"
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "  latency        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples{note})",
                    fmt_us(h.value_at_quantile(0.5)),
                    fmt_us(h.value_at_quantile(0.9)),
                    fmt_us(h.value_at_quantile(0.99)),
                    fmt_us(h.value_at_quantile(0.999)),
                    fmt_us(h.max()),
                    h.len()
                );
            }
        }
        if p.protocol == LoadProtocol::Websocket {
            let _ = writeln!(
                s,
                "  websocket      upgrades {}  pings from the server {}  pongs sent {}",
                c.ws_upgrades, c.ws_pings, c.ws_pongs
            );
        }
        if let (Some(start), Some(peak)) = (self.rss_start, self.rss_peak) {
            let per = self.bytes_per_conn().map_or(String::new(), |b| {
                format!(", {b} B per connection above start")
            });
            let _ = writeln!(
                s,
                "  memory (RSS)   start {}  peak {}{per}",
                fmt_bytes(start),
                fmt_bytes(peak)
            );
        }
        if c.failed_total() > 0 {
            let _ = writeln!(s, "  failures by cause:");
            for k in CAUSES.iter().filter(|k| c.failed[k.index()] > 0) {
                let errno = if *k == Cause::Other && c.other_errno != 0 {
                    format!(
                        " (last: {})",
                        std::io::Error::from_raw_os_error(c.other_errno)
                    )
                } else if *k == Cause::BadStatus && c.last_status != 0 {
                    format!(" (last: {})", c.last_status)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "    {:<17}{:>9}  {}{errno}",
                    k.label(),
                    c.failed[k.index()],
                    k.hint()
                );
            }
        }
        if let Some(note) = &self.tcp_mem_note {
            let _ = writeln!(s, "  note           {note}");
        }
        let verdict = if self.ok() && !p.sends() {
            "OK: every connection made and held".to_string()
        } else if self.ok() && p.http.is_some() {
            "OK: every connection held, every request answered 200 with the length asked for"
                .to_string()
        } else if self.ok() {
            "OK: every connection held, every heartbeat echoed intact".to_string()
        } else {
            let mut why = Vec::new();
            if c.failed_total() > 0 {
                why.push(format!("{} connection(s) failed", c.failed_total()));
            }
            if self.lost() > 0 {
                why.push(if p.http.is_some() {
                    format!("{} request(s) without a complete answer", self.lost())
                } else {
                    format!("{} heartbeat(s) without a complete echo", self.lost())
                });
            }
            if self.ramp_unfinished() {
                why.push(format!(
                    "ramp-up unfinished: {} of {} connects started (raise --duration or --connect-rate)",
                    c.attempted, p.connections
                ));
            }
            format!("FAILED: {}", why.join("; "))
        };
        let _ = writeln!(s, "  result         {verdict}");
        s
    }

    /// The `--json` document (schema `ringhold-load/1`, described in the crate README).
    pub fn json(&self) -> Value {
        let c = &self.counts;
        let p = self.plan;
        let failures: serde_json::Map<String, Value> = CAUSES
            .iter()
            .map(|k| (k.key().to_string(), json!(c.failed[k.index()])))
            .collect();
        let hints: serde_json::Map<String, Value> = CAUSES
            .iter()
            .filter(|k| c.failed[k.index()] > 0)
            .map(|k| (k.key().to_string(), json!(k.hint())))
            .collect();
        let h = self.hist;
        let latency = if !h.is_empty() {
            json!({
                "samples": h.len(),
                "min": h.min(),
                "mean": h.mean(),
                "p50": h.value_at_quantile(0.5),
                "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            })
        } else {
            Value::Null
        };
        json!({
            "schema": "ringhold-load/1",
            "ok": self.ok(),
            "target": p.target.to_string(),
            "config": {
                "connections": p.connections,
                "sources": p.sources.len(),
                "sources_auto": p.sources_auto,
                "workers": p.workers,
                "threads": p.threads,
                "slots_per_worker": p.slots_per_ring,
                "setup": self.setup,
                "protocol": p.protocol.name(),
                "message_size": p.message_size,
                "http_path": p.http.as_ref().map(|h| h.path.as_str()),
                "http_kit": p.http_kit().map(|k| json!({
                    "length_min": k.length.0, "length_max": k.length.1,
                    "pause_min_us": k.pause_us.0, "pause_max_us": k.pause_us.1,
                })),
                "interval_us": p.period.map(|d| d.as_micros() as u64),
                "rate": p.rate,
                "duration_us": p.duration.as_micros() as u64,
                "connect_rate": p.connect_rate,
                "connect_timeout_us": p.connect_timeout.as_micros() as u64,
                "echo_timeout_us": p.echo_timeout.as_micros() as u64,
                "part": p.part.map(|(part, total)| json!({
                    "index": part.index, "count": part.count, "connections_all_parts": total,
                })),
            },
            "elapsed_us": self.elapsed_us,
            "ramp_us": (c.ramp_done_us > 0).then_some(c.ramp_done_us),
            "connections": {
                "attempted": c.attempted,
                "connected": c.connected,
                "alive": c.alive,
                "peak_alive": self.peak_alive,
                "failed": c.failed_total(),
            },
            "failures": failures,
            "hints": hints,
            "other_errno": (c.other_errno != 0).then_some(c.other_errno),
            "last_bad_status": (c.last_status != 0).then_some(c.last_status),
            "heartbeats": {
                "sent": c.sent,
                "echoed": c.echoed,
                "lost": self.lost(),
                "late": c.late,
                "per_second": self.msgs_per_s(),
            },
            "bytes": { "sent": c.bytes_sent, "received": c.bytes_received },
            "latency_us": latency,
            "recv_nobufs": c.recv_nobufs,
            "websocket": (p.protocol == LoadProtocol::Websocket).then(|| json!({
                "upgrades": c.ws_upgrades,
                "pings_received": c.ws_pings,
                "pongs_sent": c.ws_pongs,
            })),
            "kernel": {
                "tcp_mem_peak_pages": self.tcp_mem_peak,
                "tcp_mem_pressure_pages": crate::kernel::tcp_mem_limits().map(|l| l.1),
                "note": self.tcp_mem_note,
            },
            "memory": {
                "rss_start_bytes": self.rss_start,
                "rss_peak_bytes": self.rss_peak,
                "bytes_per_connection": self.bytes_per_conn(),
            },
        })
    }
}
