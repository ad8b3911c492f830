//! `ringhold doctor` against this machine: its findings match what the kernel says to the child
//! process (getrlimit, /proc/sys), a lowered limit shows up with its fix, `--json` keeps its schema,
//! and the exit code says whether N connections fit. Only loopback is touched (the io_uring and
//! conntrack probes connect to 127.0.0.1).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringhold_tests::server::binary;
use serde_json::Value;

fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    (r.rlim_cur, r.rlim_max)
}

/// Runs `ringhold doctor ARGS` with a clean environment (no RINGHOLD_* from the caller) and, when
/// given, RLIMIT_NOFILE set in the child before exec.
fn doctor(args: &[&str], limit: Option<(u64, u64)>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("doctor").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGHOLD_") {
            cmd.env_remove(k);
        }
    }
    if let Some((soft, hard)) = limit {
        // SAFETY: the closure runs in the forked child before exec and calls only setrlimit, which
        // is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: soft as _,
                    rlim_max: hard as _,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("run ringhold doctor");
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "doctor {args:?} exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn doctor_json(args: &[&str], limit: Option<(u64, u64)>) -> (Value, i32) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = doctor(&a, limit);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks[]")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report}"))
}

fn fixes(c: &Value) -> String {
    c["fix"]
        .as_array()
        .expect("fix[]")
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn proc_sys(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether io_uring works here, asked of the kernel directly (never of doctor: a doctor bug must not
/// turn into a skip). Doctor's own probe in `report` must agree either way. When io_uring does not
/// work, `test`'s io_uring part is skipped: a failure under `CI` unless the kernel has no io_uring at
/// all ([`ringhold_tests::uring_usable`]).
fn uring_here(report: &Value, test: &str) -> bool {
    let kernel = ringhold_tests::Engine::Uring.unsupported();
    let c = check(report, "io_uring.setup");
    assert_eq!(
        c["status"] == "ok",
        kernel.is_none(),
        "doctor's io_uring.setup disagrees with the kernel ({}): {c:#}",
        kernel.map_or("io_uring_setup works".to_string(), |u| u.why)
    );
    ringhold_tests::uring_usable(test)
}

#[test]
fn reports_the_limits_the_child_has() {
    let (soft, hard) = nofile();
    let (r, code) = doctor_json(&["--connections", "100", "--engine", "epoll"], None);
    assert_eq!(code, 0, "100 connections fit: {r:#}");
    assert_eq!(
        check(&r, "rlimit.nofile")["current"],
        format!("soft {soft}, hard {hard}")
    );
    let (lo, hi) = {
        let s = proc_sys("net.ipv4.ip_local_port_range");
        let v: Vec<u64> = s.split_whitespace().map(|w| w.parse().unwrap()).collect();
        (v[0], v[1])
    };
    let ports = check(&r, "net.ephemeral_ports")["current"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ports.starts_with(&format!("{lo}-{hi}: {} ports", hi - lo + 1)),
        "{ports}"
    );
    assert_eq!(
        check(&r, "net.somaxconn")["current"],
        proc_sys("net.core.somaxconn")
    );
    assert_eq!(check(&r, "fs.nr_open")["current"], proc_sys("fs.nr_open"));
    assert_eq!(
        r["load_generator"]["connections"],
        hi - lo + 1,
        "1 source × 1 target on loopback"
    );
    assert_eq!(
        r["config"]["cores"].as_u64().unwrap() as usize,
        std::thread::available_parallelism().unwrap().get()
    );
}

#[test]
fn a_lowered_soft_limit_is_reported_with_its_fix() {
    // Any process may lower its hard limit, so the child gets a soft limit below a hard one whatever
    // this machine's limits are.
    let (_, hard) = nofile();
    let hard = hard.min(2048);
    let soft = hard / 4;
    assert!(
        hard > 64 && soft < hard,
        "RLIMIT_NOFILE hard {hard} is too low to run anything"
    );
    let (r, _) = doctor_json(
        &["--connections", "100", "--engine", "epoll"],
        Some((soft, hard)),
    );
    let c = check(&r, "rlimit.nofile");
    assert_eq!(c["current"], format!("soft {soft}, hard {hard}"));
    assert_eq!(c["status"], "warn");
    assert!(fixes(c).contains(&format!("ulimit -n {hard}")), "{c:#}");
    // serve raises soft to hard, so the plain-fd capacity is the hard limit's.
    assert_eq!(r["binding_limit"]["id"], "rlimit.nofile");
    assert_eq!(r["capacity"], hard - 64);
}

#[test]
fn a_lowered_hard_limit_bounds_the_plain_fd_engine() {
    let (r, code) = doctor_json(
        &[
            "--connections",
            "5000",
            "--engine",
            "epoll",
            "--shards",
            "2",
        ],
        Some((1000, 1000)),
    );
    assert_eq!(
        code, 1,
        "5000 plain-fd connections cannot fit in 1000 fds: {r:#}"
    );
    let c = check(&r, "rlimit.nofile");
    assert_eq!(c["status"], "fail");
    assert_eq!(c["current"], "soft 1000, hard 1000");
    let f = fixes(c);
    assert!(f.contains("LimitNOFILE=5064"), "{f}");
    assert!(f.contains("ulimit -n 5064"), "{f}");
    assert!(
        f.contains("--engine uring --shards 5"),
        "direct descriptors: 5 × 1000 slots: {f}"
    );
    assert_eq!(
        (r["capacity"].as_u64(), r["binding_limit"]["id"].as_str()),
        (Some(936), Some("rlimit.nofile"))
    );
}

#[test]
fn direct_descriptors_need_shards_times_table_slots() {
    let (r, code) = doctor_json(
        &["--connections", "100000", "--shards", "3", "--sources", "0"],
        Some((1000, 1000)),
    );
    if !uring_here(&r, "direct_descriptors_need_shards_times_table_slots") {
        return;
    }
    assert_eq!(code, 1);
    assert_eq!(r["config"]["fixed_file_slots"], 1000);
    assert_eq!(
        (r["capacity"].as_u64(), r["binding_limit"]["id"].as_str()),
        (Some(3000), Some("io_uring.fixed_files"))
    );
    let c = check(&r, "io_uring.fixed_files");
    assert_eq!(c["status"], "fail");
    let cur = c["current"].as_str().unwrap();
    assert!(cur.contains("3 shards × 1000 slots = 3000"), "{cur}");
    // The kernel itself refuses a table one slot larger than RLIMIT_NOFILE.
    assert!(cur.contains("1001 slots: EMFILE"), "{cur}");
    let f = fixes(c);
    assert!(
        f.contains("ringhold serve --shards 100   # 100 shards × 1000 slots = 100000"),
        "{f}"
    );
    assert!(
        f.contains("LimitNOFILE=33334"),
        "or 3 tables of ⌈100000/3⌉ slots: {f}"
    );
    let hint = r["direct_descriptor_hint"].as_str().unwrap();
    assert!(
        hint.contains("--shards 100 gives 100 × 1000 fixed-file slots = 100000"),
        "{hint}"
    );
    // The same numbers with enough shards fit.
    let (r, code) = doctor_json(
        &[
            "--connections",
            "100000",
            "--shards",
            "100",
            "--sources",
            "0",
        ],
        Some((1000, 1000)),
    );
    assert_eq!(r["capacity"], 100_000);
    assert_eq!(
        code,
        if r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "fail")
        {
            1
        } else {
            0
        }
    );
}

#[test]
fn a_million_does_not_fit_here_and_the_text_says_how() {
    let (_, hard) = nofile();
    let limit = hard.min(20_000);
    let out = doctor(&["--connections", "1000000"], Some((limit, limit)));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let shards = 1_000_000u64.div_ceil(limit);
    assert!(
        text.contains(&format!("RLIMIT_NOFILE soft {limit}")),
        "{text}"
    );
    // Whether io_uring works is the kernel's answer, and doctor must give the same one.
    let kernel = ringhold_tests::Engine::Uring.unsupported();
    assert_eq!(
        text.contains("FAIL  io_uring.setup"),
        kernel.is_some(),
        "doctor's io_uring.setup disagrees with the kernel ({kernel:?}):\n{text}"
    );
    if ringhold_tests::uring_usable("a_million_does_not_fit_here_and_the_text_says_how") {
        assert!(
            text.contains(&format!("ringhold serve --shards {shards}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{shards} × {limit} fixed-file slots")),
            "{text}"
        );
        assert!(text.contains("direct descriptors"), "{text}");
    }
    assert!(text.contains("LimitNOFILE="), "{text}");
    assert!(text.contains("capacity: this host holds "), "{text}");
    assert!(
        text.contains("result: 1000000 connections do NOT fit"),
        "{text}"
    );
}

#[test]
fn a_small_n_fits() {
    let (r, code) = doctor_json(&["--connections", "100", "--engine", "epoll"], None);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["fits"], true);
    let (r, code) = doctor_json(&["--connections", "100"], None);
    if uring_here(&r, "a_small_n_fits") {
        assert_eq!(code, 0, "{r:#}");
        assert_eq!(r["fits"], true);
        for id in [
            "io_uring.opcodes",
            "io_uring.buf_ring",
            "io_uring.multishot",
            "io_uring.fixed_files",
        ] {
            assert_eq!(check(&r, id)["status"], "ok", "{:#}", check(&r, id));
        }
    }
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect()
}

#[test]
fn json_schema_is_stable() {
    let (r, _) = doctor_json(&["--connections", "1000000"], None);
    assert_eq!(
        keys(&r),
        BTreeSet::from([
            "schema",
            "connections",
            "fits",
            "capacity",
            "binding_limit",
            "limits",
            "load_generator",
            "load_sources",
            "config",
            "checks",
            "direct_descriptor_hint"
        ])
    );
    assert_eq!(
        keys(&r["load_sources"]),
        BTreeSet::from(["needed", "connections_per_source", "port_span", "text"])
    );
    // Enough sources that none carries more than its share of the port range.
    let ls = &r["load_sources"];
    let (needed, per) = (
        ls["needed"].as_u64().unwrap(),
        ls["connections_per_source"].as_u64().unwrap(),
    );
    assert!(per > 0 && per < ls["port_span"].as_u64().unwrap());
    assert_eq!(needed, 1_000_000u64.div_ceil(per), "{ls}");
    assert_eq!(r["schema"], "ringhold-doctor/1");
    assert_eq!(r["connections"], 1_000_000);
    assert!(r["fits"].is_boolean() && r["capacity"].is_u64());
    let limit_keys = BTreeSet::from(["id", "connections", "text"]);
    assert_eq!(keys(&r["binding_limit"]), limit_keys);
    for l in r["limits"].as_array().unwrap() {
        assert_eq!(keys(l), limit_keys);
    }
    let min = r["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["connections"].as_u64().unwrap())
        .min();
    assert_eq!(
        r["capacity"].as_u64(),
        min,
        "capacity is the smallest limit"
    );
    assert_eq!(
        keys(&r["load_generator"]),
        BTreeSet::from(["connections", "binding_limit"])
    );
    assert_eq!(
        keys(&r["config"]),
        BTreeSet::from([
            "engine",
            "shards",
            "direct_descriptors",
            "fixed_file_slots",
            "listen",
            "sources",
            "targets",
            "sockets_per_connection",
            "backlog",
            "kernel",
            "cores"
        ])
    );
    let check_keys = BTreeSet::from(["id", "title", "status", "current", "needed", "fix", "note"]);
    let mut ids = BTreeSet::new();
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(keys(c), check_keys, "{c}");
        assert!(
            ["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["fix"].is_array());
        assert!(
            c["status"] == "ok"
                || !c["fix"].as_array().unwrap().is_empty()
                || c["id"] == "io_uring.setsockopt",
            "a WARN/FAIL says how to fix it: {c}"
        );
        assert!(
            ids.insert(c["id"].as_str().unwrap().to_string()),
            "duplicate id {c}"
        );
    }
    for id in [
        "rlimit.nofile",
        "fs.nr_open",
        "fs.file_max",
        "io_uring.disabled",
        "io_uring.seccomp",
        "io_uring.setup",
        "rlimit.memlock",
        "net.somaxconn",
        "net.syn_backlog",
        "net.ephemeral_ports",
        "load.nofile",
        "memory",
        "net.tcp_mem",
        "net.tcp_buffers",
        "net.conntrack",
        "net.time_wait",
    ] {
        assert!(ids.contains(id), "missing check {id}");
    }
    // Clients elsewhere: no load generator part, one socket per connection.
    let (r, _) = doctor_json(
        &[
            "--connections",
            "10",
            "--listen",
            "0.0.0.0:7000",
            "--engine",
            "epoll",
        ],
        None,
    );
    assert!(r["load_generator"].is_null());
    assert_eq!(r["config"]["sockets_per_connection"], 1);
    assert!(!r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "load.nofile"));
}

#[test]
fn bad_flags_are_one_line_errors() {
    let out = Command::new(binary())
        .args(["doctor", "--connections", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'lots'"));
}

/// `serve` prints the capacity line from the same function as doctor.
#[test]
fn serve_start_line_uses_the_doctor_capacity() {
    let (r, _) = doctor_json(
        &["--connections", "1", "--shards", "2", "--sources", "0"],
        None,
    );
    if !uring_here(&r, "serve_start_line_uses_the_doctor_capacity") {
        return;
    }
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--engine",
            "uring",
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .env("RINGHOLD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + ringhold_tests::secs(30);
    let mut log = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let done = l.contains("listening on");
                log.push(l);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let start = log
        .iter()
        .find(|l| l.contains("capacity="))
        .unwrap_or_else(|| panic!("no capacity line: {log:#?}"));
    if matches!(
        r["binding_limit"]["id"].as_str(),
        Some("io_uring.fixed_files") | Some("rlimit.nofile")
    ) {
        let want = format!(
            "capacity={} connections (bound by {})",
            r["capacity"],
            r["binding_limit"]["text"].as_str().unwrap()
        );
        assert!(start.contains(&want), "serve: {start}\ndoctor: {want}");
    }
}
