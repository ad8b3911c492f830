#!/usr/bin/env python3
"""Server CPU and kernel slab for a heartbeat population (issue 14, parking).

For each round and each configuration in turn: start `ringhold serve`, open N connections with
bench-client `--mode hold --heartbeat H` (one 64 B message per connection every H seconds, each echoed
and checked by the client), wait until all are established plus `--settle`, then measure over
`--window` seconds: the server's CPU (utime+stime from /proc), the messages it echoed (its
`ringhold_bytes_received_total` ÷ message size), the io_uring submissions and completions, the parked
gauge, and kernel slab (sampled 5 times in the window, mean delta per connection against the baseline
before the clients started). Prints one JSON line per measurement; a summary at the end.

Usage: heartbeat.py --bin target/release/ringhold --client PATH/bench-client -n 15000 --heartbeat 5 \
         --config 'parked=--engine uring --park-after 1s' --config 'unparked=--engine uring --park-after 0'
       (a config may set environment variables first: 'name=ENV=value ... -- server args')
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import benchlib as bl  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def metrics(port: int) -> dict:
    out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                         text=True, timeout=10).stdout
    m: dict = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            m[name] = m.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return m


def slab_now() -> tuple[dict, dict]:
    return bl.slab_bytes(), {k: bl.meminfo_kib(k) for k in ("Slab", "SUnreclaim")}


def one(args, name: str, spec: str, port: int) -> dict:
    env = dict(os.environ)
    words = shlex.split(spec)
    if "--" in words:
        cut = words.index("--")
        for w in words[:cut]:
            k, _, v = w.partition("=")
            env[k] = v
        words = words[cut + 1:]
    mport = port + 1
    argv = [args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}",
            "--no-pin", "--idle-timeout", "0", *words]
    srv = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                           stderr=open(f"/tmp/park-hb-{name}.log", "w"))
    cli = None
    try:
        time.sleep(1.5)
        slab0, mem0 = slab_now()
        inuse0 = bl.tcp_inuse()
        cli = subprocess.Popen([args.client, "--target", f"127.0.0.1:{port}", "--connections", str(args.n),
                                "--mode", "hold", "--sources", "4", "--heartbeat", str(args.heartbeat),
                                "--message-size", str(args.message_size),
                                "--duration", str(args.settle + args.window + 60)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and bl.established_to(port) < args.n:
            time.sleep(0.5)
        time.sleep(args.settle)
        m0, c0, w0 = metrics(mport), cpu(srv.pid), time.monotonic()
        samples = []
        for k in range(5):
            time.sleep(args.window / 5)
            slab, mem = slab_now()
            mm = metrics(mport)
            samples.append({
                "slab": sum(slab.values()) - sum(slab0.values()),
                "sunreclaim_kib": mem["SUnreclaim"] - mem0["SUnreclaim"],
                "kmalloc512": slab.get("kmalloc-512", 0) - slab0.get("kmalloc-512", 0),
                "kmalloc96": slab.get("kmalloc-96", 0) - slab0.get("kmalloc-96", 0),
                "io_kiocb": slab.get("io_kiocb", 0) - slab0.get("io_kiocb", 0),
                "parked": mm.get("ringhold_connections_parked"),
            })
        m1, c1, w1 = metrics(mport), cpu(srv.pid), time.monotonic()
        held = bl.established_to(port)
        cli.terminate()
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli and cli.poll() is None:
            cli.kill()
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
    try:
        client = json.loads(out.decode().strip().splitlines()[-1])
    except Exception:
        client = {}
    d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)  # noqa: E731
    msgs = d("ringhold_bytes_received_total") / args.message_size
    n = max(held, 1)
    r = {
        "config": name, "spec": spec, "held": held, "window_s": round(w1 - w0, 2),
        "messages": round(msgs), "server_cpu_s": round(c1 - c0, 3),
        "cpu_us_per_msg": round((c1 - c0) * 1e6 / max(msgs, 1), 2),
        "sqe_per_msg": round(d("ringhold_uring_submits_total") / max(msgs, 1), 3),
        "cqe_per_msg": round(d("ringhold_uring_completions_total") / max(msgs, 1), 3),
        "parks_in_window": d("ringhold_parks_total"),
        "parked_samples": [s["parked"] for s in samples],
        "slab_per_conn_mean": round(sum(s["slab"] for s in samples) / len(samples) / n, 1),
        "sunreclaim_per_conn_mean": round(sum(s["sunreclaim_kib"] for s in samples) * 1024 / len(samples) / n, 1),
        "kmalloc512_per_conn_mean": round(sum(s["kmalloc512"] for s in samples) / len(samples) / n, 1),
        "kmalloc96_per_conn_mean": round(sum(s["kmalloc96"] for s in samples) / len(samples) / n, 1),
        "io_kiocb_per_conn_mean": round(sum(s["io_kiocb"] for s in samples) / len(samples) / n, 1),
        "client": {k: client.get(k) for k in ("established", "messages", "mismatches", "lost", "connect_errors")},
        "loadavg": os.getloadavg()[0],
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and bl.tcp_inuse() > inuse0 + 200:
        time.sleep(0.5)
    time.sleep(2)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("-n", type=int, default=15000)
    ap.add_argument("--heartbeat", type=float, default=5.0)
    ap.add_argument("--message-size", type=int, default=64)
    ap.add_argument("--settle", type=float, default=8.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--config", action="append", required=True, help="name=[ENV=v ... --] server args")
    ap.add_argument("--out")
    args = ap.parse_args()
    configs = [c.split("=", 1) for c in args.config]
    results = []
    port = 7980
    for rnd in range(args.rounds):
        for name, spec in configs:
            r = one(args, name, spec, port)
            r["round"] = rnd + 1
            print(json.dumps(r), flush=True)
            results.append(r)
            port += 2
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\nper configuration (median of rounds):")
    for name, _ in configs:
        rs = sorted((r for r in results if r["config"] == name), key=lambda r: r["cpu_us_per_msg"])
        med = rs[len(rs) // 2]
        print(f"  {name:22} CPU µs/msg {med['cpu_us_per_msg']:6.2f} (all {[r['cpu_us_per_msg'] for r in rs]}), "
              f"SQE/msg {med['sqe_per_msg']}, CQE/msg {med['cqe_per_msg']}, slab/conn {med['slab_per_conn_mean']}, "
              f"kmalloc-512/conn {med['kmalloc512_per_conn_mean']}")


if __name__ == "__main__":
    main()
