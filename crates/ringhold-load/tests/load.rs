//! `ringhold load` against real echo servers (a small Python asyncio server started per test):
//! a healthy server, one that corrupts a byte, and a port nobody listens on. Each run is bounded
//! (a few seconds) and stays far below the fd limit (the load side holds no process fds per
//! connection; the Python server holds one per connection).
//!
//! The tests run one at a time ([`serial`]): each Python server is single-threaded, and five loads
//! at once on a small machine would make their echoes late. The load's own connect and echo timeouts
//! are scaled by RINGHOLD_TEST_TIMEOUT_SCALE like every deadline of the tests; python3 missing is a
//! SKIP, and a failure under `CI`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;
use ringhold_load::LoadArgs;
use ringhold_tests::tools::{python3, Client};
use ringhold_tests::{flag_ms, secs, serial};
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

/// A Python echo server on 127.0.0.1:0, killed on drop.
struct EchoServer {
    _child: Client,
    addr: String,
}

impl EchoServer {
    /// `None` when python3 is missing (after printing SKIP; under `CI` that panics instead).
    fn start(test: &str, extra: &[&str]) -> Option<EchoServer> {
        let python = python3(test)?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/echo_server.py");
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(script).args(extra);
        let mut child = Client::spawn(cmd);
        let line = child.line(secs(20));
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("echo_server.py: expected 'listening on ADDR', got {line:?}"))
            .to_string();
        Some(EchoServer {
            _child: child,
            addr,
        })
    }
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringhold-load-{name}-{}.json", std::process::id()))
}

/// Runs `ringhold load` with `args` in this process; returns its exit code and its JSON report.
/// Connect and echo timeouts are 5 s scaled unless `args` sets them.
fn load(target: &str, name: &str, args: &[&str]) -> (ExitCode, Value) {
    let json = json_path(name);
    let json_s = json.to_string_lossy().to_string();
    let timeout = flag_ms(secs(5));
    let mut argv = vec!["load", "--target", target, "--json", &json_s];
    for flag in ["--connect-timeout", "--echo-timeout"] {
        if !args.contains(&flag) {
            argv.extend_from_slice(&[flag, &timeout]);
        }
    }
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("valid flags");
    let code = ringhold_load::run(cli.load);
    let text = std::fs::read_to_string(&json).expect("the --json file was written");
    let _ = std::fs::remove_file(&json);
    (
        code,
        serde_json::from_str(&text).expect("--json output parses"),
    )
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn holds_1000_connections_from_4_sources_and_verifies_every_echo() {
    let _g = serial();
    let Some(server) = EchoServer::start("holds_1000_connections", &[]) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "ok",
        &[
            "--connections",
            "1000",
            "--sources",
            "4",
            "--interval",
            "500ms",
            "--duration",
            "3s",
            "--workers",
            "2",
        ],
    );
    assert_eq!(j["schema"], "ringhold-load/1");
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(n(&j, "config.connections"), 1000);
    assert_eq!(n(&j, "config.sources"), 4);
    assert_eq!(n(&j, "config.workers"), 2);
    assert_eq!(n(&j, "connections.attempted"), 1000);
    assert_eq!(n(&j, "connections.connected"), 1000);
    assert_eq!(n(&j, "connections.alive"), 1000);
    assert_eq!(n(&j, "connections.failed"), 0);
    for cause in [
        "refused",
        "reset",
        "timed_out",
        "addr_not_available",
        "fd_limit",
        "mismatch",
        "closed_by_server",
    ] {
        assert_eq!(n(&j, &format!("failures.{cause}")), 0, "{cause}");
    }
    // Every connection sends at once on connect (1000), then every 500ms: the interval came round.
    assert!(
        n(&j, "heartbeats.sent") + n(&j, "heartbeats.late") > 1000,
        "{j:#}"
    );
    assert_eq!(n(&j, "heartbeats.echoed"), n(&j, "heartbeats.sent"));
    assert_eq!(n(&j, "heartbeats.lost"), 0);
    assert_eq!(n(&j, "bytes.received"), n(&j, "bytes.sent"));
    assert_eq!(n(&j, "bytes.sent"), 64 * n(&j, "heartbeats.sent"));
    assert!(n(&j, "latency_us.samples") >= n(&j, "heartbeats.echoed"));
    assert!(n(&j, "latency_us.p50") <= n(&j, "latency_us.p99"));
    assert!(j["hints"].as_object().is_some_and(|h| h.is_empty()));
}

#[test]
fn syscall_setup_and_constant_rate_work_too() {
    let _g = serial();
    let Some(server) = EchoServer::start("syscall_setup_and_constant_rate_work_too", &[]) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "syscall",
        &[
            "--connections",
            "200",
            "--sources",
            "127.0.0.2-127.0.0.3",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--setup",
            "syscall",
        ],
    );
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(j["config"]["setup"], "syscall");
    assert_eq!(n(&j, "connections.connected"), 200);
    assert_eq!(n(&j, "config.interval_us"), 500_000); // 200 connections / 400 per second
    assert_eq!(n(&j, "heartbeats.lost"), 0);
}

#[test]
fn a_corrupted_echo_is_detected_and_counted_as_mismatch() {
    let _g = serial();
    let Some(server) = EchoServer::start(
        "a_corrupted_echo_is_detected_and_counted_as_mismatch",
        &["--corrupt-after", "100"],
    ) else {
        return;
    };
    // Byte 100 of each connection's stream is the 37th byte of its second heartbeat. (A longer run
    // changes nothing once every connection has failed: the duration is scaled, so that a slow
    // machine still sends every second heartbeat.)
    let duration = flag_ms(secs(2));
    let (code, j) = load(
        &server.addr,
        "mismatch",
        &[
            "--connections",
            "50",
            "--interval",
            "200ms",
            "--duration",
            &duration,
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(j["ok"], false);
    assert_eq!(n(&j, "connections.connected"), 50);
    assert_eq!(n(&j, "failures.mismatch"), 50, "{j:#}");
    assert_eq!(n(&j, "connections.failed"), 50);
    assert_eq!(n(&j, "connections.alive"), 0);
    // The first heartbeat of each came back intact, the second did not.
    assert_eq!(n(&j, "heartbeats.echoed"), 50);
    assert_eq!(n(&j, "heartbeats.lost"), 50);
    assert!(j["hints"]["mismatch"]
        .as_str()
        .is_some_and(|h| h.contains("echo differed")));
}

#[test]
fn a_refused_target_is_counted_as_refused_with_its_hint() {
    let _g = serial();
    // A port that was free a moment ago: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let (code, j) = load(
        &target,
        "refused",
        &["--connections", "20", "--sources", "2", "--duration", "1s"],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(j["ok"], false);
    assert_eq!(n(&j, "connections.attempted"), 20);
    assert_eq!(n(&j, "connections.connected"), 0);
    assert_eq!(n(&j, "failures.refused"), 20, "{j:#}");
    assert!(j["hints"]["refused"]
        .as_str()
        .is_some_and(|h| h.contains("nothing listens")));
    assert_eq!(j["latency_us"], Value::Null);
}

#[test]
fn a_server_that_never_echoes_times_out_each_connection() {
    let _g = serial();
    let Some(server) = EchoServer::start(
        "a_server_that_never_echoes_times_out_each_connection",
        &["--silent"],
    ) else {
        return;
    };
    let (code, j) = load(
        &server.addr,
        "silent",
        &[
            "--connections",
            "30",
            "--interval",
            "100ms",
            "--echo-timeout",
            "300ms",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(n(&j, "connections.connected"), 30);
    assert_eq!(n(&j, "failures.timed_out"), 30, "{j:#}");
    assert_eq!(n(&j, "connections.alive"), 0);
    assert_eq!(n(&j, "heartbeats.echoed"), 0);
    assert_eq!(n(&j, "heartbeats.sent"), 30); // one each: the next ones were due while it was outstanding
    assert_eq!(n(&j, "heartbeats.lost"), 30);
    assert!(n(&j, "heartbeats.late") > 0);
    assert!(j["hints"]["timed_out"]
        .as_str()
        .is_some_and(|h| h.contains("--echo-timeout")));
}
