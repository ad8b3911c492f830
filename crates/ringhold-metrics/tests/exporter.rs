//! The exporter end to end inside one process: install on an ephemeral port, flush synthetic shard
//! counters, scrape over real TCP (with deadlines: a hung exporter fails, it does not hang the test),
//! check exact values and `promtool check metrics` (a SKIP without promtool, a failure under `CI`);
//! then the load generator's series on the same recorder.
//! (One test function: the recorder is process-global.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use ringhold_core::{CloseReason, RejectReason, ShardCounters};
use ringhold_metrics::{
    install, install_load, names, render, upkeep, LoadCounters, LoadMetrics, ShardMetrics,
};
use ringhold_tests::secs;
use ringhold_tests::tools::{require, run_with_input};

/// Sends one raw HTTP request and reads the whole response, each step with a deadline.
fn request(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, secs(5)).expect("connect to the exporter");
    s.set_read_timeout(Some(secs(10))).expect("read timeout");
    s.set_write_timeout(Some(secs(10))).expect("write timeout");
    s.write_all(req).expect("send the request");
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .expect("read the response (within the deadline)");
    resp
}

fn scrape(addr: SocketAddr) -> String {
    let resp = request(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// `name{labels}` → value, labels as written by the exporter (sorted by us for lookup).
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let series = match series.split_once('{') {
            Some((name, labels)) => {
                let mut l: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                l.sort();
                format!("{name}{{{}}}", l.join(","))
            }
            None => series.to_string(),
        };
        out.insert(series, value.parse::<f64>().unwrap());
    }
    out
}

#[test]
fn exporter_end_to_end() {
    assert_eq!(
        install(None, "uring").unwrap(),
        None,
        "off installs nothing"
    );
    assert!(render().is_none());

    let addr = install(Some("127.0.0.1:0".parse().unwrap()), "uring")
        .unwrap()
        .unwrap();
    assert_ne!(addr.port(), 0, "the bound port is reported");
    let mut s0 = ShardMetrics::new(0);
    let mut s1 = ShardMetrics::new(1);

    // Registered series exist at 0 before any flush.
    let m = samples(&scrape(addr));
    assert_eq!(
        m[r#"ringhold_closes_total{reason="idle_timeout",shard="1"}"#],
        0.0
    );
    assert_eq!(
        m[r#"ringhold_build_info{engine="uring",version="0.1.0"}"#],
        1.0
    );
    assert!(
        m["ringhold_resident_bytes_per_connection"].is_nan(),
        "no connection yet"
    );

    let mut c0 = ShardCounters {
        active: 7,
        accepts: 10,
        bytes_received: 12345,
        bytes_sent: 12000,
        ..Default::default()
    };
    c0.closes[CloseReason::PeerClosed as usize] = 2;
    c0.closes[CloseReason::Reset as usize] = 1;
    c0.rejected[RejectReason::MaxConnections as usize] = 4;
    c0.buffers_total = 4096;
    c0.buffers_in_use = 17;
    c0.buffer_exhausted = 3;
    c0.submits = 99;
    c0.completions = 98;
    c0.throttled = 2;
    c0.pauses = 5;
    c0.accepts_deferred = 6;
    s0.flush(&c0);
    let c1 = ShardCounters {
        active: 5,
        accepts: 5,
        bytes_received: 1,
        ..Default::default()
    };
    s1.flush(&c1);

    let text = scrape(addr);
    if std::env::var_os("RINGHOLD_PRINT_SCRAPE").is_some() {
        println!("{text}");
    }
    let m = samples(&text);
    let g = |k: &str| *m.get(k).unwrap_or_else(|| panic!("missing {k} in\n{text}"));
    assert_eq!(g(r#"ringhold_connections_active{shard="0"}"#), 7.0);
    assert_eq!(g(r#"ringhold_connections_active{shard="1"}"#), 5.0);
    assert_eq!(g(r#"ringhold_accepts_total{shard="0"}"#), 10.0);
    assert_eq!(
        g(r#"ringhold_closes_total{reason="peer_closed",shard="0"}"#),
        2.0
    );
    assert_eq!(g(r#"ringhold_closes_total{reason="reset",shard="0"}"#), 1.0);
    assert_eq!(g(r#"ringhold_closes_total{reason="limit",shard="0"}"#), 0.0);
    assert_eq!(
        g(r#"ringhold_rejected_total{reason="max_connections",shard="0"}"#),
        4.0
    );
    assert_eq!(
        g(r#"ringhold_rejected_total{reason="fixed_file_table_full",shard="1"}"#),
        0.0
    );
    assert_eq!(g(r#"ringhold_bytes_received_total{shard="0"}"#), 12345.0);
    assert_eq!(g(r#"ringhold_bytes_sent_total{shard="0"}"#), 12000.0);
    assert_eq!(g(r#"ringhold_bytes_received_total{shard="1"}"#), 1.0);
    assert_eq!(g(r#"ringhold_buffers_capacity{shard="0"}"#), 4096.0);
    assert_eq!(g(r#"ringhold_buffers_in_use{shard="0"}"#), 17.0);
    assert_eq!(g(r#"ringhold_buffer_exhausted_total{shard="0"}"#), 3.0);
    assert_eq!(g(r#"ringhold_uring_submits_total{shard="0"}"#), 99.0);
    assert_eq!(g(r#"ringhold_uring_completions_total{shard="0"}"#), 98.0);
    assert_eq!(g(r#"ringhold_throttled_connections{shard="0"}"#), 2.0);
    assert_eq!(g(r#"ringhold_rate_limit_pauses_total{shard="0"}"#), 5.0);
    assert_eq!(g(r#"ringhold_accepts_deferred_total{shard="0"}"#), 6.0);
    let rss = g("ringhold_process_resident_memory_bytes");
    assert!(rss > 0.0);
    let per_conn = g("ringhold_resident_bytes_per_connection");
    assert!(
        per_conn > 0.0 && (per_conn * 12.0 - rss).abs() / rss < 0.5,
        "{per_conn} vs {rss}/12"
    );
    assert!(g("ringhold_metrics_scrapes_total") >= 1.0);

    // Every exported name is documented and has one TYPE line.
    for name in names::ALL {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert_eq!(
            text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "TYPE of {name}"
        );
    }

    // A gauge going down is reflected.
    c0.active = 1;
    s0.flush(&c0);
    let m = samples(&scrape(addr));
    assert_eq!(m[r#"ringhold_connections_active{shard="0"}"#], 1.0);

    // Memory per connection divides by every live shard's connections: 1 + 5 now.
    let per_conn = |text: &str| samples(text)["ringhold_resident_bytes_per_connection"];
    let rss_of = |text: &str| samples(text)["ringhold_process_resident_memory_bytes"];
    let before = render().expect("installed");
    let (pc, rss) = (per_conn(&before), rss_of(&before));
    assert!(
        (pc * 6.0 - rss).abs() / rss < 0.01,
        "2 shards, 6 connections: {pc} per connection of {rss}"
    );
    // A dropped shard no longer counts towards memory per connection: 1 connection left.
    drop(s1);
    let after = render().expect("installed");
    let (pc, rss) = (per_conn(&after), rss_of(&after));
    assert!(
        (pc - rss).abs() / rss < 0.01,
        "a dropped shard's 5 connections still count: {pc} per connection of {rss} with 1 left"
    );
    // And with no shard left, there is no connection: undefined (NaN), not a number.
    drop(s0);
    let none = render().expect("installed");
    assert!(
        per_conn(&none).is_nan(),
        "no shard left: {} per connection",
        per_conn(&none)
    );

    // promtool's linter on the real scrape.
    if let Some(promtool) = require("promtool", "prometheus", "exporter_end_to_end") {
        let mut cmd = Command::new(promtool);
        cmd.args(["check", "metrics"]);
        let (status, stdout, stderr) = run_with_input(cmd, text.clone().into_bytes(), secs(60));
        assert!(
            status.success(),
            "promtool check metrics failed:\n{}{stderr}\n--- scrape ---\n{text}",
            String::from_utf8_lossy(&stdout),
        );
    }

    // Other paths and methods.
    let resp = request(addr, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    load_side_on_the_same_recorder();
}

/// `ringhold load --metrics-listen`: its series on the same recorder, exact after a flush, the latency
/// histogram in its buckets (folded by `upkeep`, as with nobody scraping), promtool-clean.
fn load_side_on_the_same_recorder() {
    let addr = install_load("127.0.0.1:0".parse().unwrap(), "1/3", "websocket").unwrap();
    let m = LoadMetrics::new(&["refused", "reset", "bad_status", "handshake"]);
    let text = scrape(addr);
    let s = samples(&text);
    assert_eq!(s[r#"ringhold_load_connections{state="waiting"}"#], 0.0);
    assert_eq!(s[r#"ringhold_load_failures_total{cause="reset"}"#], 0.0);
    assert_eq!(
        s[r#"ringhold_load_build_info{part="1/3",protocol="websocket",version="0.1.0"}"#],
        1.0
    );
    assert!(s["ringhold_load_resident_memory_bytes"] > 0.0);

    let c = LoadCounters {
        states: [1, 2, 30, 4, 0],
        opened: 34,
        heartbeats_sent: 100,
        heartbeats_echoed: 97,
        heartbeats_late: 3,
        heartbeats_outstanding: 3,
        bytes_sent: 6400,
        bytes_received: 6208,
    };
    m.flush(&c, &[4, 0, 0, 2]);
    m.record_latency(0.0003, 5);
    m.record_latency(2.0, 1);
    upkeep();
    let text = scrape(addr);
    let s = samples(&text);
    let g = |k: &str| *s.get(k).unwrap_or_else(|| panic!("missing {k} in\n{text}"));
    assert_eq!(g(r#"ringhold_load_connections{state="open"}"#), 30.0);
    assert_eq!(g(r#"ringhold_load_connections{state="connecting"}"#), 2.0);
    assert_eq!(g(r#"ringhold_load_failures_total{cause="refused"}"#), 4.0);
    assert_eq!(g(r#"ringhold_load_failures_total{cause="handshake"}"#), 2.0);
    assert_eq!(
        g(r#"ringhold_load_failures_total{cause="bad_status"}"#),
        0.0
    );
    assert_eq!(g("ringhold_load_connections_opened_total"), 34.0);
    assert_eq!(g("ringhold_load_heartbeats_echoed_total"), 97.0);
    assert_eq!(g("ringhold_load_heartbeats_outstanding"), 3.0);
    assert_eq!(g("ringhold_load_bytes_received_total"), 6208.0);
    assert_eq!(
        g(r#"ringhold_load_latency_seconds_bucket{le="0.00025"}"#),
        0.0
    );
    assert_eq!(
        g(r#"ringhold_load_latency_seconds_bucket{le="0.0005"}"#),
        5.0
    );
    assert_eq!(g(r#"ringhold_load_latency_seconds_bucket{le="1"}"#), 5.0);
    assert_eq!(g(r#"ringhold_load_latency_seconds_bucket{le="2.5"}"#), 6.0);
    assert_eq!(g(r#"ringhold_load_latency_seconds_bucket{le="+Inf"}"#), 6.0);
    assert_eq!(g("ringhold_load_latency_seconds_count"), 6.0);
    assert!((g("ringhold_load_latency_seconds_sum") - 2.0015).abs() < 1e-9);
    for name in names::ALL_LOAD {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    assert!(text.contains("# TYPE ringhold_load_latency_seconds histogram"));
    if let Some(promtool) = require("promtool", "prometheus", "exporter_end_to_end") {
        let mut cmd = Command::new(promtool);
        cmd.args(["check", "metrics"]);
        let (status, stdout, stderr) = run_with_input(cmd, text.clone().into_bytes(), secs(60));
        assert!(
            status.success() && stdout.is_empty() && stderr.is_empty(),
            "promtool check metrics:\n{}{stderr}\n--- scrape ---\n{text}",
            String::from_utf8_lossy(&stdout),
        );
    }
}
