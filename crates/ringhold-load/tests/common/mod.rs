//! What the load tests share: a Python server started per test (raw TCP echo, HTTP, WebSocket),
//! `ringhold load` run in this process with its JSON report, and a JSON number lookup.
//!
//! A missing python3 (or python `websockets`) is a SKIP, and a failure under `CI` (ringhold-tests'
//! convention: `.ci/run` installs both). The load's connect and echo timeouts are scaled by
//! RINGHOLD_TEST_TIMEOUT_SCALE like every deadline of the tests.

#![allow(dead_code)] // each test binary uses its part

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use ringhold_load::LoadArgs;
use ringhold_tests::tools::{python3, Client};
use ringhold_tests::{flag_ms, secs, skip};
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

/// A Python server on 127.0.0.1:0 that prints `listening on ADDR` first, killed on drop.
pub struct EchoServer {
    _child: Client,
    pub addr: String,
}

/// The exit code of tests/ws_echo_server.py when `websockets` is not importable.
const NO_WEBSOCKETS: i32 = 3;

impl EchoServer {
    /// The raw TCP echo server (`tests/echo_server.py`). `None` when python3 is missing (after
    /// printing SKIP; under `CI` that panics instead).
    pub fn start(test: &str, extra: &[&str]) -> Option<EchoServer> {
        let python = python3(test)?;
        Some(Self::start_script(&python, "tests/echo_server.py", extra))
    }

    /// Python's http.server, HTTP/1.1 keep-alive, answering `?length=N`.
    pub fn start_http(test: &str, extra: &[&str]) -> Option<EchoServer> {
        let python = python3(test)?;
        Some(Self::start_script(&python, "tests/http_server.py", extra))
    }

    /// The python `websockets` echo server (`tests/ws_echo_server.py`), run by the interpreter in
    /// `RINGHOLD_PY_WEBSOCKETS` (set by .ci/run), else `~/.cache/ringhold-ci/ws/bin/python`, else
    /// python3. Without `websockets` the test is skipped with a note, except under `CI`, where it
    /// fails.
    pub fn start_websockets(test: &str, extra: &[&str]) -> Option<EchoServer> {
        let python = match std::env::var_os("RINGHOLD_PY_WEBSOCKETS") {
            Some(p) => PathBuf::from(p),
            None => {
                let venv = std::env::var_os("HOME")
                    .map(|h| Path::new(&h).join(".cache/ringhold-ci/ws/bin/python"))
                    .filter(|p| p.exists());
                match venv {
                    Some(p) => p,
                    None => python3(test)?,
                }
            }
        };
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ws_echo_server.py");
        let mut cmd = Command::new(&python);
        cmd.arg("-u").arg(&script).args(extra);
        let mut child = Client::spawn(cmd);
        // The first line, or nothing when the script exits at once (no `websockets`).
        let line = child.try_line(secs(20));
        match line {
            Some(line) => Some(EchoServer {
                addr: listening_addr(&line, &script),
                _child: child,
            }),
            None => {
                let status = child.wait(secs(20));
                if status.code() == Some(NO_WEBSOCKETS) {
                    skip(&format!(
                        "{test}: python `websockets` is not installed for {} (`bash .ci/run` installs it)",
                        python.display()
                    ));
                    return None;
                }
                panic!(
                    "{} did not start ({status}); stderr:\n{}",
                    script.display(),
                    child.stderr()
                );
            }
        }
    }

    fn start_script(python: &Path, script: &str, extra: &[&str]) -> EchoServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(&script).args(extra);
        let mut child = Client::spawn(cmd);
        let line = child.line(secs(20));
        EchoServer {
            addr: listening_addr(&line, &script),
            _child: child,
        }
    }
}

fn listening_addr(line: &str, script: &Path) -> String {
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!(
                "{}: expected 'listening on ADDR', got {line:?}",
                script.display()
            )
        })
        .to_string()
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringhold-load-{name}-{}.json", std::process::id()))
}

/// Runs `ringhold load` with `args` in this process; returns its exit code and its JSON report.
/// Connect and echo timeouts are 5 s scaled unless `args` sets them.
pub fn load(target: &str, name: &str, args: &[&str]) -> (ExitCode, Value) {
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

/// The number at dotted `path` in `v`.
pub fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}
