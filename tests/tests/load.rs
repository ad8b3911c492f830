//! `ringhold load` (the real binary) against `ringhold serve` (the real binary) on each engine: 1000
//! connections from 4 source addresses, every echo verified, the `--json` report parsed; and a target
//! nobody listens on, reported as refused with its hint and exit code 1. (The load generator's own
//! tests, with corrupting and silent servers, are in crates/ringhold-load/tests.)

use std::process::Command;

use ringhold_tests::server::binary;
use ringhold_tests::tools::run_with_input;
use ringhold_tests::{both_engines, flag_ms, secs, serial, Engine, Server};
use serde_json::Value;

/// Runs `ringhold load ARGS --json FILE` (bounded by its own `--duration` and, should it hang, by a
/// scaled deadline); returns (exit code, stdout, JSON).
fn load(name: &str, args: &[&str]) -> (i32, String, Value) {
    let json = std::env::temp_dir().join(format!(
        "ringhold-e2e-load-{name}-{}.json",
        std::process::id()
    ));
    let mut cmd = Command::new(binary());
    cmd.arg("load").args(args).arg("--json").arg(&json);
    // Nothing from the caller's environment may change the run (every flag has a RINGHOLD_* variable).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGHOLD_") {
            cmd.env_remove(k);
        }
    }
    let (status, stdout, stderr) = run_with_input(cmd, Vec::new(), secs(120));
    let stdout = String::from_utf8_lossy(&stdout).to_string();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no --json file ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let _ = std::fs::remove_file(&json);
    (
        status.code().unwrap_or(-1),
        stdout,
        serde_json::from_str(&text).expect("--json parses"),
    )
}

fn n(j: &Value, path: &str) -> u64 {
    let mut cur = j;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {j:#}"))
}

/// 1000 connections from 4 sources, a heartbeat each every 500 ms for 3 s: every one connected and
/// alive at the end, every heartbeat echoed byte-exact, and the byte counts add up.
fn load_holds_1000_connections(engine: Engine) {
    let _g = serial();
    let server = Server::start(engine, &[]);
    let target = server.addr.to_string();
    // The load generator's own timeouts, scaled like every deadline of the tests.
    let timeout = flag_ms(secs(5));
    let (code, stdout, j) = load(
        engine.name(),
        &[
            "--target",
            &target,
            "--connections",
            "1000",
            "--sources",
            "4",
            "--interval",
            "500ms",
            "--duration",
            "3s",
            "--connect-timeout",
            &timeout,
            "--echo-timeout",
            &timeout,
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{j:#}");
    assert!(stdout.contains("result         OK"), "{stdout}");
    assert_eq!(j["schema"], "ringhold-load/1");
    assert_eq!(j["ok"], true);
    assert_eq!(j["config"]["sources"], 4);
    assert_eq!(n(&j, "connections.attempted"), 1000);
    assert_eq!(n(&j, "connections.connected"), 1000);
    assert_eq!(n(&j, "connections.alive"), 1000);
    assert_eq!(n(&j, "connections.failed"), 0);
    assert!(j["ramp_us"].is_u64(), "the ramp-up finished: {j:#}");
    // Each connection sends its first heartbeat on connect, so 1000 of them say nothing about the
    // schedule: the 500 ms interval must have come round (a heartbeat sent, or skipped as late).
    let sent = n(&j, "heartbeats.sent");
    assert!(
        sent + n(&j, "heartbeats.late") > 1000,
        "no heartbeat after the first ones in 3 s at --interval 500ms: {j:#}"
    );
    assert_eq!(n(&j, "heartbeats.echoed"), sent);
    assert_eq!(n(&j, "heartbeats.lost"), 0);
    // Every heartbeat is 64 bytes, and every byte came back.
    assert_eq!(n(&j, "bytes.sent"), 64 * sent, "{j:#}");
    assert_eq!(n(&j, "bytes.received"), n(&j, "bytes.sent"), "{j:#}");
    assert!(n(&j, "latency_us.samples") >= sent, "{j:#}");
    assert!(n(&j, "latency_us.p50") <= n(&j, "latency_us.p99"), "{j:#}");
    // The server saw the same bytes.
    let bytes = n(&j, "bytes.sent") as f64;
    server.expect_metric(
        "ringhold_bytes_received_total",
        &[],
        &format!("{bytes} (what ringhold load sent)"),
        |v| v == bytes,
    );
    server.expect_metric(
        "ringhold_accepts_total",
        &[],
        "1000 (one per load connection)",
        |v| v == 1000.0,
    );
}

both_engines!(load_holds_1000_connections);

#[test]
fn load_reports_a_refused_target_with_its_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let (code, stdout, j) = load(
        "refused",
        &[
            "--target",
            &target,
            "--connections",
            "10",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(j["failures"]["refused"], 10);
    assert!(stdout.contains("nothing listens on --target"), "{stdout}");
}
