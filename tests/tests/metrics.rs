//! Metrics end to end: the real server's /metrics is exact (connections, bytes, closes by reason,
//! rejects), `promtool check metrics` finds nothing to say, the Grafana files reference each other, and
//! a real Prometheus scraping ringhold under load (both engines at once) answers every panel query of
//! the dashboard, with template variables and `$__rate_interval` substituted as Grafana does.

#[path = "support/dashboard.rs"]
mod dashboard;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dashboard::{dashboard, expand, grafana_dir, is_load_query, panel_queries, read};
use prometheus::Prometheus;
use ringhold_tests::metrics::{Scrape, LOAD_NAMES};
use ringhold_tests::{both_engines, net, secs, serial, server, tools, wait_until, Engine, Server};

/// Every metric ringhold exports (the contract with the dashboard and with users' alerts).
const NAMES: [&str; 37] = [
    "ringhold_connections_active",
    "ringhold_accepts_total",
    "ringhold_closes_total",
    "ringhold_rejected_total",
    "ringhold_bytes_received_total",
    "ringhold_bytes_sent_total",
    "ringhold_buffers_capacity",
    "ringhold_buffers_in_use",
    "ringhold_buffer_exhausted_total",
    "ringhold_uring_submits_total",
    "ringhold_uring_completions_total",
    "ringhold_throttled_connections",
    "ringhold_rate_limit_pauses_total",
    "ringhold_accepts_deferred_total",
    "ringhold_lingering_closes_total",
    "ringhold_linger_timeouts_total",
    "ringhold_connections_waiting_for_buffer",
    "ringhold_buffer_reserve_pauses_total",
    "ringhold_connections_parked",
    "ringhold_parks_total",
    "ringhold_output_pauses_total",
    "ringhold_http_responses_total",
    "ringhold_http_protocol_errors_total",
    "ringhold_http_continues_total",
    "ringhold_http_truncated_total",
    "ringhold_ws_upgrades_total",
    "ringhold_ws_rejected_total",
    "ringhold_ws_frames_total",
    "ringhold_ws_messages_total",
    "ringhold_ws_pings_total",
    "ringhold_ws_pongs_total",
    "ringhold_ws_closes_sent_total",
    "ringhold_ws_closes_received_total",
    "ringhold_process_resident_memory_bytes",
    "ringhold_resident_bytes_per_connection",
    "ringhold_build_info",
    "ringhold_metrics_scrapes_total",
];

const CLOSE_REASONS: [&str; 9] = [
    "peer_closed",
    "reset",
    "idle_timeout",
    "error",
    "shutdown",
    "limit",
    "send_timeout",
    "protocol_error",
    "buffer_pressure",
];
const REJECT_REASONS: [&str; 4] = [
    "max_connections",
    "fd_limit",
    "fixed_file_table_full",
    "shutdown",
];

fn scrape(server: &Server) -> Scrape {
    let addr = server.metrics;
    ringhold_tests::metrics::scrape(addr)
        .unwrap_or_else(|| panic!("GET http://{addr}/metrics failed"))
}

/// Waits (shards flush about once a second) until the sum of `name{labels}` equals `want`.
fn wait_metric(server: &Server, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let ok = wait_until(secs(15), || {
        last = server.scrape().and_then(|s| s.sum(name, labels));
        last == Some(want)
    });
    assert!(
        ok,
        "{name}{labels:?}: want {want}, last scraped {last:?}; scrape:\n{}",
        scrape(server).text
    );
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.sum(name, labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing from\n{}", s.text))
}

// ---------------------------------------------------------------------------------------------------
// The scrape itself.

/// Every series is there from the start, HELP/TYPE are right, and promtool's linter is silent.
fn scrape_is_complete_and_promtool_clean(engine: Engine) {
    let server = Server::start(engine, &[]);
    let mut c = server.connect();
    net::roundtrip(&mut c, b"hello metrics").unwrap();
    wait_metric(&server, "ringhold_bytes_sent_total", &[], 13.0);
    let s = scrape(&server);

    for name in NAMES {
        assert!(
            s.text.contains(&format!("# HELP {name} ")),
            "no HELP for {name} in\n{}",
            s.text
        );
        assert_eq!(
            s.text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "TYPE of {name} in\n{}",
            s.text
        );
    }
    for (n, _, _) in &s.samples {
        assert!(
            NAMES.contains(&n.as_str()),
            "unexpected metric {n}: add it to NAMES and the dashboard"
        );
    }
    assert_eq!(
        value(
            &s,
            "ringhold_build_info",
            &[
                ("engine", engine.name()),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );
    // Per shard, every reason exists at 0 or more (so that rate() works before the first event).
    for shard in ["0", "1"] {
        assert!(
            s.sum("ringhold_connections_active", &[("shard", shard)])
                .is_some(),
            "shard {shard}"
        );
        for r in CLOSE_REASONS {
            assert!(
                s.sum("ringhold_closes_total", &[("shard", shard), ("reason", r)])
                    .is_some(),
                "close {r}"
            );
        }
        for r in REJECT_REASONS {
            assert!(
                s.sum(
                    "ringhold_rejected_total",
                    &[("shard", shard), ("reason", r)]
                )
                .is_some(),
                "reject {r}"
            );
        }
    }
    assert!(
        value(&s, "ringhold_buffers_capacity", &[]) > 0.0,
        "buffers: {}",
        s.text
    );
    let rss = value(&s, "ringhold_process_resident_memory_bytes", &[]);
    assert!(rss > 0.0);
    let per_conn = value(&s, "ringhold_resident_bytes_per_connection", &[]);
    assert!(
        per_conn.is_finite() && per_conn > 0.0,
        "one connection open: {per_conn}"
    );
    if engine == Engine::Uring {
        assert!(value(&s, "ringhold_uring_submits_total", &[]) > 0.0);
        assert!(value(&s, "ringhold_uring_completions_total", &[]) > 0.0);
    }

    let Some(promtool) = tools::require(
        "promtool",
        "prometheus",
        "scrape_is_complete_and_promtool_clean",
    ) else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(s.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics ({}):\n{}{}\n--- scrape ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.text
    );
}

/// N clients ⇒ active sums to N; a payload of known size moves both byte counters by exactly its size;
/// graceful closes and resets are counted under their reasons.
fn values_are_exact(engine: Engine) {
    let _g = serial();
    const N: usize = 40;
    let server = Server::start(engine, &[]);
    let mut clients: Vec<TcpStream> = (0..N).map(|_| server.connect()).collect();
    wait_metric(&server, "ringhold_connections_active", &[], N as f64);
    wait_metric(&server, "ringhold_accepts_total", &[], N as f64);

    // 100 003 bytes through one connection, another 4 097 through a second.
    let payload = 100_003usize;
    let c = clients.pop().unwrap();
    let c = net::echo_stream(c, 7, payload, 4096, false).unwrap();
    clients.push(c);
    net::roundtrip(&mut clients[0], &net::Pattern::bytes(9, 4097)).unwrap();
    let total = (payload + 4097) as f64;
    wait_metric(&server, "ringhold_bytes_received_total", &[], total);
    wait_metric(&server, "ringhold_bytes_sent_total", &[], total);

    // 10 graceful closes (FIN): peer_closed.
    for c in clients.drain(..10) {
        c.shutdown(Shutdown::Write).unwrap();
        let mut c = c;
        assert!(
            matches!(net::read_end(&mut c), net::End::Eof),
            "server closes after the peer's FIN"
        );
    }
    wait_metric(
        &server,
        "ringhold_closes_total",
        &[("reason", "peer_closed")],
        10.0,
    );
    wait_metric(&server, "ringhold_connections_active", &[], (N - 10) as f64);

    // 5 resets (SO_LINGER 0): reset.
    for c in clients.drain(..5) {
        net::set_linger_zero(&c);
        drop(c);
    }
    wait_metric(
        &server,
        "ringhold_closes_total",
        &[("reason", "reset")],
        5.0,
    );
    wait_metric(&server, "ringhold_connections_active", &[], (N - 15) as f64);

    // Nothing else moved.
    let s = scrape(&server);
    for r in ["idle_timeout", "error", "shutdown", "limit"] {
        assert_eq!(
            value(&s, "ringhold_closes_total", &[("reason", r)]),
            0.0,
            "closes {r}"
        );
    }
    assert_eq!(value(&s, "ringhold_rejected_total", &[]), 0.0);
    assert_eq!(value(&s, "ringhold_accepts_total", &[]), N as f64);
    assert_eq!(value(&s, "ringhold_bytes_received_total", &[]), total);
    // Shard values add up to the totals.
    let per_shard: f64 = ["0", "1"]
        .iter()
        .map(|sh| value(&s, "ringhold_connections_active", &[("shard", sh)]))
        .sum();
    assert_eq!(per_shard, (N - 15) as f64);

    drop(clients);
    wait_metric(&server, "ringhold_connections_active", &[], 0.0);
    wait_metric(
        &server,
        "ringhold_closes_total",
        &[("reason", "peer_closed")],
        (N - 5) as f64,
    );
    wait_metric(&server, "ringhold_buffers_in_use", &[], 0.0);
}

/// Idle connections closed by `--idle-timeout` are counted as `idle_timeout`.
fn idle_timeout_closes_are_counted(engine: Engine) {
    let server = Server::start(engine, &["--idle-timeout", "1s"]);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    for c in &mut clients {
        assert!(
            matches!(net::read_end(c), net::End::Eof),
            "idle connection closed by the server"
        );
    }
    wait_metric(
        &server,
        "ringhold_closes_total",
        &[("reason", "idle_timeout")],
        3.0,
    );
    wait_metric(&server, "ringhold_connections_active", &[], 0.0);
}

/// Connections over `--max-connections` are counted as rejected `max_connections`.
fn rejects_are_counted(engine: Engine) {
    let server = Server::start(engine, &["--max-connections", "5"]);
    let held: Vec<TcpStream> = (0..5).map(|_| server.connect()).collect();
    wait_metric(&server, "ringhold_connections_active", &[], 5.0);
    let mut extra: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    for c in &mut extra {
        assert!(
            !matches!(net::read_end(c), net::End::Timeout),
            "over the limit: closed at once"
        );
    }
    wait_metric(
        &server,
        "ringhold_rejected_total",
        &[("reason", "max_connections")],
        3.0,
    );
    wait_metric(&server, "ringhold_connections_active", &[], 5.0);
    assert_eq!(value(&scrape(&server), "ringhold_accepts_total", &[]), 5.0);
    drop(held);
}

/// `--metrics-listen off` serves no metrics and says so by not announcing an address.
fn metrics_off_serves_nothing(engine: Engine) {
    let mut child = Command::new(server::binary())
        .args([
            "serve",
            "--engine",
            engine.name(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .args(["--shards", "1"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringhold");
    let mut log = String::new();
    let mut r = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        log.push_str(&line);
        if line.contains("listening on ") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("listening on "),
        "server did not start:\n{log}"
    );
    assert!(
        !log.contains("metrics on"),
        "metrics announced although off:\n{log}"
    );
}

both_engines!(
    scrape_is_complete_and_promtool_clean,
    values_are_exact,
    idle_timeout_closes_are_counted,
    rejects_are_counted,
    metrics_off_serves_nothing,
);

// ---------------------------------------------------------------------------------------------------
// The Grafana files.

/// Values of `key:` in a small YAML file (`key: value` or `- key: value`, quotes and comments stripped).
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l
                .split(" #")
                .next()
                .unwrap_or("")
                .trim()
                .trim_start_matches("- ");
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
        })
        .collect()
}

/// List items (`- item`) of a small YAML file, quotes stripped.
fn yaml_items(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- ")
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn dashboard_and_provisioning_reference_each_other() {
    let dir = grafana_dir();
    let dash_text = read(&dir.join("dashboards/ringhold.json"));
    let d = dashboard();
    assert!(
        !dash_text.contains("${DS_") && d.get("__inputs").is_none(),
        "no import-time ${{DS_…}} inputs"
    );
    assert_eq!(d["uid"], "ringhold");

    // Datasource: provisioned with a fixed uid, the dashboard's `datasource` variable defaults to it.
    let ds = read(&dir.join("provisioning/datasources/prometheus.yml"));
    let ds_uid = yaml_values(&ds, "uid");
    assert_eq!(
        ds_uid.len(),
        1,
        "one provisioned datasource uid: {ds_uid:?}"
    );
    assert_eq!(yaml_values(&ds, "type"), ["prometheus"]);
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("datasource")["current"]["value"],
        ds_uid[0].as_str(),
        "default datasource = provisioned uid"
    );
    assert_eq!(
        var("load")["definition"],
        "label_values(ringhold_load_build_info, instance)",
        "the load generators are their own variable (the server panels never list them)"
    );
    for name in ["instance", "shard", "load"] {
        assert_eq!(
            var(name)["datasource"]["uid"],
            "${datasource}",
            "variable {name}"
        );
    }

    // Every panel and query uses the datasource variable; every range vector is $__rate_interval.
    let mut ids = BTreeSet::new();
    let mut used_metrics = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices('[') {
                assert!(
                    expr[i..].starts_with("[$__rate_interval]"),
                    "panel {title}: range must be $__rate_interval: {expr}"
                );
            }
            let unknown: Vec<&str> = expr
                .split('$')
                .skip(1)
                .map(|v| {
                    v.trim_start_matches('{')
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap()
                })
                .filter(|v| !["__rate_interval", "instance", "shard", "load"].contains(v))
                .collect();
            assert!(
                unknown.is_empty(),
                "panel {title}: unknown variables {unknown:?}"
            );
            for n in NAMES.iter().chain(&LOAD_NAMES) {
                if expr.contains(n) {
                    used_metrics.insert(*n);
                }
            }
            // Load-generator metrics are filtered by $load, server metrics by $instance.
            if expr.contains("ringhold_load_") {
                assert!(
                    expr.contains("instance=~\"$load\""),
                    "panel {title}: {expr}"
                );
            }
        }
    }
    for n in NAMES
        .iter()
        .chain(&LOAD_NAMES)
        .filter(|n| **n != "ringhold_metrics_scrapes_total")
    {
        assert!(used_metrics.contains(n), "no panel shows {n}");
    }

    // Dashboards provider path = where docker-compose mounts grafana/dashboards.
    let prov = read(&dir.join("provisioning/dashboards/ringhold.yml"));
    let path = yaml_values(&prov, "path");
    assert_eq!(path.len(), 1, "{path:?}");
    let compose = read(&dir.join("docker-compose.yml"));
    let mounts = yaml_items(&compose);
    assert!(
        mounts.contains(&format!("./dashboards:{}:ro", path[0])),
        "dashboards mount at {}: {mounts:?}",
        path[0]
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./provisioning:/etc/grafana/provisioning")),
        "{mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./prometheus.yml:/etc/prometheus/prometheus.yml")),
        "{mounts:?}"
    );
    let home = yaml_values(&compose, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH");
    assert_eq!(home, [format!("{}/ringhold.json", path[0])]);
    for rel in mounts
        .iter()
        .filter_map(|m| m.strip_prefix("./"))
        .map(|m| m.split(':').next().unwrap())
    {
        assert!(
            dir.join(rel).exists(),
            "docker-compose mounts missing ./{rel}"
        );
    }

    // Datasource URL = Prometheus' listen address in docker-compose; timeInterval = scrape_interval.
    let url = yaml_values(&ds, "url");
    let listen = mounts
        .iter()
        .find_map(|m| m.strip_prefix("--web.listen-address=").map(String::from));
    assert_eq!(
        url,
        [format!(
            "http://{}",
            listen.expect("--web.listen-address in docker-compose")
        )]
    );
    let prom = read(&dir.join("prometheus.yml"));
    assert_eq!(
        yaml_values(&ds, "timeInterval"),
        yaml_values(&prom, "scrape_interval")
    );

    // prometheus.yml is valid and scrapes ringhold's default metrics address.
    let help = Command::new(server::binary())
        .args(["serve", "--help"])
        .output()
        .expect("ringhold serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let default = help
        .split("--metrics-listen")
        .nth(1)
        .and_then(|s| s.split("[default: ").nth(1))
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no --metrics-listen default in\n{help}"))
        .to_string();
    assert!(
        prom.contains(&format!("\"{default}\"")),
        "prometheus.yml should scrape {default}"
    );
    if let Some(promtool) = tools::require(
        "promtool",
        "prometheus",
        "dashboard_and_provisioning_reference_each_other",
    ) {
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(dir.join("prometheus.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// A real Prometheus against live servers under load.

/// Echo traffic and connection churn against one server until stopped (bounded in time by itself).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    _idle: Vec<TcpStream>,
}

impl Load {
    fn start(addr: SocketAddr, idle: usize, busy: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let idle = (0..idle).map(|_| net::connect(addr)).collect();
        let threads = (0..busy)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || -> Result<(), String> {
                    let deadline = Instant::now() + secs(300);
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let mut c = net::try_connect(addr)
                            .map_err(|e| format!("load {addr}, client {t}: connect: {e}"))?;
                        for _ in 0..50 {
                            i += 1;
                            let msg = net::Pattern::bytes(
                                (t * 1_000_000 + i) as u64,
                                1 + (i * 997) % 6000,
                            );
                            net::roundtrip(&mut c, &msg)
                                .map_err(|e| format!("load {addr}, client {t}: {e}"))?;
                            thread::sleep(Duration::from_millis(2));
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        // Wait for the server's close before the next connection.
                        let _ = c.shutdown(Shutdown::Write);
                        match net::read_end(&mut c) {
                            net::End::Eof => {}
                            other => {
                                return Err(format!(
                                    "load {addr}, client {t}: after our FIN expected EOF, got {other:?}"
                                ))
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            threads,
            _idle: idle,
        }
    }

    /// Stops the load; every client thread's error, and the panic of any that panicked.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(format!(
                    "load thread panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)")
                )),
            })
            .collect()
    }
}

#[test]
fn prometheus_answers_every_dashboard_panel_on_both_engines() {
    const TEST: &str = "prometheus_answers_every_dashboard_panel_on_both_engines";
    let Some(bin) = tools::require("prometheus", "prometheus", TEST) else {
        return;
    };
    let _g = serial();
    ringhold_tests::raise_own_nofile();

    let engines: Vec<Engine> = Engine::ALL
        .into_iter()
        .filter(|e| *e != Engine::Uring || ringhold_tests::uring_usable(TEST))
        .collect();
    const IDLE: usize = 40;
    const BUSY: usize = 3;
    // Idle clients stay for the whole run (also when it is stretched to render PNGs).
    let servers: Vec<Server> = engines
        .iter()
        .map(|e| Server::start(*e, &["--idle-timeout", "10m"]))
        .collect();
    let loads: Vec<Load> = servers
        .iter()
        .map(|s| Load::start(s.addr, IDLE, BUSY))
        .collect();
    let targets: Vec<SocketAddr> = servers.iter().map(|s| s.metrics).collect();
    let prom = Prometheus::start(&bin, &targets);

    // Grafana's $__rate_interval at a 1 s scrape interval is 4 s: two scrapes in it at least. A loaded
    // machine delays scrapes, so the short interval is scaled like a deadline (12 s at scale 3).
    let short_secs = (4.0 * ringhold_tests::scale()).ceil() as u64;
    let short = format!("{short_secs}s");
    // Enough scrapes of every target for rate() over the shortest interval, and then some.
    let want_scrapes = (short_secs + 4) as f64;
    let mut last = Vec::new();
    let ready = wait_until(secs(90), || {
        last = prom
            .values("count_over_time(up{job=\"ringhold\"}[1m]) and up == 1")
            .unwrap_or_default();
        last.len() == targets.len() && last.iter().all(|v| *v >= want_scrapes)
    });
    assert!(
        ready,
        "targets not scraped {want_scrapes} times: {last:?}; targets: {:?}",
        prom.api("/api/v1/targets", &[])
    );

    let d = dashboard();
    // The "Load generators" row needs load generators: tests/tests/load.rs checks it against two.
    let queries: Vec<_> = panel_queries(&d)
        .into_iter()
        .filter(|(_, _, e)| !is_load_query(e))
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // Template variable queries, as Grafana runs them.
    let instances = prom
        .api(
            "/api/v1/label/instance/values",
            &[("match[]", "ringhold_build_info")],
        )
        .unwrap();
    let instances: BTreeSet<String> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = targets.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        instances, expected,
        "label_values(ringhold_build_info, instance)"
    );
    let shards = prom
        .api(
            "/api/v1/label/shard/values",
            &[("match[]", "ringhold_connections_active{instance=~\".*\"}")],
        )
        .unwrap();
    assert_eq!(
        shards,
        serde_json::json!(["0", "1"]),
        "label_values(…, shard)"
    );

    // Every panel query returns data: all instances and each one, all shards and one, short and long
    // rate intervals.
    let mut failures = Vec::new();
    let mut answered = 0;
    let mut combos: Vec<(String, String, String)> = Vec::new();
    for ri in [short.as_str(), "1m"] {
        combos.push((ri.into(), ".*".into(), ".*".into()));
        for t in &targets {
            combos.push((ri.into(), t.to_string(), ".*".into()));
            combos.push((ri.into(), t.to_string(), "0".into()));
        }
    }
    for (title, refid, expr) in &queries {
        for (ri, inst, shard) in &combos {
            let e = expand(expr, ri, inst, shard);
            match prom.query(&e) {
                Ok(r) if !r.is_empty() => answered += 1,
                Ok(_) => failures.push(format!("{title} {refid}: no data for {e}")),
                Err(err) => failures.push(format!("{title} {refid}: {err}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries failed:\n{}",
        failures.len(),
        answered + failures.len(),
        failures.join("\n")
    );

    // The numbers mean what the panels say, per engine.
    for (server, target) in servers.iter().zip(&targets) {
        let one = |expr: &str| -> f64 {
            let e = expand(expr, &short, &target.to_string(), ".*");
            let v = prom.values(&e).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(v.len(), 1, "{e}: {v:?}");
            v[0]
        };
        let name = server.engine.name();
        let active = one("sum(ringhold_connections_active{instance=~\"$instance\"})");
        // A busy client's previous connection may still await its close completion when the next one is
        // accepted, hence up to two per busy client.
        assert!(
            (IDLE as f64..=(IDLE + 2 * BUSY) as f64).contains(&active),
            "{name}: active {active}"
        );
        assert!(one("sum(rate(ringhold_bytes_received_total{instance=~\"$instance\"}[$__rate_interval]))") > 0.0, "{name}: bytes in");
        assert!(
            one("sum(rate(ringhold_bytes_sent_total{instance=~\"$instance\"}[$__rate_interval]))")
                > 0.0,
            "{name}: bytes out"
        );
        let per_conn = one("ringhold_resident_bytes_per_connection{instance=~\"$instance\"}");
        assert!(
            per_conn.is_finite() && per_conn > 0.0,
            "{name}: per connection {per_conn}"
        );
        let build = prom
            .query(&format!("ringhold_build_info{{instance=\"{target}\"}}"))
            .unwrap();
        assert_eq!(build[0]["metric"]["engine"], name);
        if server.engine == Engine::Uring {
            assert!(one("sum(rate(ringhold_uring_completions_total{instance=~\"$instance\"}[$__rate_interval]))") > 0.0);
        }
    }
    // Churn (a reconnect every 50 messages per busy client) shows as accepts and peer_closed closes.
    let accepts = prom
        .values("sum by (instance) (increase(ringhold_accepts_total[1m]))")
        .unwrap();
    assert!(accepts.iter().all(|v| *v > 0.0), "accepts: {accepts:?}");

    // Optional: let the load run a while longer, then render the key panels of each engine from this
    // Prometheus to PNGs (grafana/render_panels.py, matplotlib):
    // RINGHOLD_DASHBOARD_PNG=<dir> [RINGHOLD_DASHBOARD_SECS=90] writes <dir>/dashboard-<engine>.png.
    if let Some(dir) = std::env::var_os("RINGHOLD_DASHBOARD_PNG") {
        let extra: u64 = std::env::var("RINGHOLD_DASHBOARD_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(90);
        thread::sleep(Duration::from_secs(extra.min(240)));
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import matplotlib"])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("a python3 with matplotlib (apt-get install python3-matplotlib)");
        for (server, target) in servers.iter().zip(&targets) {
            let out = Path::new(&dir).join(format!("dashboard-{}.png", server.engine.name()));
            let minutes = format!("{:.1}", (extra as f64 + 15.0) / 60.0);
            let title = format!(
                "ringhold --engine {}: {IDLE} idle + {BUSY} busy echo clients (reconnecting every 50 messages)",
                server.engine.name()
            );
            let st = Command::new(python)
                .arg(grafana_dir().join("render_panels.py"))
                .args([
                    "--prometheus",
                    &format!("http://{}", prom.addr),
                    "--instance",
                    &target.to_string(),
                ])
                .args(["--minutes", &minutes, "--title", &title, "--out"])
                .arg(&out)
                .status()
                .expect("run render_panels.py");
            assert!(st.success(), "render_panels.py failed");
        }
    }

    let mut summary = BTreeMap::new();
    for (server, load) in servers.iter().zip(loads) {
        summary.insert(server.engine.name(), load.finish());
    }
    assert!(
        summary.values().all(|e| e.is_empty()),
        "echo errors under load: {summary:#?}"
    );
    eprintln!(
        "{TEST}: {answered} panel queries answered ({} panels' queries × {} substitutions)",
        queries.len(),
        combos.len()
    );
}
