#!/usr/bin/env python3
"""Kernel slab per idle connection, one server configuration at a time (issue 14, parking).

For each round and each configuration (in turn, so that the machine's noise hits all alike): start
`ringhold serve`, read /proc/slabinfo and /proc/meminfo, open N connections with bench-client
(`--mode hold`, RST close), wait until the server holds them all (sock_diag via `ss`), wait `--settle`
(long enough for parking), read again, stop both, wait until the sockets are gone. Prints one JSON line
per measurement; `--out` also writes them all as JSON.

Usage: idle_slab.py --bin target/release/ringhold --client PATH/bench-client -n 15000 --rounds 3 \
         --config 'uring-parked=--engine uring --park-after 1s' \
         --config 'uring-unparked=--engine uring --park-after 0' --config 'epoll=--engine epoll'
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


def metric(port: int, name: str) -> float | None:
    try:
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                             text=True, timeout=5).stdout
    except Exception:
        return None
    total = None
    for line in out.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def drop_caches(args) -> None:
    """With --drop-caches: free unused dentries and inodes (vm.drop_caches=2) before a reading, so that
    what another process's walk of /proc/<pid>/fd left in the dentry and proc inode caches is not
    counted (the sockets' own dentries and inodes are pinned by their open files and stay)."""
    if args.drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        time.sleep(0.5)


def one(args, name: str, extra: str, port: int, mport: int) -> dict:
    argv = [args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}",
            "--no-pin", "--idle-timeout", "0", *shlex.split(extra)]
    srv = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/park-idle-{name}.log", "w"))
    try:
        time.sleep(1.5)
        drop_caches(args)
        info0 = bl.slab_read()
        slab0 = bl.slab_bytes(info0)
        m0 = {k: bl.meminfo_kib(k) for k in ("Slab", "SUnreclaim", "SReclaimable", "MemAvailable")}
        inuse0 = bl.tcp_inuse()
        tcp0 = info0.get("TCP", (0, 0))[0]
        cli = subprocess.Popen([args.client, "--target", f"127.0.0.1:{port}", "--connections", str(args.n),
                                "--mode", "hold", "--sources", "4", "--duration", str(args.hold)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        est = 0
        while time.monotonic() - t0 < 60:
            est = bl.established_to(port)
            if est >= args.n:
                break
            time.sleep(0.5)
        t_est = time.monotonic() - t0
        time.sleep(args.settle)
        parked = metric(mport, "ringhold_connections_parked")
        drop_caches(args)
        info1 = bl.slab_read()
        slab1 = bl.slab_bytes(info1)
        m1 = {k: bl.meminfo_kib(k) for k in ("Slab", "SUnreclaim", "SReclaimable", "MemAvailable")}
        tcp1 = info1.get("TCP", (0, 0))[0]
        est1 = bl.established_to(port)
        cli.terminate()
        cli.wait(timeout=30)
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
    total, top = bl.slab_delta(slab0, slab1, top=14)
    n = max(est1, 1)
    r = {
        "config": name, "server_args": extra, "connections": est1, "establish_s": round(t_est, 2),
        "parked": parked,
        "slab_per_conn": round(total / n, 1),
        "meminfo_slab_per_conn": round((m1["Slab"] - m0["Slab"]) * 1024 / n, 1),
        "meminfo_sunreclaim_per_conn": round((m1["SUnreclaim"] - m0["SUnreclaim"]) * 1024 / n, 1),
        "interference": bl.slab_interference(tcp0, tcp1, est1),
        "top_per_conn": [[c, round(d / n, 1)] for c, d in top],
        "loadavg": os.getloadavg()[0],
    }
    # Wait until the sockets of this run are gone before the next baseline.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and bl.tcp_inuse() > inuse0 + 200:
        time.sleep(0.5)
    time.sleep(2)
    return r


def all_runs(rs: list) -> str:
    return ", ".join(f"{r['slab_per_conn']} ({r['interference']:+.1%})" for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("-n", type=int, default=15000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=6.0)
    ap.add_argument("--hold", type=float, default=120)
    ap.add_argument("--config", action="append", required=True, help="name=server args")
    ap.add_argument("--drop-caches", action="store_true",
                    help="vm.drop_caches=2 before each reading (see drop_caches())")
    ap.add_argument("--max-interference", type=float, default=0.03)
    ap.add_argument("--out")
    args = ap.parse_args()
    configs = [c.split("=", 1) for c in args.config]
    results = []
    port = 7930
    for rnd in range(args.rounds):
        for name, extra in configs:
            r = one(args, name, extra, port, port + 1)
            r["round"] = rnd + 1
            print(json.dumps(r), flush=True)
            results.append(r)
            port += 2
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nbest of rounds (lowest slab per connection among runs with |interference| <= "
          f"{args.max_interference:.0%}; the cleanest run if none is):")
    for name, _ in configs:
        rs = [r for r in results if r["config"] == name]
        clean = [r for r in rs if abs(r["interference"]) <= args.max_interference]
        b = min(clean, key=lambda r: r["slab_per_conn"]) if clean else min(rs, key=lambda r: abs(r["interference"]))
        print(f"  {name:16} slab/conn {b['slab_per_conn']:8.1f} B  (all: "
              f"{all_runs(rs)}); meminfo Slab {b['meminfo_slab_per_conn']} B, "
              f"SUnreclaim {b['meminfo_sunreclaim_per_conn']} B; parked {b['parked']}")


if __name__ == "__main__":
    main()
