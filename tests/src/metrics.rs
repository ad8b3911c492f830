//! A minimal Prometheus text-format scrape of the server's /metrics (plain HTTP/1.0 over loopback).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Every metric family `ringhold load --metrics-listen` exports (the contract with the dashboard's
/// "Load generators" row); the histogram by its family name.
pub const LOAD_NAMES: [&str; 13] = [
    "ringhold_load_connections",
    "ringhold_load_connections_opened_total",
    "ringhold_load_heartbeats_sent_total",
    "ringhold_load_heartbeats_echoed_total",
    "ringhold_load_heartbeats_late_total",
    "ringhold_load_heartbeats_outstanding",
    "ringhold_load_failures_total",
    "ringhold_load_bytes_sent_total",
    "ringhold_load_bytes_received_total",
    "ringhold_load_latency_seconds",
    "ringhold_load_resident_memory_bytes",
    "ringhold_load_build_info",
    "ringhold_metrics_scrapes_total",
];

/// One scrape: `(name, labels, value)` per sample line.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<(String, String, f64)>,
    pub text: String,
}

impl Scrape {
    /// Sum of every sample of `name` whose labels contain each `k="v"` in `labels` (e.g. across shards).
    /// `None` if no sample matched.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for (n, l, v) in &self.samples {
            if n == name
                && labels
                    .iter()
                    .all(|(k, val)| l.contains(&format!("{k}=\"{val}\"")))
            {
                found = true;
                total += v;
            }
        }
        found.then_some(total)
    }
}

/// GET /metrics from `addr`; `None` on any failure (the caller decides whether that matters).
pub fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let mut s = TcpStream::connect_timeout(&addr, crate::secs(5)).ok()?;
    s.set_read_timeout(Some(crate::secs(10))).ok()?;
    s.set_write_timeout(Some(crate::secs(10))).ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(parse(body))
}

/// Parses the Prometheus text exposition format (comments skipped).
pub fn parse(body: &str) -> Scrape {
    let mut out = Scrape {
        samples: Vec::new(),
        text: body.to_string(),
    };
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_labels, value) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => match line.split_once(' ') {
                Some((a, b)) => (a, b.trim()),
                None => continue,
            },
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
            None => (name_labels.to_string(), String::new()),
        };
        out.samples.push((name, labels, v));
    }
    out
}
