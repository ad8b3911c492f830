#!/usr/bin/env python3
"""Render the key panels of grafana/dashboards/ringhold.json to a PNG, from a live Prometheus.

This is NOT a Grafana screenshot: it evaluates each panel's own PromQL (with $__rate_interval,
$instance and $shard substituted the way Grafana does) through Prometheus' query_range API and draws
the series with matplotlib, for places where Grafana cannot run (CI, this repository's docs).

    python3 grafana/render_panels.py --prometheus http://127.0.0.1:9090 --out dashboard.png \
        [--instance 127.0.0.1:9100] [--minutes 5] [--scrape-interval 1]

Needs matplotlib (Debian: python3-matplotlib; pip: matplotlib). Talks to the given Prometheus only.
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

PANELS = [
    "Active connections",
    "Accept rate",
    "Close reasons",
    "Bytes in / out",
    "Buffer ring use",
    "Memory per connection",
    "Shard balance",
    "io_uring submit / complete rate",
]


def human(value, unit):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if unit == "percentunit":
        pct = value * 100
        return f"{pct:.0f}%" if abs(pct) >= 10 or pct == 0 else f"{pct:.2g}%"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for u in ["B", "KiB", "MiB", "GiB", "TiB"]:
            if abs(value) < 1024 or u == "TiB":
                return f"{value:.3g} {u}{suffix}"
            value /= 1024
    if unit in ("cps", "ops"):
        return f"{value:.3g}/s"
    return f"{value:.4g}"


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "") or json.dumps(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--dashboard", default=str(Path(__file__).parent / "dashboards" / "ringhold.json"))
    ap.add_argument("--instance", default=".*", help="value of $instance (regex)")
    ap.add_argument("--shard", default=".*", help="value of $shard (regex)")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--scrape-interval", type=float, default=1, help="seconds (for $__rate_interval)")
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        sys.exit("render_panels.py: matplotlib is missing (apt-get install python3-matplotlib, or pip install matplotlib)")

    dash = json.loads(Path(args.dashboard).read_text())
    by_title = {p.get("title"): p for p in dash["panels"] if p.get("type") != "row"}
    end = time.time()
    start = end - args.minutes * 60
    step = max(1.0, round((end - start) / 600))
    # Grafana: $__rate_interval = max($__interval + scrape interval, 4 × scrape interval).
    rate_interval = f"{int(max(step + args.scrape_interval, 4 * args.scrape_interval))}s"

    fig, axes = plt.subplots(4, 2, figsize=(16, 15))
    for ax, title in zip(axes.flat, PANELS):
        panel = by_title[title]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        for t in panel["targets"]:
            expr = (
                t["expr"]
                .replace("$__rate_interval", rate_interval)
                .replace("$instance", args.instance)
                .replace("$shard", args.shard)
            )
            for series in query_range(args.prometheus, expr, start, end, step):
                xs = [float(v[0]) - end for v in series["values"]]
                ys = [float(v[1]) for v in series["values"]]
                ax.plot(xs, ys, label=legend(t.get("legendFormat"), series["metric"]), linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("seconds before render")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=unit: human(v, u)))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    heading = args.title or f"ringhold dashboard panels, instance {args.instance}"
    fig.suptitle(
        f"{heading}\nrendered from Prometheus query_range with the dashboard's PromQL "
        f"($__rate_interval={rate_interval}) by grafana/render_panels.py, not by Grafana",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
