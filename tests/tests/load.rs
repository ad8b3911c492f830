//! `ringhold load` (the real binary) against `ringhold serve` (the real binary) on each engine: 1000
//! connections from 4 source addresses, every echo verified, the `--json` report parsed; and a target
//! nobody listens on, reported as refused with its hint and exit code 1. (The load generator's own
//! tests, with corrupting and silent servers, are in crates/ringhold-load/tests.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ringhold_tests::server::binary;
use serde_json::Value;

/// A `ringhold serve` child, killed on drop.
struct Serve {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// The engine is a stub on this branch (it says so when its shards start).
    fn is_stub(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains("not written yet")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringhold serve --engine ENGINE` on 127.0.0.1:0; `Err(log)` when it exits before listening
/// (e.g. an engine that is not written yet).
fn serve(engine: &str) -> Result<Serve, String> {
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--engine",
            engine,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--shards",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ringhold serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on ") {
                let addr = line[i + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(Ok(addr));
            }
            let mut l = log2.lock().unwrap_or_else(|e| e.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
        let all = log2.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = tx.send(Err(all));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => Ok(Serve { child, addr, log }),
        Ok(Err(log)) => {
            let _ = child.wait();
            Err(log)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringhold serve --engine {engine} did not say 'listening on' within 20 s");
        }
    }
}

/// Runs `ringhold load ARGS --json FILE`; returns (exit code, stdout, JSON).
fn load(name: &str, args: &[&str]) -> (i32, String, Value) {
    let json = std::env::temp_dir().join(format!(
        "ringhold-e2e-load-{name}-{}.json",
        std::process::id()
    ));
    let out = Command::new(binary())
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("running ringhold load");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no --json file ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (
        out.status.code().unwrap_or(-1),
        stdout,
        serde_json::from_str(&text).expect("--json parses"),
    )
}

fn holds_and_verifies(engine: &str) {
    let server = match serve(engine) {
        Ok(s) => s,
        Err(log) if log.contains("not written yet") => {
            eprintln!("SKIP load against --engine {engine}: the engine is a stub on this branch");
            return;
        }
        Err(log) => panic!("ringhold serve --engine {engine} exited:\n{log}"),
    };
    let (code, stdout, j) = load(
        engine,
        &[
            "--target",
            &server.addr,
            "--connections",
            "1000",
            "--sources",
            "4",
            "--interval",
            "500ms",
            "--duration",
            "3s",
        ],
    );
    if code != 0 && server.is_stub() {
        eprintln!("SKIP load against --engine {engine}: the engine is a stub on this branch");
        return;
    }
    assert_eq!(code, 0, "{stdout}\n{j:#}");
    assert!(stdout.contains("result         OK"), "{stdout}");
    assert_eq!(j["schema"], "ringhold-load/1");
    assert_eq!(j["ok"], true);
    assert_eq!(j["config"]["sources"], 4);
    assert_eq!(j["connections"]["connected"], 1000);
    assert_eq!(j["connections"]["alive"], 1000);
    assert_eq!(j["connections"]["failed"], 0);
    let sent = j["heartbeats"]["sent"].as_u64().expect("sent");
    assert!(sent >= 1000);
    assert_eq!(j["heartbeats"]["echoed"].as_u64(), Some(sent));
    assert_eq!(j["heartbeats"]["lost"], 0);
    assert_eq!(j["bytes"]["received"], j["bytes"]["sent"]);
    assert!(j["latency_us"]["p99"].as_u64().is_some());
}

#[test]
fn load_holds_1000_connections_on_uring() {
    holds_and_verifies("uring");
}

#[test]
fn load_holds_1000_connections_on_epoll() {
    holds_and_verifies("epoll");
}

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
