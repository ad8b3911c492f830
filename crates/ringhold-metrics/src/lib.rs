//! ringhold's metrics: per-shard counters flushed into pre-registered `metrics` handles, and a
//! Prometheus text exporter on an admin thread of its own (hyper on a current-thread tokio runtime).
//!
//! What it is for: [`install`] sets the process-wide Prometheus recorder and serves `/metrics`;
//! [`ShardMetrics`] holds one shard's handles, and the shard calls [`ShardMetrics::flush`] with its plain
//! `ringhold_core::ShardCounters` about once a second.
//!
//! What it must not do: be touched per message. Shards count in their own integers; nothing here is on
//! the per-message path, and a flush is a handful of relaxed stores into handles owned by that shard.
//! The exporter's runtime lives on its own thread and renders on each scrape; it is never shared with
//! the shards. Nor must a client of the admin port be able to blind it: see `http.rs` for the
//! deadlines and the connection cap.

mod http;
pub mod names;
mod process;
mod shard;

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use process::resident_bytes;
pub use shard::ShardMetrics;

/// The `Content-Type` of the `/metrics` response (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = http::CONTENT_TYPE;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and serves `/metrics` on `listen`; returns the
/// bound address (so port 0 works). `None` (`--metrics-listen off`) installs nothing: every
/// [`ShardMetrics`] handle is then a no-op. `engine` is the `engine` label of `ringhold_build_info`.
pub fn install(listen: Option<SocketAddr>, engine: &str) -> io::Result<Option<SocketAddr>> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let handle = recorder()?;
    gauge!(names::BUILD_INFO, "engine" => engine.to_string(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process::update(0);
    let bound = http::serve(addr, move || {
        counter!(names::SCRAPES).increment(1);
        render_with(&handle)
    })?;
    Ok(Some(bound))
}

fn recorder() -> io::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| io::Error::other(format!("cannot install the metrics recorder: {e}")))?;
    names::describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

fn render_with(handle: &PrometheusHandle) -> String {
    process::update(shard::active_connections());
    handle.render()
}

/// The text a scrape of `/metrics` would return now (process gauges refreshed first), or `None` if
/// [`install`] has not installed the recorder. For tests and `ringhold doctor`.
pub fn render() -> Option<String> {
    HANDLE.get().map(render_with)
}
