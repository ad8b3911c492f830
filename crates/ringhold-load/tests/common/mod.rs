//! What the load tests share: a Python server started per test, `ringhold load` run in this
//! process with its JSON report, and a JSON number lookup.

#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};

use clap::Parser;
use ringhold_load::LoadArgs;
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

/// A Python server on 127.0.0.1:0 that prints `listening on ADDR` first, killed on drop.
pub struct EchoServer {
    child: Child,
    pub addr: String,
}

impl EchoServer {
    /// The raw TCP echo server (`tests/echo_server.py`); `None` (with the reason printed) when
    /// python3 is missing.
    pub fn start(extra: &[&str]) -> Option<EchoServer> {
        Self::start_script("python3", "tests/echo_server.py", extra)
    }

    /// The python `websockets` echo server (`tests/ws_echo_server.py`), run by the interpreter in
    /// `RINGHOLD_PY_WEBSOCKETS` (set by .ci/run), else `~/.cache/ringhold-ci/ws/bin/python`, else
    /// python3. Without `websockets` the test is skipped with a note, except under CI, where it
    /// fails.
    pub fn start_websockets(extra: &[&str]) -> Option<EchoServer> {
        let python = std::env::var("RINGHOLD_PY_WEBSOCKETS").unwrap_or_else(|_| {
            let venv = std::env::var("HOME")
                .map(|h| PathBuf::from(h).join(".cache/ringhold-ci/ws/bin/python"))
                .ok()
                .filter(|p| p.exists());
            venv.map_or("python3".to_string(), |p| p.to_string_lossy().into_owned())
        });
        Self::start_script(&python, "tests/ws_echo_server.py", extra)
    }

    fn start_script(python: &str, script: &str, extra: &[&str]) -> Option<EchoServer> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
        let child = Command::new(python)
            .arg(&script)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIPPED: {python} is needed for {}: {e}", script.display());
                return None;
            }
        };
        let mut line = String::new();
        let out = child.stdout.take().expect("piped stdout");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("reading the server's first line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait().ok().and_then(|s| s.code());
            if status == Some(3) && std::env::var_os("CI").is_none() {
                eprintln!(
                    "SKIPPED: python `websockets` is not installed for {python} (.ci/run installs it)"
                );
                return None;
            }
            panic!("{} did not start (exit {status:?})", script.display());
        };
        let addr = addr.to_string();
        Some(EchoServer { child, addr })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringhold-load-{name}-{}.json", std::process::id()))
}

/// Runs `ringhold load` with `args` in this process; returns its exit code and its JSON report.
pub fn load(target: &str, name: &str, args: &[&str]) -> (ExitCode, Value) {
    let json = json_path(name);
    let json_s = json.to_string_lossy().to_string();
    let mut argv = vec!["load", "--target", target, "--json", &json_s];
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
