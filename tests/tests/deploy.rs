//! deploy/ checked with real tools: `systemd-analyze verify` on the unit, the sysctl.d file parsed
//! strictly and applied with `sysctl -p` inside a throwaway user + network namespace (so nothing on
//! the host changes), the Kubernetes manifests validated against the Kubernetes schemas with
//! `kubernetes-validate` (PyPI, ships the schemas: works offline), and the seccomp profile loaded
//! with libseccomp around the real `ringhold` (serve echoes, doctor's io_uring probe passes; without
//! io_uring_* doctor reports it). Under `CI` a missing tool fails; elsewhere the test says SKIP.
//! Whether io_uring works is asked of the kernel, never of ringhold.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringhold_tests::server::binary;
use ringhold_tests::{secs, skip, uring_usable};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The tool at `path` or in PATH, or None after printing SKIP (a panic under CI).
fn tool(name: &str, how: &str, test: &str) -> Option<PathBuf> {
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| p.exists())
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        skip(&format!(
            "{test}: {name} is not installed ({how}; .ci/run installs it)"
        ));
    }
    found
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringhold-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `systemd-analyze verify` prints problems but exits 0 for most of them: any line naming our file
/// is a failure.
fn verify_unit(sa: &Path, unit: &Path) -> Vec<String> {
    let out = Command::new(sa)
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let name = unit.file_name().unwrap().to_string_lossy().to_string();
    let mut problems: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.contains(&name))
        .map(String::from)
        .collect();
    if !out.status.success() {
        problems.push(format!("exit {:?}", out.status.code()));
    }
    problems
}

#[test]
fn systemd_unit_verifies() {
    let Some(sa) = tool(
        "systemd-analyze",
        "Debian package systemd",
        "systemd_unit_verifies",
    ) else {
        return;
    };
    let text = std::fs::read_to_string(deploy().join("systemd/ringhold.service")).unwrap();
    for must in [
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
        "SystemCallFilter=@system-service",
    ] {
        assert!(text.lines().any(|l| l == must), "unit lacks {must}");
    }
    assert!(!text
        .lines()
        .any(|l| l.starts_with("SystemCallFilter=") && l.contains("~@aio")));
    // verify checks that ExecStart's binary exists: point it at the one we built.
    let dir = tempdir("unit");
    let unit = dir.join("ringhold.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/ringhold", &binary().display().to_string()),
    )
    .unwrap();
    let problems = verify_unit(&sa, &unit);
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
    // The same check catches a broken unit.
    std::fs::write(
        &unit,
        text.replace("LimitNOFILE=1048576", "LimitNOFILE=lots\nLimitNOFIL=1"),
    )
    .unwrap();
    let problems = verify_unit(&sa, &unit);
    assert!(
        problems.len() >= 2,
        "a broken unit must be reported: {problems:#?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// (key, value, optional) of each setting; panics on anything that is not a comment, a blank line or
/// `[-]key = value`.
fn parse_sysctl(text: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let (optional, l) = match l.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, l),
        };
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key = value: {line}", i + 1));
        let (k, v) = (k.trim(), v.trim());
        assert!(
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "line {}: bad key {k:?}",
            i + 1
        );
        assert!(
            !v.contains('#'),
            "line {}: sysctl.d takes no comment after a value",
            i + 1
        );
        out.push((k.to_string(), v.to_string(), optional));
    }
    out
}

fn proc_path(key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/{}", key.replace('.', "/")))
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn sysctl_file_is_strict_and_applies_in_a_sandbox() {
    let file = deploy().join("sysctl.d/90-ringhold.conf");
    let text = std::fs::read_to_string(&file).unwrap();
    let settings = parse_sysctl(&text);
    assert!(settings.len() >= 10);
    // Each setting: the key exists here (or is optional), and the value has the shape of the current
    // one (same number of fields, numbers where the kernel has numbers).
    let mut host_before = BTreeMap::new();
    for (k, v, optional) in &settings {
        let p = proc_path(k);
        let Ok(cur) = std::fs::read_to_string(&p) else {
            assert!(
                *optional,
                "{k}: {} does not exist and the line has no leading '-'",
                p.display()
            );
            continue;
        };
        host_before.insert(k.clone(), cur.clone());
        if k == "net.ipv4.ip_local_reserved_ports" {
            assert!(
                v.split(',')
                    .all(|p| p.split('-').all(|n| n.parse::<u16>().is_ok())),
                "{k} = {v}"
            );
            continue;
        }
        let (cw, vw): (Vec<_>, Vec<_>) = (
            cur.split_whitespace().collect(),
            v.split_whitespace().collect(),
        );
        assert_eq!(
            cw.len(),
            vw.len(),
            "{k} = {v}: the kernel's value has {} fields ({cur:?})",
            cw.len()
        );
        for w in vw {
            assert!(w.parse::<i64>().is_ok(), "{k} = {v}: {w} is not a number");
        }
    }
    // The two values doctor checks for a million connections.
    let get = |k: &str| {
        settings
            .iter()
            .find(|s| s.0 == k)
            .map(|s| s.1.clone())
            .unwrap()
    };
    assert!(get("net.core.somaxconn").parse::<u64>().unwrap() >= 4096);
    assert!(get("fs.nr_open").parse::<u64>().unwrap() >= 1_000_064);

    // Apply it for real, where it cannot touch the host: a new network namespace owned by a new user
    // namespace whose root is uid 65534 outside. Per-namespace net.* keys take the value there; the
    // global ones (fs.*, kernel.*, net.ipv4.tcp_mem, …) are not visible or not writable from there.
    let test = "sysctl_file_is_strict_and_applies_in_a_sandbox";
    let (Some(setpriv), Some(_), Some(_)) = (
        tool("setpriv", "Debian package util-linux", test),
        tool("unshare", "Debian package util-linux", test),
        tool("sysctl", "Debian package procps", test),
    ) else {
        return;
    };
    let keys: Vec<&str> = settings.iter().map(|s| s.0.as_str()).collect();
    let script = format!(
        "sysctl -p \"$1\"; echo '--- read back'; for k in {}; do printf '%s=' \"$k\"; cat /proc/sys/$(echo $k | tr . /) 2>/dev/null || echo '(absent)'; done",
        keys.join(" ")
    );
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
        ])
        .args(["sh", "-c", &script, "sh"])
        .arg(&file)
        .output()
        .expect("run setpriv unshare sysctl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !stdout.contains("--- read back") {
        skip(&format!(
            "{test}: cannot make a user + network namespace here: {stderr}"
        ));
        return;
    }
    // sysctl -p fails only with "cannot stat" (not in this namespace) or "permission denied" (global).
    // Since Linux 6.12 a namespace's nf_conntrack_max may not exceed the host's: EINVAL there means
    // only that this host's value is lower (it is global on older kernels: permission denied).
    for l in stderr.lines() {
        let conntrack_cap =
            l.contains("net.netfilter.nf_conntrack_max") && l.contains("Invalid argument");
        assert!(
            l.contains("cannot stat") || l.contains("permission denied") || conntrack_cap,
            "sysctl -p rejected a line: {l}"
        );
    }
    let (applied, readback) = stdout.split_once("--- read back").unwrap();
    let readback: BTreeMap<&str, &str> =
        readback.lines().filter_map(|l| l.split_once('=')).collect();
    let mut per_netns = Vec::new();
    for (k, v, _) in &settings {
        // With a leading '-' sysctl echoes the line even when it was not written: count only net.*
        // keys that sysctl reported and did not complain about.
        let printed = applied.lines().any(|l| l.starts_with(&format!("{k} = ")));
        let refused = stderr.lines().any(|l| {
            l.contains(&format!("\"{k}\"")) || l.contains(&format!("/{}:", k.replace('.', "/")))
        });
        if k.starts_with("net.") && printed && !refused {
            assert_eq!(
                words(readback[k.as_str()]),
                words(&v.replace(',', " "))
                    .replace(' ', if k.contains("reserved") { "," } else { " " }),
                "{k} read back"
            );
            per_netns.push(k.as_str());
        }
    }
    for k in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
    ] {
        assert!(
            per_netns.contains(&k),
            "{k} was not applied in the sandbox: {stdout}\n{stderr}"
        );
    }
    eprintln!("applied in the sandbox: {per_netns:?}");
    // And the host did not change.
    for (k, before) in host_before {
        assert_eq!(
            std::fs::read_to_string(proc_path(&k)).unwrap(),
            before,
            "{k} changed on the host"
        );
    }
}

fn kubernetes_validate(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBERNETES_VALIDATE") {
        return tool(
            &p.to_string_lossy(),
            "pip install kubernetes-validate",
            test,
        );
    }
    tool(
        "kubernetes-validate",
        "pip install kubernetes-validate",
        test,
    )
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let test = "kubernetes_manifests_validate_against_the_schemas";
    let Some(kv) = kubernetes_validate(test) else {
        return;
    };
    let dir = deploy().join("kubernetes");
    let files: Vec<PathBuf> = ["daemonset.yaml", "service.yaml", "load-job.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let out = Command::new(&kv)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate: {text}");
    for res in [
        "namespace/ringhold",
        "daemonset/ringhold",
        "service/ringhold ",
        "service/ringhold-nodes",
        "job/ringhold-load",
    ] {
        assert!(
            text.contains(&format!("passed for resource {}", res.trim())),
            "{res} not validated: {text}"
        );
    }
    // io_uring: a Localhost seccomp profile that exists in the repository, not RuntimeDefault.
    let ds = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        ds.contains("type: Localhost") && ds.contains("localhostProfile: profiles/ringhold.json")
    );
    assert!(dir.join("seccomp/ringhold.json").exists());
    assert!(
        ds.contains("prometheus.io/scrape: \"true\"")
            && ds.contains("prometheus.io/port: \"9464\"")
    );
    // The validator catches a wrong type and an unknown field.
    let tmp = tempdir("k8s");
    let bad = tmp.join("bad.yaml");
    std::fs::write(
        &bad,
        ds.replace(
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: soon",
        ),
    )
    .unwrap();
    assert!(!Command::new(&kv)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap()
        .status
        .success());
    std::fs::write(
        &bad,
        ds.replace(
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetworking: true",
        ),
    )
    .unwrap();
    assert!(!Command::new(&kv)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap()
        .status
        .success());
    // The same for the Job: a misspelt field and a wrong type.
    let job = std::fs::read_to_string(&files[2]).unwrap();
    for broken in [
        job.replace("backoffLimitPerIndex: 0", "backoffLimitsPerIndex: 0"),
        job.replace("completions: 10", "completions: ten"),
    ] {
        assert_ne!(broken, job);
        std::fs::write(&bad, broken).unwrap();
        assert!(!Command::new(&kv)
            .arg("--strict")
            .arg(&bad)
            .output()
            .unwrap()
            .status
            .success());
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// `key: value` of the first line whose trimmed text starts with `key:` (quotes stripped).
fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("- ");
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// The workspace version (the image tag).
fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(deploy().join("../Cargo.toml")).unwrap();
    cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in the workspace Cargo.toml")
        .to_string()
}

/// Every manifest names the image that deploy/container/build.sh builds (and the README tells how to
/// build and push): `${IMAGE:-localhost/ringhold}:<workspace version>`; the Containerfile's user is the
/// pods' runAsUser.
#[test]
fn manifests_name_the_image_the_build_script_makes() {
    let build = std::fs::read_to_string(deploy().join("container/build.sh")).unwrap();
    let repo = build
        .split("${IMAGE:-")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .expect("build.sh: image=\"${IMAGE:-…}\"");
    let image = format!("{repo}:{}", workspace_version());
    let readme = std::fs::read_to_string(deploy().join("../README.md")).unwrap();
    assert!(
        readme.contains("deploy/container/build.sh") && readme.contains(&image),
        "README should tell how to build {image}"
    );
    let containerfile = std::fs::read_to_string(deploy().join("../Containerfile")).unwrap();
    assert!(containerfile.lines().any(|l| l == "FROM scratch"));
    let user = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the Containerfile");
    for f in ["daemonset.yaml", "load-job.yaml"] {
        let text = std::fs::read_to_string(deploy().join("kubernetes").join(f)).unwrap();
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        assert_eq!(images, [image.as_str()], "{f}");
        let uid = yaml_value(&text, "runAsUser").unwrap();
        let gid = yaml_value(&text, "runAsGroup").unwrap();
        assert_eq!(
            format!("{uid}:{gid}"),
            user,
            "{f}: runAsUser/runAsGroup = USER"
        );
        assert_eq!(yaml_value(&text, "runAsNonRoot").as_deref(), Some("true"));
    }
    assert!(
        !std::fs::read_dir(deploy().join("kubernetes"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
            .any(|e| std::fs::read_to_string(e.path())
                .unwrap()
                .contains(".invalid/")),
        "no placeholder registry left in the manifests"
    );
}

/// The load Job is what its comments say: an Indexed Job whose pods each run their part
/// (`--part=$(PART_INDEX)/N` from the completion index, N = completions = parallelism), on the host
/// network, scraped on the port they listen on; and the real binary accepts its arguments: each part's
/// `--dry-run` plan adds up to the fleet's connections.
#[test]
fn load_job_runs_one_part_per_index() {
    let job = std::fs::read_to_string(deploy().join("kubernetes/load-job.yaml")).unwrap();
    assert_eq!(yaml_value(&job, "kind").as_deref(), Some("Job"));
    assert_eq!(
        yaml_value(&job, "completionMode").as_deref(),
        Some("Indexed")
    );
    let n: u32 = yaml_value(&job, "completions").unwrap().parse().unwrap();
    assert_eq!(
        yaml_value(&job, "parallelism"),
        Some(n.to_string()),
        "all parts at once"
    );
    assert_eq!(yaml_value(&job, "hostNetwork").as_deref(), Some("true"));
    assert_eq!(yaml_value(&job, "restartPolicy").as_deref(), Some("Never"));
    assert!(job.contains(
        "- name: PART_INDEX\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']"
    ));
    // The container's args: the `- ` lines after `args:` up to the next key.
    let args: Vec<String> = job
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .take_while(|l| l.trim().starts_with("- "))
        .map(|l| l.trim().trim_start_matches("- ").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("load"), "{args:?}");
    assert!(
        args.contains(&format!("--part=$(PART_INDEX)/{n}")),
        "{args:?}"
    );
    let arg = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} in {args:?}"))
    };
    let port = arg("metrics-listen")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        yaml_value(&job, "prometheus.io/port"),
        Some(port.clone()),
        "scraped where it listens"
    );
    assert_eq!(yaml_value(&job, "containerPort"), Some(port));
    assert_eq!(
        yaml_value(&job, "prometheus.io/scrape").as_deref(),
        Some("true")
    );
    let total: u64 = arg("connections").parse().unwrap();
    // Every part's plan, on this host: the node's load addresses become loopback's, the Service's
    // name an address (no cluster DNS here); nothing connects (--dry-run).
    let mut sum = 0u64;
    for k in 0..n {
        let argv: Vec<String> = args
            .iter()
            .map(|a| {
                let a = a.replace("$(PART_INDEX)", &k.to_string());
                if a.starts_with("--sources=host:") {
                    "--sources=host:127.0.0.0/8".to_string()
                } else if a.starts_with("--target=") {
                    "--target=127.0.0.1:7000".to_string()
                } else {
                    a
                }
            })
            .collect();
        let out = Command::new(binary())
            .args(&argv)
            .arg("--dry-run")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "ringhold {argv:?} --dry-run: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("part           {k}/{n} of {total} connections")),
            "{text}"
        );
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix("connections "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("connections in {text}"));
    }
    assert_eq!(sum, total, "the parts add up to --connections");
}

/// /usr/bin/python3 with Debian's python3-seccomp, or None after SKIP.
fn seccomp_runner(test: &str) -> Option<(PathBuf, PathBuf)> {
    let py = tool("/usr/bin/python3", "Debian package python3", test)?;
    let ok = Command::new(&py)
        .args(["-c", "import seccomp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip(&format!(
            "{test}: python3-seccomp is not installed (apt-get install python3-seccomp)"
        ));
        return None;
    }
    Some((
        py,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/seccomp_exec.py"),
    ))
}

fn profile() -> PathBuf {
    deploy().join("kubernetes/seccomp/ringhold.json")
}

#[test]
fn seccomp_profile_lets_ringhold_run() {
    let test = "seccomp_profile_lets_ringhold_run";
    let Some((py, runner)) = seccomp_runner(test) else {
        return;
    };
    // The kernel says whether io_uring works (a failure under CI if it has it and refuses it).
    let engines: &[&str] = if uring_usable(test) {
        &["uring", "epoll"]
    } else {
        &["epoll"]
    };
    // doctor's io_uring probe under the profile: every io_uring step still works.
    let out = Command::new(&py)
        .arg(&runner)
        .arg(profile())
        .arg("--")
        .arg(binary())
        .args(["doctor", "--json", "--connections", "100", "--sources", "0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let seccomp = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "io_uring.seccomp")
        .unwrap();
    assert!(
        seccomp["current"]
            .as_str()
            .unwrap()
            .starts_with("Seccomp: 2"),
        "the filter is on: {seccomp}"
    );
    if engines.contains(&"uring") {
        assert_eq!(v["fits"], true, "{v:#}");
    }
    for engine in engines {
        serve_echo_under_profile(&py, &runner, engine);
    }
}

fn serve_echo_under_profile(py: &Path, runner: &Path, engine: &str) {
    let mut child = Command::new(py)
        .arg(runner)
        .arg(profile())
        .arg("--")
        .arg(binary())
        .args([
            "serve",
            "--engine",
            engine,
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--tcp-keepalive", "60s,10s,5"])
        .env("RINGHOLD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + secs(30);
    let mut addr = None;
    while addr.is_none() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if let Some(a) = l.split("listening on ").nth(1) {
                    addr = Some(a.trim().to_string());
                }
                log.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        let text = log.join("\n");
        panic!("serve --engine {engine} did not start under the seccomp profile:\n{text}");
    };
    let echo = || -> std::io::Result<()> {
        let mut socks = Vec::new();
        for _ in 0..8 {
            socks.push(TcpStream::connect(&addr)?);
        }
        for (i, s) in socks.iter_mut().enumerate() {
            s.set_read_timeout(Some(secs(10)))?;
            s.set_write_timeout(Some(secs(10)))?;
            let msg = vec![b'a' + i as u8; 3000];
            s.write_all(&msg)?;
            let mut back = vec![0; msg.len()];
            s.read_exact(&mut back)?;
            assert_eq!(back, msg, "echo under the seccomp profile on {engine}");
        }
        Ok(())
    };
    if let Err(e) = echo() {
        // Let the process end by itself (a denied syscall may stop it) so that its last log lines
        // arrive, then read to EOF and fail with them.
        let deadline = Instant::now() + secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        while let Ok(l) = rx.recv_timeout(secs(5)) {
            log.push(l);
        }
        let text = log.join("\n");
        panic!("echo through serve --engine {engine} under the seccomp profile: {e}\n{text}");
    }
    // The load generator runs under the same profile in deploy/kubernetes/load-job.yaml: its io_uring
    // connects, its own addresses (netlink) and its metrics listener.
    if engine == "uring" {
        let out = Command::new(py)
            .arg(runner)
            .arg(profile())
            .arg("--")
            .arg(binary())
            .args(["load", "--target", &addr, "--connections", "100"])
            .args(["--sources", "host:127.0.0.0/8", "--interval", "200ms"])
            .args(["--duration", "1s", "--metrics-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("result         OK"),
            "ringhold load under the seccomp profile: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve --engine {engine} did not stop on SIGTERM under the profile");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "serve --engine {engine} under the profile exited {status:?}: {rest:#?}"
    );
}

#[test]
fn a_profile_without_io_uring_is_diagnosed() {
    let test = "a_profile_without_io_uring_is_diagnosed";
    let Some((py, runner)) = seccomp_runner(test) else {
        return;
    };
    // `ringhold doctor --json` under the profile with the io_uring syscalls denied (what RuntimeDefault does).
    let doctor_without_io_uring = |extra: &[&str]| {
        Command::new(&py)
            .arg(&runner)
            .arg(profile())
            .args([
                "--deny",
                "io_uring_setup,io_uring_enter,io_uring_register",
                "--",
            ])
            .arg(binary())
            .args(["doctor", "--json", "--connections", "100", "--sources", "0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = doctor_without_io_uring(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |id: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    let setup = get("io_uring.setup");
    assert_eq!(setup["status"], "fail");
    assert!(
        setup["current"].as_str().unwrap().contains("EPERM"),
        "{setup}"
    );
    let sc = get("io_uring.seccomp");
    assert_eq!(sc["status"], "fail");
    assert!(sc["fix"].to_string().contains("Localhost"), "{sc}");
    assert_eq!(v["capacity"], 0);
    assert_eq!(v["binding_limit"]["id"], "io_uring.seccomp");
    // The epoll engine does not need io_uring: the same filter only warns.
    let out = doctor_without_io_uring(&["--engine", "epoll"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
