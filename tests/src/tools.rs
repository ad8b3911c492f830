//! External client programs (python3 scripts in tests/clients/, nc, socat): finding them, skipping with
//! a reason when one is missing (a failure under `CI`, where `.ci/run` installs them), and running them
//! as bounded subprocesses that talk over stdin/stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// tests/clients/, where the python3 client scripts live.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Looks `name` up in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tool, or `None` after printing why the test is skipped. Under `CI` (set by the CI runner) a
/// missing tool fails the test instead: `.ci/run` installs every tool the tests use.
pub fn require(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    if let Some(p) = which(name) {
        return Some(p);
    }
    crate::skip(&format!(
        "{test}: `{name}` is not installed (Debian package {package}; `bash .ci/run` installs it)"
    ));
    None
}

/// python3, or `None` after printing why the test is skipped.
pub fn python3(test: &str) -> Option<PathBuf> {
    require("python3", "python3", test)
}

/// A client subprocess with piped stdin/stdout; its stdout arrives line by line, its stderr is kept.
/// Killed on drop.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    name: String,
}

impl Client {
    /// Starts `cmd` (stdin, stdout, stderr piped).
    pub fn spawn(mut cmd: Command) -> Client {
        let name = format!("{cmd:?}");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            lines: rx,
            stderr,
            name,
        }
    }

    /// A python3 script from tests/clients/ with arguments.
    pub fn python(python: &Path, script: &str, args: &[String]) -> Client {
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(clients_dir().join(script)).args(args);
        Client::spawn(cmd)
    }

    /// Sends one line on stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{line}");
            let _ = i.flush();
        }
    }

    /// Closes stdin (the scripts take that as "finish").
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, or `None` when the client closed its stdout (exited) without one;
    /// waits at most `timeout`, then panics with the client's stderr.
    pub fn try_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{}: no output line within {timeout:?} (status {:?}); stderr:\n{}",
                self.name,
                self.child.try_wait().ok().flatten(),
                self.stderr()
            ),
        }
    }

    /// The next stdout line, waiting at most `timeout`; panics with the client's stderr otherwise.
    pub fn line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l,
            Err(_) => panic!(
                "{}: no output line within {timeout:?} (status {:?}); stderr:\n{}",
                self.name,
                self.child.try_wait().ok().flatten(),
                self.stderr()
            ),
        }
    }

    /// The next stdout line parsed as JSON.
    pub fn json(&mut self, timeout: Duration) -> serde_json::Value {
        let l = self.line(timeout);
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", self.name))
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the client to exit; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still running after {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All remaining stdout lines (after the process closed stdout).
    pub fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion with `input` on stdin, within `timeout`; returns (status, stdout, stderr).
pub fn run_with_input(
    mut cmd: Command,
    input: Vec<u8>,
    timeout: Duration,
) -> (ExitStatus, Vec<u8>, String) {
    let name = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let mut err = child.stderr.take().expect("stderr");
    let ereader = thread::spawn(move || {
        let mut v = String::new();
        let _ = err.read_to_string(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    (
        status,
        reader.join().unwrap_or_default(),
        ereader.join().unwrap_or_default(),
    )
}
