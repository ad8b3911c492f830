//! A real Prometheus (Debian's `prometheus`, /usr/bin/prometheus) on a free loopback port with a
//! temporary TSDB, scraping the given targets every second; queried through its HTTP API. Killed and
//! its directory removed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job `ringhold`) every second; waits until it is ready.
    pub fn start(binary: &Path, targets: &[SocketAddr]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "ringhold-prometheus-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ringhold\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        // A free port: bind, read, release (Prometheus binds it a moment later; a clash fails loudly).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut p = Prometheus { child, addr, dir };
        let ready = ringhold_tests::wait_until(ringhold_tests::secs(60), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited with {st}; its log:\n{}", p.log());
            }
            http_get(p.addr, "/-/ready").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            ready,
            "prometheus not ready within the deadline; its log:\n{}",
            p.log()
        );
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` with `params` url-encoded; the parsed JSON `data` on success, else the error text.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let target = format!("{path}?{}", query.join("&"));
        let (code, body) =
            http_get(self.addr, &target).ok_or_else(|| format!("GET {target}: no response"))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {target}: {code} {e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("GET {target}: {code} {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the result vector (`[{metric, value: [t, "v"]}, …]`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        match data["result"].as_array() {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{expr}: result is not a vector: {data}")),
        }
    }

    /// The values of an instant query, as numbers (NaN kept).
    pub fn values(&self, expr: &str) -> Result<Vec<f64>, String> {
        Ok(self
            .query(expr)?
            .iter()
            .filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log (tail) ----");
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A plain HTTP/1.0 GET over loopback: (status code, body).
pub fn http_get(addr: SocketAddr, target: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, ringhold_tests::secs(5)).ok()?;
    s.set_read_timeout(Some(ringhold_tests::secs(30))).ok()?;
    s.set_write_timeout(Some(ringhold_tests::secs(30))).ok()?;
    s.write_all(
        format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
