//! A `ringhold serve` child process on `127.0.0.1:0`, its address read from its own log, its stderr
//! kept for assertions, killed when the handle drops.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{procfs, Engine};

/// Path of the `ringhold` binary: `$RINGHOLD_BIN`, else `target/<profile>/ringhold` next to this test
/// executable (which lives in `target/<profile>/deps/`). `cargo test --workspace` builds it, because the
/// `ringhold` package has integration tests of its own.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGHOLD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("ringhold");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo test --workspace` does, or `cargo build -p ringhold` \
         with the same profile), or point RINGHOLD_BIN at a ringhold binary",
        bin.display()
    );
    bin
}

/// The child's stderr, line by line, as it arrives.
#[derive(Default)]
struct Log {
    text: Mutex<(String, bool)>,
    changed: Condvar,
}

impl Log {
    fn push(&self, line: &str) {
        let mut g = self.text.lock().unwrap_or_else(|e| e.into_inner());
        g.0.push_str(line);
        g.0.push('\n');
        self.changed.notify_all();
    }

    fn close(&self) {
        let mut g = self.text.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        self.changed.notify_all();
    }

    /// Waits until `pred(text)` holds, the stream ends, or `timeout` passes.
    fn wait<T>(&self, timeout: Duration, mut pred: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut g = self.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = pred(&g.0) {
                return Some(v);
            }
            let now = Instant::now();
            if g.1 || now >= deadline {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn snapshot(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// Options for one server; [`ServerBuilder::start`] runs it.
pub struct ServerBuilder {
    engine: Engine,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    shards: u16,
}

impl ServerBuilder {
    /// Extra `serve` flags, e.g. `["--idle-timeout", "1s"]`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Number of shards (`--shards`); 2 unless set (this machine has 2 cores).
    pub fn shards(mut self, n: u16) -> Self {
        self.shards = n;
        self
    }

    /// Sets both the soft and the hard RLIMIT_NOFILE of the child before it runs (ringhold raises its
    /// soft limit to the hard one, so both must be set).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Starts the server and waits for its `listening on <addr>` line; panics with its log if it exits
    /// or says nothing within the deadline.
    pub fn start(self) -> Server {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args(["--engine", self.engine.name()])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--shards", &self.shards.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Nothing from the caller's environment may change the server under test.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGHOLD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG").env("RUST_BACKTRACE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            set_child_nofile(&mut cmd, n);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        thread::Builder::new()
            .name("ringhold-stderr".into())
            .spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => sink.push(line.trim_end_matches(['\n', '\r'])),
                    }
                }
                sink.close();
            })
            .expect("spawn stderr reader");
        let addr = log.wait(crate::secs(30), |t| {
            parse_after(t, "listening on ").and_then(|s| s.parse().ok())
        });
        let mut server = Server {
            child,
            engine: self.engine,
            addr: "0.0.0.0:0".parse().expect("addr"),
            metrics: "0.0.0.0:0".parse().expect("addr"),
            log,
            exited: None,
        };
        let Some(addr) = addr else {
            let status = server.child.try_wait().ok().flatten();
            panic!(
                "ringhold serve --engine {} did not print `listening on` (exit status {status:?}); its log:\n{}",
                self.engine.name(),
                server.log.snapshot()
            );
        };
        server.addr = addr;
        // The server announces its metrics address before `listening on`; every server started here
        // has one (`--metrics-listen 127.0.0.1:0`), and a test that checks a metric must be able to.
        let Some(metrics) = parse_after(&server.log.snapshot(), "metrics on http://")
            .and_then(|s| s.trim_end_matches("/metrics").parse::<SocketAddr>().ok())
            .filter(|a| a.port() != 0)
        else {
            panic!(
                "ringhold serve --engine {} did not announce `metrics on http://<addr>/metrics` \
                 before `listening on`; its log:\n{}",
                self.engine.name(),
                server.log.snapshot()
            );
        };
        server.metrics = metrics;
        server
    }
}

/// The word that follows `marker` on the first line that has it.
fn parse_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let rest = &text[at..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

fn set_child_nofile(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running `ringhold serve`.
pub struct Server {
    child: Child,
    pub engine: Engine,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its /metrics endpoint (every server the harness starts has one).
    pub metrics: SocketAddr,
    log: Arc<Log>,
    exited: Option<ExitStatus>,
}

impl Server {
    pub fn builder(engine: Engine) -> ServerBuilder {
        ServerBuilder {
            engine,
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            shards: 2,
        }
    }

    /// Starts a server with these extra flags.
    pub fn start(engine: Engine, args: &[&str]) -> Server {
        Server::builder(engine).args(args.iter().copied()).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A blocking client connection with 30 s read/write timeouts (so a test never hangs forever).
    pub fn connect(&self) -> TcpStream {
        match crate::net::try_connect(self.addr) {
            Ok(s) => s,
            Err(e) => {
                panic!(
                    "connect to ringhold ({}) at {}: {e}{}",
                    self.engine.name(),
                    self.addr,
                    if procfs::is_gone(self.child.id()) {
                        " — the server process has exited"
                    } else {
                        ""
                    }
                )
            }
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.snapshot()
    }

    /// Waits until a line of the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.log
            .wait(timeout, |t| t.contains(needle).then_some(()))
            .is_some()
    }

    /// Panics (with the log) if the server has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_exit_status() {
            panic!(
                "ringhold ({}) exited unexpectedly with {st}; its log:\n{}",
                self.engine.name(),
                self.log()
            );
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the server to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // The stderr reader sees EOF when the process (and every thread of it) has gone.
        self.log.wait(timeout, |_| None::<()>);
        let deadline = Instant::now() + crate::secs(2).min(timeout);
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        procfs::rss_bytes(self.child.id()).expect("VmRSS of the server")
    }

    /// User + system CPU time of the server process, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::cpu_ticks(self.child.id()).expect("CPU time of the server")
    }

    /// Descriptors the server process has open.
    pub fn open_fds(&self) -> usize {
        procfs::open_fds(self.child.id()).expect("open fds of the server")
    }

    /// Scrapes /metrics; `None` when the scrape failed.
    pub fn scrape(&self) -> Option<crate::metrics::Scrape> {
        crate::metrics::scrape(self.metrics)
    }

    /// Waits until the sum of `name` over the samples that carry `labels` (e.g. over shards) satisfies
    /// `pred` — counters are flushed about once a second — and panics with the last value (`None`:
    /// the scrape failed or has no such sample) after 10 s (scaled).
    pub fn expect_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) {
        let addr = self.metrics;
        let mut last = None;
        let ok = crate::wait_until(crate::secs(10), || {
            last = crate::metrics::scrape(addr).and_then(|s| s.sum(name, labels));
            last.is_some_and(&pred)
        });
        assert!(
            ok,
            "metric {name}{labels:?} = {last:?} at http://{addr}/metrics, expected {what} ({})",
            self.engine.name()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- ringhold --engine {} log ----\n{}---- end of log ----",
                self.engine.name(),
                self.log()
            );
        }
    }
}
