//! The Grafana dashboard as the tests read it: its JSON, every panel query, and Grafana's
//! substitution of the template variables. Shared by tests/tests/metrics.rs (the server rows) and
//! tests/tests/load.rs (the load-generator row).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn dashboard() -> Value {
    let path = grafana_dir().join("dashboards/ringhold.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (panel title, refId, expr) of every query of the dashboard.
pub fn panel_queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    // Collapsed rows keep their panels inside.
    let nested: Vec<&Value> = panels
        .iter()
        .filter_map(|p| p["panels"].as_array())
        .flatten()
        .collect();
    panels.extend(nested);
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                t["refId"].as_str().unwrap_or("").to_string(),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// Grafana's substitution of dashboard variables and macros in a PromQL expression (`$load`, the load
/// generators, is substituted by [`expand_load`]).
pub fn expand(expr: &str, rate_interval: &str, instance: &str, shard: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("${shard}", shard)
        .replace("$shard", shard)
}

/// [`expand`], then the load-generator variable `$load`.
pub fn expand_load(
    expr: &str,
    rate_interval: &str,
    instance: &str,
    shard: &str,
    load: &str,
) -> String {
    expand(expr, rate_interval, instance, shard)
        .replace("${load}", load)
        .replace("$load", load)
}

/// Whether a query reads the load generators' metrics (the "Load generators" row).
pub fn is_load_query(expr: &str) -> bool {
    expr.contains("$load") || expr.contains("ringhold_load_")
}
