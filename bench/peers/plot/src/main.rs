//! bench-plot: reads a `results.json` written by `bench/run` and writes SVG bar charts next to it.
//!
//! Usage: `bench-plot RESULTS.json [OUT_DIR]`. Only plotters' SVG backend with its built-in (naive)
//! font metrics is used: text becomes `<text>` elements, so no system fonts or fontconfig are needed.

use std::path::{Path, PathBuf};
use std::process::exit;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// One group of bars per server: `series[k].1[i]` is series `k`'s value for server `i` (None = no data).
struct Chart<'a> {
    file: &'a str,
    title: String,
    y_label: &'a str,
    servers: Vec<String>,
    series: Vec<(&'a str, Vec<Option<f64>>)>,
    log: bool,
}

fn draw(out: &Path, c: &Chart<'_>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = out.join(c.file);
    let n = c.servers.len().max(1);
    let values: Vec<f64> = c
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    if values.is_empty() {
        return Err(format!("{}: no data", c.file).into());
    }
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min);
    let root = SVGBackend::new(&path, (220 + 130 * n as u32, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let names = c.servers.clone();
    let x_fmt = move |x: &f64| {
        let r = x.round();
        if (x - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < names.len() {
            names[r as usize].clone()
        } else {
            String::new()
        }
    };
    let groups = c.series.len() as f64;
    let width = 0.8 / groups;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&c.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&|v: &f64| short(*v))
                .light_line_style(WHITE)
                .y_desc(c.y_label)
                .draw()?;
            for (k, (label, vals)) in c.series.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                let bars: Vec<Rectangle<(f64, f64)>> = vals
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let v = (*v)?;
                        let x0 = i as f64 - 0.4 + width * k as f64;
                        Some(Rectangle::new(
                            [
                                (x0, if c.log { min / 2.0 } else { 0.0 }),
                                (
                                    x0 + width * 0.92,
                                    v.max(if c.log { min / 2.0 } else { 0.0 }),
                                ),
                            ],
                            color.filled(),
                        ))
                    })
                    .collect();
                let anno = chart.draw_series(bars)?;
                if c.series.len() > 1 {
                    anno.label(*label).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
                }
                // The value above each bar.
                chart.draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                    let v = (*v)?;
                    let x = i as f64 - 0.4 + width * (k as f64 + 0.5);
                    Some(Text::new(
                        short(v),
                        (x, v),
                        ("sans-serif", 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    ))
                }))?;
            }
            if c.series.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()?;
            }
        }};
    }
    let xr = -0.5..(n as f64 - 0.5);
    if c.log {
        body!(builder.build_cartesian_2d(xr, ((min / 2.0)..(max * 4.0)).log_scale())?);
    } else {
        body!(builder.build_cartesian_2d(xr, 0.0..(max * 1.15))?);
    }
    root.present()?;
    drop(root);
    Ok(path)
}

/// 1234567 → "1.23M", 0.5 → "0.5".
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn rows<'a>(results: &'a Value, scenario: &str) -> Option<&'a serde_json::Map<String, Value>> {
    results
        .get("scenarios")?
        .get(scenario)?
        .get("rows")?
        .as_object()
}

fn get(row: Option<&Value>, path: &[&str]) -> Option<f64> {
    let mut v = row?;
    for p in path {
        v = v.get(p)?;
    }
    v.as_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(input) = args.next() else {
        eprintln!("usage: bench-plot RESULTS.json [OUT_DIR]");
        exit(2);
    };
    let input = PathBuf::from(input);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| input.parent().map(Path::to_path_buf).unwrap_or_default());
    let text = std::fs::read_to_string(&input).unwrap_or_else(|e| {
        eprintln!("bench-plot: cannot read {}: {e}", input.display());
        exit(1)
    });
    let results: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("bench-plot: {} is not JSON: {e}", input.display());
        exit(1)
    });
    let servers: Vec<String> = results
        .get("servers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let col = |scenario: &str, path: &[&str]| -> Vec<Option<f64>> {
        let r = rows(&results, scenario);
        servers
            .iter()
            .map(|s| get(r.and_then(|r| r.get(s)), path))
            .collect()
    };
    let n_of = |scenario: &str| -> String {
        results
            .get("scenarios")
            .and_then(|s| s.get(scenario))
            .and_then(|s| s.get("params"))
            .and_then(|p| p.get("connections"))
            .and_then(Value::as_u64)
            .map(|n| format!("{n}"))
            .unwrap_or_else(|| "?".into())
    };
    let charts = vec![
        Chart {
            file: "pingpong_throughput.svg",
            title: format!("Ping-pong: {} connections, 64 B messages", n_of("pingpong")),
            y_label: "messages / s",
            servers: servers.clone(),
            series: vec![("messages/s", col("pingpong", &["messages_per_s"]))],
            log: false,
        },
        Chart {
            file: "pingpong_latency.svg",
            title: format!("Ping-pong latency, {} connections", n_of("pingpong")),
            y_label: "round trip (µs, log)",
            servers: servers.clone(),
            series: vec![
                ("p50", col("pingpong", &["latency_us", "p50"])),
                ("p99", col("pingpong", &["latency_us", "p99"])),
                ("p99.9", col("pingpong", &["latency_us", "p999"])),
            ],
            log: true,
        },
        Chart {
            file: "idle_memory.svg",
            title: format!(
                "Idle connections: memory per connection at N = {}",
                n_of("idle")
            ),
            y_label: "bytes / connection",
            servers: servers.clone(),
            series: vec![
                (
                    "server RSS, total ÷ N",
                    col("idle", &["rss_total_per_conn_bytes"]),
                ),
                ("server RSS, marginal", col("idle", &["rss_per_conn_bytes"])),
                (
                    "kernel slab (both ends)",
                    col("idle", &["slab_per_conn_bytes"]),
                ),
            ],
            log: false,
        },
        Chart {
            file: "accept_rate.svg",
            title: format!("Accept: {} connections, accepted by the server", n_of("accept")),
            y_label: "connections / s",
            servers: servers.clone(),
            series: vec![("connections/s", col("accept", &["per_s"]))],
            log: false,
        },
    ];
    let mut failed = false;
    for c in &charts {
        match draw(&out, c) {
            Ok(p) => println!("{}", p.display()),
            Err(e) => {
                eprintln!("bench-plot: skipped {}: {e}", c.file);
                failed |= !e.to_string().ends_with("no data");
            }
        }
    }
    if failed {
        exit(1);
    }
}
