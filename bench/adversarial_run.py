#!/usr/bin/env python3
"""One run of bench/adversarial, inside the network namespace the wrapper made (see bench/adversarial
and bench/README.md): one `ringhold serve` with default flags (but --no-pin and --max-connections) and,
at once, for --duration seconds:

  - a well-behaved population: `ringhold load` (heartbeat every second, every echo checked) and one
    ping-pong probe (a 64 B round trip every 20 ms);
  - non-reading writers (processes of at most 5,000, each from its own 127.0.2.x source);
  - slowloris on the metrics port; RST storms; connect floods past --max-connections; garbage bytes;
  - rounds of clients that vanish without FIN: they connect from a second namespace over a veth pair,
    which is then deleted (no FIN, no RST ever reaches the server).

Samples the server every 2 s (VmRSS, CPU, /metrics, how long the scrape took, kernel TCP memory),
then waits until every slot is free (connections_active 0, buffers_in_use 0), sends SIGTERM, and writes
<out>/<engine>-w<writers>.json (logs in <out>/raw/). `adversarial_run.py report <out>` writes <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

CLIENTS = B.BENCH / "adversarial_clients.py"
PORT = 7000
METRICS_PORT = 9100
VETH_SRV_ADDR = "10.254.0.1"
VETH_CLI_ADDR = "10.254.0.2"
WRITERS_PER_PROCESS = 5000

# Pass criteria (issue 11): the probe's p50 and worst round trip, RSS growth over the second half.
PROBE_P50_MS = 50.0
PROBE_MAX_MS = 1000.0
SCRAPE_MAX_S = 1.0
RSS_GROWTH_MAX = 8 << 20


def metrics_text(timeout: float = 10.0) -> tuple[str | None, float]:
    """GET /metrics (HTTP/1.0); (body or None, seconds it took)."""
    t = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            chunks = []
            while True:
                d = s.recv(65536)
                if not d:
                    break
                chunks.append(d)
        resp = b"".join(chunks).decode(errors="replace")
        head, _, body = resp.partition("\r\n\r\n")
        ok = head.split(" ", 2)[1:2] == ["200"]
        return (body if ok else None), time.monotonic() - t
    except OSError:
        return None, time.monotonic() - t


SAMPLE_RX = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(body: str) -> dict[str, float]:
    """Sums samples over shards: {"name": total, "name{reason=...}": total}."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line[0] == "#":
            continue
        m = SAMPLE_RX.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v
        for lab in ("reason",):
            lm = re.search(lab + r'="([^"]*)"', labels)
            if lm:
                k = f"{name}{{{lab}={lm.group(1)}}}"
                out[k] = out.get(k, 0.0) + v
    return out


def held_sockets() -> int | None:
    """TCP sockets on the server's port that a process still holds (not listening, not TIME_WAIT, not
    orphaned: an orphan, closed by its owner, has inode 0). Once every client has exited, these are
    the server's connections, lingering ones included (connections_active drops when a close starts)."""
    try:
        out = subprocess.run(["ss", "-tneH", "state", "all", f"( sport = :{PORT} )"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    n = 0
    for line in out.splitlines():
        if line.startswith(("LISTEN", "TIME-WAIT")):
            continue
        m = re.search(r"\bino:(\d+)", line)
        if m and m.group(1) != "0":
            n += 1
    return n


def tcp_mem_pages() -> int:
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.stop_flag = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            s = {"t": round(time.monotonic() - self.t0, 2)}
            try:
                s["rss"] = B.rss_bytes(self.pid)
                s["cpu"] = round(B.cpu_seconds(self.pid), 2)
            except (OSError, KeyError):
                s["rss"] = None
            body, took = metrics_text()
            s["scrape_s"] = round(took, 4)
            s["scrape_ok"] = body is not None
            if body:
                m = parse_metrics(body)
                for k in ("ringhold_connections_active", "ringhold_buffers_in_use", "ringhold_buffers_capacity",
                          "ringhold_connections_waiting_for_buffer", "ringhold_buffer_reserve_pauses_total",
                          "ringhold_lingering_closes_total", "ringhold_linger_timeouts_total"):
                    s[k.removeprefix("ringhold_")] = m.get(k)
            s["tcp_mem_pages"] = tcp_mem_pages()
            s["loadavg1"] = float(open("/proc/loadavg").read().split()[0])
            self.samples.append(s)
            self.stop_flag.wait(self.every)

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {}


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise B.BenchError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class Veth:
    """A veth pair between this namespace (the server's) and the clients' namespace `cli_ns`."""

    def __init__(self, cli_ns: str, tag: str) -> None:
        self.cli_ns = cli_ns
        self.a, self.b = f"rha{tag}", f"rhb{tag}"

    def up(self) -> None:
        run(["ip", "link", "add", self.a, "type", "veth", "peer", "name", self.b])
        run(["ip", "link", "set", self.b, "netns", self.cli_ns])
        run(["ip", "addr", "add", f"{VETH_SRV_ADDR}/30", "dev", self.a])
        run(["ip", "link", "set", self.a, "up"])
        run(["ip", "-n", self.cli_ns, "addr", "add", f"{VETH_CLI_ADDR}/30", "dev", self.b])
        run(["ip", "-n", self.cli_ns, "link", "set", self.b, "up"])

    def delete(self) -> None:
        run(["ip", "link", "del", self.a], check=False)


def client(kind: str, args: list, raw: Path, name: str, netns: str | None = None) -> tuple:
    argv = [sys.executable, "-u", str(CLIENTS), kind, *[str(a) for a in args]]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    p = B.spawn(argv, stdout=subprocess.PIPE, stderr=open(raw / f"{name}.err", "w"))
    return p, B.LineWatcher(p.stdout, raw / f"{name}.out")


def last_json(w: B.LineWatcher) -> dict | None:
    for line in reversed(w.lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def do_run(a) -> int:
    raw = a.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    tag = f"{a.engine}-w{a.writers}"
    D = a.duration
    max_conn = a.population + a.writers + 1 + 1500
    argv = [str(B.RINGHOLD_BIN), "serve", "--engine", a.engine, "--shards", str(a.shards), "--no-pin",
            "--listen", f"0.0.0.0:{PORT}", "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
            "--max-connections", str(max_conn)]
    result: dict = {"engine": a.engine, "writers": a.writers, "population": a.population, "duration_s": D,
                    "shards": a.shards, "server_cmd": " ".join(argv), "max_connections": max_conn,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": B.git_describe(),
                    "machine": B.machine(), "commands": {}}
    B.log(f"[{tag}] server: {' '.join(argv)}")
    run(["ip", "link", "set", "lo", "up"])
    server = B.spawn(argv, stderr=subprocess.PIPE)
    slog = B.LineWatcher(server.stderr, raw / f"{tag}-server.log")
    if not slog.wait_for(r"listening on", 30):
        raise B.BenchError(f"server did not start: {slog.tail(5)}")
    sampler = Sampler(server.pid)
    t0 = time.monotonic()
    rss0 = B.rss_bytes(server.pid)

    # The well-behaved population first.
    load_json = a.out / f"{tag}-load.json"
    load_argv = [str(B.RINGHOLD_BIN), "load", "--target", f"127.0.0.1:{PORT}", "-c", str(a.population),
                 "--interval", "1s", "--duration", f"{int(D)}s", "--echo-timeout", "5s",
                 "--json", str(load_json)]
    result["commands"]["load"] = " ".join(load_argv)
    load = B.spawn(load_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lw = B.LineWatcher(load.stdout, raw / f"{tag}-load.log")
    probe = client("probe", ["--target", f"127.0.0.1:{PORT}", "--duration", D - 5], raw, f"{tag}-probe")
    deadline = time.monotonic() + 60
    while (sampler.last().get("connections_active") or 0) < a.population + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    B.log(f"[{tag}] population connected after {time.monotonic() - t0:.1f} s; hostiles start")

    left = lambda: max(5.0, D - (time.monotonic() - t0) - 5)  # noqa: E731
    hostiles: list[tuple] = []
    nproc = math.ceil(a.writers / WRITERS_PER_PROCESS) if a.writers else 0
    for k in range(nproc):
        n = min(WRITERS_PER_PROCESS, a.writers - k * WRITERS_PER_PROCESS)
        hostiles.append(client("writers", ["--target", f"127.0.0.1:{PORT}", "--count", n, "--source",
                                           f"127.0.2.{k + 1}", "--duration", left(),
                                           "--max-bytes", a.writer_bytes, "--reconnect", 3], raw,
                                   f"{tag}-writers{k}"))
    hostiles.append(client("slowloris", ["--target", f"127.0.0.1:{METRICS_PORT}", "--count", 200,
                                         "--duration", left()], raw, f"{tag}-slowloris"))
    hostiles.append(client("rststorm", ["--target", f"127.0.0.1:{PORT}", "--source", "127.0.4.1",
                                        "--batch", 200, "--every", 0.5, "--duration", left()], raw, f"{tag}-rststorm"))
    hostiles.append(client("flood", ["--target", f"127.0.0.1:{PORT}", "--source", "127.0.3.1", "--count", 3000,
                                     "--every", 10, "--duration", left()], raw, f"{tag}-flood"))
    hostiles.append(client("garbage", ["--target", f"127.0.0.1:{PORT}", "--source", "127.0.5.1", "--count", 50,
                                       "--duration", left()], raw, f"{tag}-garbage"))
    result["commands"]["clients"] = "bench/adversarial_clients.py (see raw/*.out for each one's counts)"

    # Vanishing clients, in rounds over the first half of the run (so that the idle timeout, 60 s by
    # default, has closed them all by the end).
    vanish_rounds = []
    for r in range(a.vanish_rounds):
        at = t0 + 10 + r * max(1.0, (D / 2 - 10) / max(1, a.vanish_rounds))
        while time.monotonic() < at:
            time.sleep(0.2)
        veth = Veth(a.cli_ns, f"{os.getpid() % 10000}{r}")
        veth.up()
        p, w = client("vanish", ["--target", f"{VETH_SRV_ADDR}:{PORT}", "--count", a.vanish_count,
                                 "--duration", 60], raw, f"{tag}-vanish{r}", netns=a.cli_ns)
        m = w.wait_for(r'"phase": "ready"', 60)
        ready = json.loads(m.string) if m else {"error": w.tail(2)}
        time.sleep(1.0)  # the streaming half gets going
        veth.delete()
        B.stop_process(p, grace=0.5, sig=signal.SIGKILL)
        ready["vanished_at_s"] = round(time.monotonic() - t0, 1)
        vanish_rounds.append(ready)
        B.log(f"[{tag}] vanish round {r}: {ready}")
    result["vanish_rounds"] = vanish_rounds

    # Wait for everyone to finish.
    for p, _ in hostiles + [probe]:
        try:
            p.wait(timeout=max(1.0, D + 60 - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            B.log(f"[{tag}] a client overran its duration; stopping it")
            B.stop_process(p, grace=2)
    try:
        load.wait(timeout=max(1.0, D + 60 - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        B.stop_process(load, grace=5)
    hostile_end = time.monotonic() - t0
    result["hostiles"] = [last_json(w) for _, w in hostiles]
    result["probe"] = last_json(probe[1])
    try:
        result["load"] = json.loads(load_json.read_text())
    except (OSError, ValueError):
        result["load"] = {"error": lw.tail(5)}
    B.log(f"[{tag}] clients done after {hostile_end:.1f} s; waiting for every slot to be freed")

    # Every slot comes back: the vanished connections go at the idle timeout (+ linger).
    freed_at = None
    end_deadline = time.monotonic() + a.free_wait
    held = None
    while time.monotonic() < end_deadline:
        last = sampler.last()
        if (last.get("connections_active") == 0 and last.get("buffers_in_use") == 0
                and last.get("connections_waiting_for_buffer") == 0 and last.get("t", 0) > hostile_end):
            held = held_sockets()
            if held == 0:
                freed_at = last["t"]
                break
        time.sleep(1.0)
    result["held_sockets_at_end"] = held
    body, _ = metrics_text()
    final = parse_metrics(body) if body else {}
    result["final_metrics"] = {k: v for k, v in sorted(final.items())
                               if k.startswith(("ringhold_closes_total{", "ringhold_rejected_total{",
                                                "ringhold_connections_active", "ringhold_buffers",
                                                "ringhold_connections_waiting", "ringhold_buffer_reserve",
                                                "ringhold_linger", "ringhold_lingering", "ringhold_accepts_total",
                                                "ringhold_metrics_scrapes_total", "ringhold_buffer_exhausted"))}
    rss_end_free = B.rss_bytes(server.pid)
    sampler.stop_flag.set()
    sampler.join(timeout=15)
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    B.stop_process(server, grace=1)
    result["server_exit"] = code
    result["samples"] = sampler.samples
    result["hostile_end_s"] = round(hostile_end, 1)
    result["freed_at_s"] = freed_at

    # Verdicts.
    ss = sampler.samples
    half = [s for s in ss if s["t"] >= hostile_end / 2 and s["t"] <= hostile_end and s.get("rss")]
    rss_half = half[0]["rss"] if half else None
    rss_peak_2nd = max((s["rss"] for s in half), default=None)
    rss_peak = max((s["rss"] for s in ss if s.get("rss")), default=None)
    scrapes = [s for s in ss if s["t"] <= hostile_end]
    load_r = result["load"] if isinstance(result["load"], dict) else {}
    fails = load_r.get("failures") or {}
    hb = load_r.get("heartbeats") or {}
    conns = load_r.get("connections") or {}
    probe_r = result["probe"] or {}
    checks = {
        "load: 0 failures": bool(load_r) and all(v == 0 for v in fails.values()) and bool(fails),
        "load: 0 heartbeats lost": hb.get("lost") == 0 and (hb.get("echoed") or 0) > 0,
        "load: every connection alive at the end": conns.get("alive") == a.population,
        "probe: 0 failures": probe_r.get("failures") == 0 and (probe_r.get("echoed") or 0) > 0,
        f"probe: p50 < {PROBE_P50_MS:g} ms": (probe_r.get("p50_ms") or 1e9) < PROBE_P50_MS,
        f"probe: max < {PROBE_MAX_MS:g} ms": (probe_r.get("max_ms") or 1e9) < PROBE_MAX_MS,
        f"scrapes: all served, each < {SCRAPE_MAX_S:g} s": bool(scrapes) and all(
            s["scrape_ok"] and s["scrape_s"] < SCRAPE_MAX_S for s in scrapes),
        "RSS flat over the second half (< 8 MiB growth)": rss_half is not None
        and rss_peak_2nd - rss_half < RSS_GROWTH_MAX,
        "every slot freed (active 0, buffers 0, no socket held)": freed_at is not None,
        "exit 0 on SIGTERM": code == 0,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    result["rss"] = {"start": rss0, "half": rss_half, "peak_second_half": rss_peak_2nd, "peak": rss_peak,
                     "after_free": rss_end_free}
    result["scrape_max_s"] = max((s["scrape_s"] for s in scrapes), default=None)
    result["tcp_mem_peak_pages"] = max((s["tcp_mem_pages"] for s in ss), default=None)
    result["loadavg1_mean"] = round(sum(s["loadavg1"] for s in ss) / max(1, len(ss)), 1)
    result["loadavg1_max"] = max((s["loadavg1"] for s in ss), default=None)
    for k in ("buffers_in_use", "buffers_capacity", "connections_waiting_for_buffer", "connections_active"):
        result[f"peak_{k}"] = max((s.get(k) or 0 for s in ss), default=None)
    B.write_json(a.out / f"{tag}.json", result)
    B.log(f"[{tag}] {'PASS' if result['passed'] else 'FAIL'}: " +
          ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    return 0 if result["passed"] else 1


# ------------------------------------------------------------------------------------------ report


def fmt_mib(b) -> str:
    return "–" if b is None else f"{b / (1 << 20):.1f}"


def report(out: Path, command: str | None, note: str | None, notes_file: Path | None = None) -> None:
    runs = []
    for f in sorted(out.glob("*-w*.json")):
        if f.name.endswith("-load.json"):
            continue
        try:
            runs.append(json.loads(f.read_text()))
        except ValueError:
            continue
    if not runs:
        raise SystemExit(f"no runs in {out}")
    m = runs[0]["machine"]
    g = runs[0]["git"]
    lines = [
        "# bench/adversarial: hostile and unlucky clients against one server (issue 11)",
        "",
        f"- date: {runs[0]['date']}",
        f"- machine: {m['host']}, {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, "
        f"{m['mem_total_bytes'] >> 30} GiB, RLIMIT_NOFILE {m['rlimit_nofile']}, load average at start "
        f"{' '.join(m['loadavg'])} (a shared machine: other jobs ran)",
        f"- commit: {g['commit']}{' (dirty)' if g['dirty'] else ''} on {g['branch']}",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    if note:
        lines.append(f"- note: {note}")
    lines += ["- server: " + ", ".join(f"`{r['server_cmd']}`" for r in runs[:1]) + " (the engine varies)",
              f"- well-behaved population: `{runs[0]['commands'].get('load', '')}` and one ping-pong probe "
              "(64 B every 20 ms)", ""]
    lines += ["| engine | writers | verdict | load failures / lost | load p99 / max (ms) | probe p50 / p99 / max (ms) "
              "| scrape max (s) | RSS start → half → peak (MiB) | buffers in use peak / capacity | waiting peak "
              "| TCP mem peak (MiB) | slots freed after (s) | machine load avg (mean / max) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ld = r.get("load") or {}
        lat = ld.get("latency_us") or {}
        fails = sum((ld.get("failures") or {}).values())
        lost = (ld.get("heartbeats") or {}).get("lost")
        pr = r.get("probe") or {}
        rs = r["rss"]
        freed = "never" if r["freed_at_s"] is None else f"{r['freed_at_s'] - r['hostile_end_s']:.0f}"
        lines.append(
            f"| {r['engine']} | {r['writers']:,} | {'PASS' if r['passed'] else 'FAIL'} | {fails} / {lost} "
            f"| {lat.get('p99', 0) / 1000:.1f} / {lat.get('max', 0) / 1000:.1f} "
            f"| {pr.get('p50_ms')} / {pr.get('p99_ms')} / {pr.get('max_ms')} | {r['scrape_max_s']} "
            f"| {fmt_mib(rs['start'])} → {fmt_mib(rs['half'])} → {fmt_mib(rs['peak'])} "
            f"| {r['peak_buffers_in_use']:.0f} / {r['peak_buffers_capacity']:.0f} "
            f"| {r['peak_connections_waiting_for_buffer']:.0f} "
            f"| {(r['tcp_mem_peak_pages'] or 0) * 4096 / (1 << 20):.0f} | {freed} "
            f"| {r.get('loadavg1_mean', '–')} / {r.get('loadavg1_max', '–')} |")
    lines.append("")
    for r in runs:
        lines += [f"## {r['engine']}, {r['writers']:,} writers: {'PASS' if r['passed'] else 'FAIL'}", ""]
        for k, v in r["checks"].items():
            lines.append(f"- {'ok' if v else '**FAILED**'}: {k}")
        lines.append("")
        lines.append("Hostile clients (each one's own counts):")
        lines.append("")
        for h in r.get("hostiles") or []:
            lines.append(f"- `{json.dumps(h)}`")
        for v in r.get("vanish_rounds") or []:
            lines.append(f"- vanish: `{json.dumps(v)}`")
        lines.append(f"- probe: `{json.dumps(r.get('probe'))}` (`worst_ms_at_s`: the slowest round trips, "
                     "ms, and when, s after the probe started)")
        lines.append("")
        lines.append("Server counters at the end: " + ", ".join(
            f"`{k.removeprefix('ringhold_')}` {v:g}" for k, v in r["final_metrics"].items()))
        lines.append("")
    lines += [
        "Columns: *load* is `ringhold load`'s JSON (failures by cause summed; heartbeats sent without an intact "
        "echo); *probe* a single ping-pong connection; *scrape max* the slowest of the driver's /metrics scrapes "
        "(every 2 s, behind 200 slowloris connections); *RSS half* at half the run, *peak* over the whole run "
        "(the buffer pool is committed as used: up to shards × --buffers × 2 KiB); *TCP mem* the kernel's TCP "
        "memory (both ends of every loopback connection: the writers' unread echo lives there); *slots freed "
        "after*: from the end of the hostile clients until connections_active and buffers_in_use were 0 and "
        "the server held no socket on its port (lingering ones included: `ss`, sockets with an inode) — the "
        "vanished connections wait for the 60 s idle timeout and the 2 s linger; *machine load avg*: the "
        "1-minute load average sampled every 2 s (2 cores; other sessions' jobs included): latency figures "
        "taken at a load average far above 2 measure the machine more than the server.",
        "",
    ]
    if notes_file:
        lines += ["## Notes", "", notes_file.read_text().strip(), ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--engine", required=True, choices=["uring", "epoll"])
    r.add_argument("--writers", type=int, default=5000)
    r.add_argument("--writer-bytes", type=int, default=256 * 1024,
                   help="bytes each writer sends at most (bounds the kernel memory its unread echo takes)")
    r.add_argument("--population", type=int, default=2000)
    r.add_argument("--duration", type=float, default=120.0)
    r.add_argument("--shards", type=int, default=2)
    r.add_argument("--vanish-rounds", type=int, default=3)
    r.add_argument("--vanish-count", type=int, default=500)
    r.add_argument("--free-wait", type=float, default=150.0)
    r.add_argument("--cli-ns", required=True)
    r.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("out", type=Path)
    rep.add_argument("--command")
    rep.add_argument("--note")
    rep.add_argument("--notes-file", type=Path, help="markdown appended as a Notes section")
    a = ap.parse_args()
    if a.cmd == "report":
        report(a.out, a.command, a.note, a.notes_file)
        return 0
    B.install_signal_handlers()
    try:
        return do_run(a)
    except (B.BenchError, KeyboardInterrupt) as e:
        B.log(f"failed: {e}")
        return 2
    finally:
        B.REGISTRY.kill_all()


if __name__ == "__main__":
    sys.exit(main())
