//! The command line of `ringhold serve`: bad values and a busy port give one clear error line and a
//! non-zero exit (no panic, no backtrace); `--help` explains every flag; every flag can come from a
//! `RINGHOLD_*` environment variable. (Having integration tests also makes `cargo test --workspace`
//! build the `ringhold` binary that the end-to-end tests in tests/ run.)

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

use ringhold_tests::{secs, uring_usable, Engine};

const BIN: &str = env!("CARGO_BIN_EXE_ringhold");

/// Every `serve` flag and its environment variable.
const FLAGS: &[(&str, &str)] = &[
    ("--listen", "RINGHOLD_LISTEN"),
    ("--protocol", "RINGHOLD_PROTOCOL"),
    ("--max-header-size", "RINGHOLD_MAX_HEADER_SIZE"),
    ("--max-body-size", "RINGHOLD_MAX_BODY_SIZE"),
    ("--max-message-size", "RINGHOLD_MAX_MESSAGE_SIZE"),
    ("--engine", "RINGHOLD_ENGINE"),
    ("--shards", "RINGHOLD_SHARDS"),
    ("--threads", "RINGHOLD_THREADS"),
    ("--no-pin", "RINGHOLD_NO_PIN"),
    ("--buffer-size", "RINGHOLD_BUFFER_SIZE"),
    ("--buffers", "RINGHOLD_BUFFERS"),
    ("--pending-buffers", "RINGHOLD_PENDING_BUFFERS"),
    ("--idle-timeout", "RINGHOLD_IDLE_TIMEOUT"),
    ("--send-timeout", "RINGHOLD_SEND_TIMEOUT"),
    ("--linger-timeout", "RINGHOLD_LINGER_TIMEOUT"),
    ("--tcp-keepalive", "RINGHOLD_TCP_KEEPALIVE"),
    ("--max-connections", "RINGHOLD_MAX_CONNECTIONS"),
    ("--backlog", "RINGHOLD_BACKLOG"),
    ("--shutdown-timeout", "RINGHOLD_SHUTDOWN_TIMEOUT"),
    ("--metrics-listen", "RINGHOLD_METRICS_LISTEN"),
    ("--completion-batch", "RINGHOLD_COMPLETION_BATCH"),
    ("--no-direct-descriptors", "RINGHOLD_NO_DIRECT_DESCRIPTORS"),
    ("--fixed-files", "RINGHOLD_FIXED_FILES"),
    ("--park-after", "RINGHOLD_PARK_AFTER"),
    ("--max-conn-rate", "RINGHOLD_MAX_CONN_RATE"),
    ("--rate-limit", "RINGHOLD_RATE_LIMIT"),
    ("--message-rate", "RINGHOLD_MESSAGE_RATE"),
    ("--check-every", "RINGHOLD_CHECK_EVERY"),
];

/// A `ringhold` command with no RINGHOLD_* variables inherited.
fn ringhold() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGHOLD_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    c
}

/// Runs the command to completion; panics if it is still running after 30 s (scaled).
fn run(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("start ringhold");
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let deadline = secs(30);
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child we started and did not reap yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{c:?} did not exit within {deadline:?}");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error must be one line (clap's "For more information, try '--help'." hint aside), mention
/// `what`, exit non-zero and show no panic.
fn assert_one_line_error(o: &Output, what: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "exit status {} for an error; stderr:\n{err}",
        o.status
    );
    assert!(
        o.status.code().is_some(),
        "killed by a signal: {}; stderr:\n{err}",
        o.status
    );
    assert!(
        !err.contains("panicked")
            && !err.contains("RUST_BACKTRACE")
            && !err.contains("stack backtrace"),
        "panic text in:\n{err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("For more information")
                && !l.starts_with("[possible values")
        })
        .collect();
    assert!(!lines.is_empty(), "no error message at all");
    assert!(
        lines.iter().all(|l| l.contains(what)),
        "expected one error line about `{what}`, got:\n{err}"
    );
    assert!(lines.len() == 1, "more than one error line:\n{err}");
}

#[test]
fn bad_flag_values_are_one_line_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--buffers", "3"], "--buffers"),
        (&["--buffers", "65536"], "--buffers"),
        (&["--buffer-size", "1MiB"], "--buffer-size"),
        (&["--idle-timeout", "5x"], "--idle-timeout"),
        (&["--idle-timeout", "5"], "--idle-timeout"),
        (&["--listen", "nonsense"], "--listen"),
        (&["--listen", "127.0.0.1:99999"], "--listen"),
        (&["--metrics-listen", "somewhere"], "--metrics-listen"),
        (&["--engine", "kqueue"], "--engine"),
        (&["--shards", "0"], "--shards"),
        (&["--threads", "0"], "--threads"),
        (&["--tcp-keepalive", "1s"], "--tcp-keepalive"),
        (&["--max-connections=-1"], "--max-connections"),
        (&["--rate-limit", "fast"], "--rate-limit"),
        (&["--park-after", "1ms"], "--park-after"),
    ];
    for (args, what) in cases {
        let mut c = ringhold();
        c.arg("serve").args(*args).args(["--metrics-listen", "off"]);
        if *what == "--metrics-listen" {
            // The later flag would win; give only the bad one.
            c = ringhold();
            c.arg("serve").args(*args);
        }
        let o = run(c);
        assert_one_line_error(&o, what);
        assert_eq!(
            o.status.code(),
            Some(2),
            "clap's usage-error code for {args:?}; stderr:\n{}",
            stderr(&o)
        );
    }
}

#[test]
fn port_in_use_is_a_one_line_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for engine in ["uring", "epoll"] {
        let mut c = ringhold();
        c.args([
            "serve",
            "--engine",
            engine,
            "--listen",
            &addr,
            "--metrics-listen",
            "off",
        ]);
        let o = run(c);
        assert_one_line_error(&o, &format!("cannot listen on {addr}"));
        assert!(
            stderr(&o).contains("in use"),
            "the error should say the address is in use:\n{}",
            stderr(&o)
        );
    }
    drop(taken);
}

#[test]
fn help_explains_every_flag_and_its_env_var() {
    let mut c = ringhold();
    c.args(["serve", "--help"]);
    let o = run(c);
    assert!(o.status.success(), "serve --help failed: {}", stderr(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for (flag, env) in FLAGS {
        assert!(
            help.contains(flag),
            "`serve --help` does not mention {flag}:\n{help}"
        );
        assert!(
            help.contains(&format!("[env: {env}=")),
            "`serve --help` does not show {env}:\n{help}"
        );
    }
    // Any flag added later must come with an env var and be added to FLAGS above.
    for line in help.lines().map(str::trim).filter(|l| l.starts_with("--")) {
        let flag = line.split_whitespace().next().unwrap_or("");
        if flag != "--help" && flag != "--version" {
            assert!(
                FLAGS.iter().any(|(f, _)| *f == flag),
                "{flag} is in --help but not in this test's FLAGS"
            );
        }
    }
    let mut c = ringhold();
    c.arg("--help");
    let o = run(c);
    let top = String::from_utf8_lossy(&o.stdout);
    for sub in ["serve", "load", "doctor"] {
        assert!(
            top.contains(sub),
            "`ringhold --help` does not list `{sub}`:\n{top}"
        );
    }
}

/// Each flag's environment variable is read: an invalid value there gives the same error as on the
/// command line, naming the flag.
#[test]
fn every_flag_reads_its_env_var() {
    for (flag, env) in FLAGS {
        let bad = match *flag {
            "--no-pin" | "--no-direct-descriptors" => "maybe",
            "--shards" | "--threads" | "--pending-buffers" | "--check-every" => "0",
            _ => "nonsense-value",
        };
        let mut c = ringhold();
        c.arg("serve").env(env, bad);
        let o = run(c);
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "{env}={bad} was accepted; stderr:\n{err}"
        );
        assert!(
            err.contains(flag) && err.contains(bad),
            "{env}={bad}: error does not name {flag}:\n{err}"
        );
    }
}

/// Good values from the environment take effect: the server starts where RINGHOLD_LISTEN says, with
/// the engine RINGHOLD_ENGINE names, and its startup line says so. Whether io_uring works is asked of
/// the kernel, not read from ringhold's log: where it does not, ringhold must say so, and the uring
/// half is skipped (a failure under `CI` unless the kernel has no io_uring at all).
#[test]
fn env_vars_configure_a_running_server() {
    for engine in ["uring", "epoll"] {
        let uring_unavailable = engine == "uring" && Engine::Uring.unsupported().is_some();
        let mut c = ringhold();
        c.arg("serve")
            .env("RINGHOLD_LISTEN", "127.0.0.1:0")
            .env("RINGHOLD_METRICS_LISTEN", "off")
            .env("RINGHOLD_ENGINE", engine)
            .env("RINGHOLD_SHARDS", "1")
            .env("RINGHOLD_MAX_CONNECTIONS", "77")
            .env("RINGHOLD_IDLE_TIMEOUT", "7s")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("start ringhold");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = String::new();
        let mut listening = false;
        while let Ok(line) = rx.recv_timeout(secs(30)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening on ") {
                listening = true;
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if uring_unavailable {
            assert!(
                !listening && seen.contains("io_uring cannot be used"),
                "the kernel refuses io_uring here, and ringhold does not say so:\n{seen}"
            );
            if !uring_usable("env_vars_configure_a_running_server") {
                continue;
            }
        }
        assert!(
            listening,
            "no `listening on` line with RINGHOLD_LISTEN=127.0.0.1:0 ({engine}):\n{seen}"
        );
        assert!(
            seen.contains("listening on 127.0.0.1:"),
            "not on 127.0.0.1:\n{seen}"
        );
        assert!(
            !seen.contains("listening on 127.0.0.1:7000"),
            "RINGHOLD_LISTEN ignored:\n{seen}"
        );
        assert!(
            seen.contains(&format!("engine={engine}")),
            "RINGHOLD_ENGINE ignored:\n{seen}"
        );
        assert!(
            seen.contains("shards=1"),
            "RINGHOLD_SHARDS ignored:\n{seen}"
        );
        assert!(
            seen.contains("max_connections=77"),
            "RINGHOLD_MAX_CONNECTIONS ignored:\n{seen}"
        );
        assert!(
            seen.contains("idle_timeout=7s"),
            "RINGHOLD_IDLE_TIMEOUT ignored:\n{seen}"
        );
        assert!(
            !seen.contains("\x1b["),
            "ANSI escapes in a log that is not a terminal:\n{seen}"
        );
    }
}
