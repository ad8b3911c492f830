"""Shared parts of bench/run, bench/thirty_k and bench/million.

Process control (every process started here is in its own process group and is killed on exit, on
Ctrl-C and on any error), /proc measurements (VmRSS, utime+stime, /proc/slabinfo), sysctls, machine
facts for the archive, and the load clients behind one interface (`ringhold load` or bench-client).

Loopback only: servers listen on 127.0.0.1:0, clients connect from 127.0.x.y source addresses.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = BENCH / "peers"
PEERS_BIN = PEERS_DIR / "target" / "release"
# The ringhold binary under test: $RINGHOLD_BIN, or the workspace release build.
RINGHOLD_BIN = Path(os.environ.get("RINGHOLD_BIN") or ROOT / "target" / "release" / "ringhold")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Connections per client process that uses one fd per connection (RLIMIT_NOFILE hard limit here is
# 20,000; keep a margin for the runtime's own fds).
FD_CONNS_PER_PROCESS = 18_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step of the bench failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------------
# Process control


class _Registry:
    """Every process we start; all of them are killed (process group) when the script ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        atexit.register(self.kill_all)

    def add(self, p: subprocess.Popen) -> None:
        with self.lock:
            self.procs.append(p)

    def kill_all(self) -> None:
        with self.lock:
            procs, self.procs = self.procs, []
        for p in procs:
            stop_process(p, grace=2.0)


REGISTRY = _Registry()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps it that way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def stop_process(p: subprocess.Popen, grace: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
    """Sends `sig` to p's process group, waits `grace` seconds, then SIGKILLs the group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return p.returncode


def spawn(argv: list[str], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw) -> subprocess.Popen:
    p = subprocess.Popen(
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        **kw,
    )
    REGISTRY.add(p)
    return p


class LineWatcher(threading.Thread):
    """Copies a pipe to a log file line by line and remembers the lines (for regex waits)."""

    def __init__(self, pipe, log_path: Path | None, keep: int = 2000) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.log_path = log_path
        self.lines: list[str] = []
        self.keep = keep
        self.cond = threading.Condition()
        self.closed = False
        self.start()

    def run(self) -> None:
        f = open(self.log_path, "a", encoding="utf-8", errors="replace") if self.log_path else None
        try:
            for raw in iter(self.pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if f:
                    f.write(line + "\n")
                    f.flush()
                with self.cond:
                    self.lines.append(line)
                    if len(self.lines) > self.keep:
                        del self.lines[: len(self.lines) - self.keep]
                    self.cond.notify_all()
        finally:
            if f:
                f.close()
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(min(left, 0.5))

    def find_all(self, pattern: str) -> list[re.Match]:
        rx = re.compile(pattern)
        with self.cond:
            return [m for m in (rx.search(x) for x in self.lines) if m]

    def tail(self, n: int = 5) -> str:
        with self.cond:
            return "\n".join(self.lines[-n:])


# ---------------------------------------------------------------------------------------------------
# /proc measurements


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_bytes(pid: int) -> int:
    """VmRSS of the process, in bytes."""
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def slab_read() -> dict[str, tuple[int, int]]:
    """/proc/slabinfo: cache name -> (active_objs, objsize). Needs root."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith("slabinfo") or line.startswith("#"):
                continue
            parts = line.split()
            out[parts[0]] = (int(parts[1]), int(parts[3]))
    return out


def slab_bytes(info: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    """Cache name -> active_objs * objsize."""
    info = slab_read() if info is None else info
    return {k: n * size for k, (n, size) in info.items()}


def tcp_objects() -> int:
    """Live IPv4 + IPv6 TCP sockets (slab objects) on the machine."""
    info = slab_read()
    return sum(info.get(k, (0, 0))[0] for k in ("TCP", "TCPv6"))


def slab_interference(tcp_before: int, tcp_after: int, connections: int) -> float:
    """How far the TCP socket count moved from the 2 × N this run made (both ends), as a fraction of
    2 × N: other processes opening or closing sockets meanwhile. 0 = a clean measurement."""
    if connections <= 0:
        return 0.0
    return round((tcp_after - tcp_before - 2 * connections) / (2 * connections), 4)


def slab_delta(before: dict[str, int], after: dict[str, int], top: int = 8) -> tuple[int, list]:
    """Total delta over all caches and the caches that grew most: [(name, bytes)]."""
    names = set(before) | set(after)
    deltas = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    biggest = sorted(deltas.items(), key=lambda kv: -abs(kv[1]))[:top]
    return sum(deltas.values()), [[n, d] for n, d in biggest if d]


def meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def sockstat() -> dict[str, str]:
    """/proc/net/sockstat as {"TCP": "inuse 12 orphan 0 tw 3 alloc 20 mem 1", ...}."""
    out = {}
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def tcp_sockstat(field: str) -> int:
    parts = sockstat().get("TCP", "").split()
    for k, v in zip(parts[::2], parts[1::2]):
        if k == field:
            return int(v)
    return 0


def _ss(args: list[str]) -> str:
    r = subprocess.run(["ss", "-H", *args], capture_output=True, timeout=60)
    return r.stdout.decode(errors="replace")


def established_to(port: int) -> int:
    """Server-side established TCP sockets on local port `port` (counted by the kernel, via ss)."""
    r = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( src 127.0.0.1:{port} )"], capture_output=True, timeout=120
    )
    return r.stdout.count(b"\n")


def accept_queue(port: int) -> int:
    """Connections waiting in the listeners' accept queues on `port` (sum of listen Recv-Q)."""
    total = 0
    for line in _ss(["-ltn", f"( sport = :{port} )"]).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            total += int(parts[1])
    return total


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_TCP_LISTEN = 10


def _listen_queue_diag(port: int) -> int | None:
    """Σ accept-queue length of the TCP listeners on `port` (IPv4 and IPv6), read with one sock_diag
    dump of listening sockets only: ~0.1 ms, so it can be polled every few ms while `ss` (a process,
    and a walk of every socket for established ones) cannot. None if sock_diag is unavailable."""
    total = 0
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                # nlmsghdr + inet_diag_req_v2 {family, protocol, ext, pad, states, sockid (48 B)}
                req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN) + bytes(48)
                s.send(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 0x1 | 0x300, seq, 0) + req)
                done = False
                while not done:
                    data = s.recv(1 << 16)
                    off = 0
                    while off + 16 <= len(data):
                        length, kind = struct.unpack_from("=IH", data, off)
                        if kind == 3:  # NLMSG_DONE
                            done = True
                            break
                        if kind == 2 or length < 16:  # NLMSG_ERROR
                            return None
                        # inet_diag_msg: family, state, timer, retrans, sockid{sport (be16), …} (48 B),
                        # expires, rqueue (= accept queue length for a listener), wqueue, uid, inode
                        m = off + 16
                        if struct.unpack_from("!H", data, m + 4)[0] == port:
                            total += struct.unpack_from("=I", data, m + 56)[0]
                        off += (length + 3) & ~3
                    if not data:
                        return None
    except OSError:
        return None
    return total


def listen_queue(port: int) -> int:
    """Connections waiting in the accept queues of the listeners on `port` (sock_diag, else ss)."""
    q = _listen_queue_diag(port)
    return accept_queue(port) if q is None else q


def lingering(ports: list[int]) -> int:
    """Sockets to or from 127.0.0.1:<port> for any of `ports` that are neither listening nor
    established (TIME_WAIT, FIN_WAIT, CLOSE_WAIT, orphans): what an earlier measurement left behind.
    (Matching the port number alone would count other processes' clients whose ephemeral port
    happens to be the same number.)"""
    if not ports:
        return 0
    cond = " or ".join(f"src 127.0.0.1:{p} or dst 127.0.0.1:{p}" for p in ports)
    r = subprocess.run(["ss", "-Htan", "exclude", "listening", "exclude", "established", f"( {cond} )"],
                       capture_output=True, timeout=120)
    return r.stdout.count(b"\n")


def wait_quiet(ports: list[int], max_wait: float = 75.0, below: int = 100) -> int:
    """Waits (bounded) until sockets left from earlier runs on `ports` are gone, so a baseline is clean.
    Returns how many were still there."""
    deadline = time.monotonic() + max_wait
    n = lingering(ports)
    while n >= below and time.monotonic() < deadline:
        time.sleep(1.0)
        n = lingering(ports)
    if n >= below:
        log(f"note: {n} sockets from earlier runs still closing")
    return n


# ---------------------------------------------------------------------------------------------------
# System facts and sysctls


def sysctl_get(name: str) -> str | None:
    try:
        return Path("/proc/sys", name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def sysctl_set(name: str, value: str) -> bool:
    try:
        Path("/proc/sys", name.replace(".", "/")).write_text(value)
        return True
    except OSError as e:
        log(f"cannot set {name}={value}: {e}")
        return False


def apply_sysctls(plan: list[tuple[str, str]]) -> list[dict]:
    """Raises each value (element-wise for vectors) if lower; returns [{name, before, after}]."""
    changed = []
    for name, want in plan:
        cur = sysctl_get(name)
        if cur is None:
            log(f"sysctl {name}: not present, skipped")
            continue
        cur_v, want_v = [int(x) for x in cur.split()], [int(x) for x in want.split()]
        new_v = [max(c, w) for c, w in zip(cur_v, want_v)]
        if new_v != cur_v:
            new = " ".join(str(x) for x in new_v)
            if sysctl_set(name, new):
                log(f"sysctl {name}: {cur} -> {new}")
                changed.append({"name": name, "before": cur, "after": new})
    return changed


def restore_sysctls(changed: list[dict]) -> None:
    for c in reversed(changed):
        if sysctl_set(c["name"], c["before"]):
            log(f"sysctl {c['name']} restored to {c['before']}")


WATCHED_SYSCTLS = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_syncookies",
    "net.netfilter.nf_conntrack_max",
    "fs.nr_open",
    "fs.file-max",
    "kernel.io_uring_disabled",
]


def machine() -> dict:
    uname = os.uname()
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": uname.release,
        "kernel_version": uname.version,
        "mem_total_bytes": meminfo_kib("MemTotal") * 1024,
        "rlimit_nofile": list(__import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "sysctls": {k: sysctl_get(k) for k in WATCHED_SYSCTLS},
    }


def git_describe() -> dict:
    def g(*a):
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"commit": g("rev-parse", "HEAD"), "branch": g("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(g("status", "--porcelain", "--untracked-files=no"))}


def archive_dir(kind: str | None = None) -> Path:
    """bench/results/<date>-<host>[-kind][-N]/ (a new directory each run)."""
    base = f"{_dt.date.today().isoformat()}-{socket.gethostname()}"
    if kind:
        base += f"-{kind}"
    d = BENCH / "results" / base
    n = 2
    while d.exists():
        d = BENCH / "results" / f"{base}-{n}"
        n += 1
    (d / "raw").mkdir(parents=True)
    return d


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------------
# Building


def cargo_build(manifest_dir: Path, packages: list[str], jobs: int = 2) -> None:
    argv = ["cargo", "build", "--release", f"-j{jobs}"]
    for p in packages:
        argv += ["-p", p]
    log(f"building: {' '.join(argv)} (in {manifest_dir})")
    r = subprocess.run(argv, cwd=manifest_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
    if r.returncode != 0:
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise BenchError("build failed:\n" + "\n".join(tail))


C_PEER_SRC = PEERS_DIR / "peer-c-epoll" / "echo.c"
C_PEER_CMD = ["gcc", "-O2", "-g", "-Wall", "-Wextra", "-pthread"]


def build_c_peer() -> Path:
    """Builds bench/peers/peer-c-epoll (plain C, gcc) into PEERS_BIN unless it is up to date."""
    out = PEERS_BIN / "peer-c-epoll"
    if out.exists() and out.stat().st_mtime >= C_PEER_SRC.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = C_PEER_CMD + ["-o", str(out), str(C_PEER_SRC)]
    log(f"building: {' '.join(argv)}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise BenchError("gcc failed:\n" + r.stderr.strip()[-2000:])
    return out


def build_ringhold() -> None:
    """Release build of the workspace's ringhold, unless $RINGHOLD_BIN names another binary."""
    if os.environ.get("RINGHOLD_BIN"):
        log(f"using RINGHOLD_BIN={RINGHOLD_BIN} (not building)")
        return
    cargo_build(ROOT, ["ringhold"])


# ---------------------------------------------------------------------------------------------------
# Servers


def server_argv(name: str, threads: int, n: int = 0, fixed_files: int = 16_000) -> list:
    """The command line of bench server `name` (ringhold-uring, ringhold-epoll or a bench/peers binary)
    with `threads` threads/shards, every one run the same way: unpinned, on 127.0.0.1:0. ringhold
    --engine uring gets enough shards that its fixed-file tables hold `n` connections."""
    if name.startswith("ringhold-"):
        engine = name.split("-", 1)[1]
        shards = threads
        # --no-pin: the peers run unpinned, and on a small host the load client shares the server's
        # cores; a shard pinned to the client's core then competes with it (measured on 2 cores: 81-86k
        # msg/s pinned vs 129k unpinned). Pinning pays on a dedicated server, not in this comparison.
        argv = [RINGHOLD_BIN, "serve", "--engine", engine, "--listen", "127.0.0.1:0",
                "--metrics-listen", "off", "--idle-timeout", "0", "--no-pin"]
        if engine == "uring":
            shards = max(threads, -(-n * 115 // (100 * fixed_files)))
            argv += ["--fixed-files", str(fixed_files)]
        return argv + ["--shards", str(shards)]
    if name == "peer-c-epoll-short-read":  # bench/syscalls: the C peer without the read that sees EAGAIN
        return [PEERS_BIN / "peer-c-epoll", "--listen", "127.0.0.1:0", "--threads", str(threads), "--short-read"]
    return [PEERS_BIN / name, "--listen", "127.0.0.1:0", "--threads", str(threads)]


class Server:
    """A running echo server: its process, address and measurements."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready_timeout: float = 30.0) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        log(f"start {name}: {' '.join(self.argv)}")
        self.proc = spawn(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.out = LineWatcher(self.proc.stderr, log_path)
        m = self.out.wait_for(r"listening on (\S+)", ready_timeout)
        if not m:
            code = stop_process(self.proc, grace=1)
            raise BenchError(f"{name} did not start (exit {code}): {self.out.tail(3) or 'no output'}")
        host, _, port = m.group(1).rpartition(":")
        self.addr = m.group(1)
        self.port = int(port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def threads(self) -> int:
        return int(proc_status(self.pid).get("Threads", "0"))

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=15)


# ---------------------------------------------------------------------------------------------------
# Load clients


# The rule `ringhold load --sources auto` follows (crates/ringhold-load/src/plan.rs): at most 30 % of a
# source's ephemeral port range per source, because connect()'s port search slows sharply once half of
# a source's ports (the even ones, searched first) are taken.
SOURCE_FILL = 0.30


def port_span() -> int:
    """Ephemeral ports per source address: net.ipv4.ip_local_port_range (default 32768-60999)."""
    try:
        lo, hi = (int(x) for x in (sysctl_get("net.ipv4.ip_local_port_range") or "").split())
        return hi - lo + 1
    except ValueError:
        return 60999 - 32768 + 1


def sources_needed(connections: int) -> int:
    """Source addresses for `connections` to one target so that no source is more than 30 % used."""
    per = max(1, int(port_span() * SOURCE_FILL))
    return max(1, -(-connections // per))


def sources_range(count: int, base: str = "127.0.1.1") -> tuple[str, str]:
    """`count` source addresses from `base`, skipping .0 and .255; returns (first, last)."""
    a, b, c, d = (int(x) for x in base.split("."))
    idx = (d - 1) + count - 1
    last = f"{a}.{b}.{c + idx // 254}.{1 + idx % 254}"
    return base, last


class ClientRun:
    """A group of client processes that together open `connections` connections."""

    def __init__(self, kind: str, procs: list[tuple[subprocess.Popen, LineWatcher, Path | None]],
                 connections: int, started: float) -> None:
        self.kind = kind
        self.procs = procs
        self.connections = connections
        self.started = started
        self.results: list[dict] = []

    def alive(self) -> int:
        return sum(1 for p, _, _ in self.procs if p.poll() is None)

    def established_reports(self) -> list[tuple[int, float]]:
        """(established, seconds) per process that printed its `established N in S s` line."""
        out = []
        for _, w, _ in self.procs:
            ms = w.find_all(r"established (\d+) in ([\d.]+) s")
            if ms:
                out.append((int(ms[-1].group(1)), float(ms[-1].group(2))))
        return out

    def connected(self) -> int:
        """Connections the clients say they made so far (their progress lines)."""
        if self.kind == "bench-client":
            return sum(r[0] for r in self.established_reports())
        total = 0
        for _, w, _ in self.procs:
            ms = w.find_all(r"connected (\d+)/(\d+)")
            if ms:
                total += int(ms[-1].group(1))
        return total

    def establish_seconds(self) -> float | None:
        """After stop(): the clients' own time to establish (the slowest process), if they report one."""
        vals = [r.get("establish_seconds") for r in self.results if isinstance(r, dict)]
        if not vals or any(v is None for v in vals):
            return None
        return max(vals)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 30.0) -> list[dict]:
        for p, _, _ in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
        return self.collect(grace)

    def collect(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        self.results = []
        for p, w, json_path in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            stop_process(p, grace=1)
            res = None
            if json_path and json_path.exists():
                try:
                    res = json.loads(json_path.read_text())
                except ValueError:
                    res = None
            if res is None and p.stdout is not None:
                try:
                    text = p.stdout.read().decode(errors="replace").strip()
                    res = json.loads(text.splitlines()[-1]) if text else None
                except (ValueError, IndexError, OSError):
                    res = None
            if res and res.get("schema", "").startswith("ringhold-load/"):
                res = normalize_load_json(res)
            self.results.append(res or {"error": f"no result (exit {p.returncode}): {w.tail(2)}"})
        return self.results


def normalize_load_json(r: dict) -> dict:
    """Maps a `ringhold load --json` report (schema ringhold-load/1) onto bench-client's keys."""
    conns = r.get("connections") or {}
    hb = r.get("heartbeats") or {}
    fails = r.get("failures") or {}
    attempted, connected = conns.get("attempted") or 0, conns.get("connected") or 0
    never = max(0, attempted - connected)
    hints = "; ".join(f"{k}: {v}" for k, v in (r.get("hints") or {}).items())
    return {
        "client": "ringhold-load",
        "connections": (r.get("config") or {}).get("connections"),
        "established": connected,
        "connect_errors": never,
        "establish_seconds": (r["ramp_us"] / 1e6) if r.get("ramp_us") else None,
        "lost": max(0, (conns.get("failed") or 0) - never),
        "messages": hb.get("echoed") or 0,
        "heartbeats_lost": hb.get("lost") or 0,
        "mismatches": fails.get("mismatch") or 0,
        "latency_us": r.get("latency_us"),
        "first_error": hints or None,
        "raw": r,
    }


class Client:
    """Builds client command lines. `kind` is `bench-client` or `ringhold-load`."""

    def __init__(self, kind: str, raw_dir: Path, sources: int | None = 64, source_base: str = "127.0.1.1") -> None:
        """`sources`: client source addresses from `source_base` on; None = as many as the connections
        need (`ringhold load` then chooses them itself: --sources auto)."""
        self.kind = kind
        self.raw_dir = raw_dir
        self.sources = sources
        self.source_base = source_base
        self.seq = 0

    @staticmethod
    def detect(preferred: str = "auto") -> str:
        """`ringhold-load` when `ringhold load` is a real load generator, else `bench-client`."""
        if preferred != "auto":
            return preferred
        if RINGHOLD_BIN.exists():
            r = subprocess.run([str(RINGHOLD_BIN), "load", "--help"], capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and "--connections" in r.stdout:
                return "ringhold-load"
        return "bench-client"

    def per_process(self) -> int:
        # ringhold load keeps connections as direct descriptors: fds do not bound it.
        return 1_000_000 if self.kind == "ringhold-load" else FD_CONNS_PER_PROCESS

    def _argv(self, target: str, n: int, mode: str, duration: float, message_size: int,
              heartbeat: float, connect_rate: float, threads: int, json_path: Path) -> list[str]:
        count = self.sources if self.sources is not None else sources_needed(n)
        first, last = sources_range(count, self.source_base)
        if self.kind == "ringhold-load":
            if mode == "pingpong":
                raise BenchError("ringhold load has no closed-loop ping-pong mode; use bench-client")
            # No --sources: `ringhold load` then chooses enough 127.x sources itself (--sources auto).
            src = ["--sources", f"{first}-{last}"] if self.sources is not None else []
            return [str(RINGHOLD_BIN), "load", "--target", target, "--connections", str(n),
                    *src, "--connect-rate", f"{connect_rate:g}",
                    "--message-size", str(message_size), "--interval", f"{round(heartbeat * 1000)}ms",
                    "--duration", f"{round(duration * 1000)}ms", "--json", str(json_path)]
        return [str(PEERS_BIN / "bench-client"), "--target", target, "--connections", str(n),
                "--mode", mode, "--sources", str(count), "--source-base", self.source_base,
                "--connect-rate", f"{connect_rate:g}", "--message-size", str(message_size),
                "--duration", f"{duration:g}", "--heartbeat", f"{heartbeat:g}", "--threads", str(threads)]

    def start(self, target: str, connections: int, mode: str = "hold", duration: float = 600.0,
              message_size: int = 64, heartbeat: float = 0.0, connect_rate: float = 0.0,
              threads: int = 1, tag: str = "client") -> ClientRun:
        """Starts enough processes for `connections` (each within its fd budget), all at once."""
        per = self.per_process()
        nproc = max(1, -(-connections // per))
        procs = []
        started = time.monotonic()
        for i in range(nproc):
            n = connections // nproc + (1 if i < connections % nproc else 0)
            self.seq += 1
            json_path = self.raw_dir / f"{tag}-{self.seq}.json"
            argv = self._argv(target, n, mode, duration, message_size, heartbeat,
                              connect_rate / nproc, threads, json_path)
            log_path = self.raw_dir / f"{tag}-{self.seq}.log"
            if i == 0:
                log(f"clients: {nproc} × {' '.join(argv)}")
            p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append((p, LineWatcher(p.stderr, log_path), json_path if self.kind == "ringhold-load" else None))
        return ClientRun(self.kind, procs, connections, started)


def wait_established(run: ClientRun, port: int, want: int, timeout: float, inuse0: int,
                     stall: float = 30.0, log_every: float = 0.0, server: "Server | None" = None) -> dict:
    """Waits until the server has accepted the connections to `port`, and times it AT THE SERVER.

    `seconds` runs from the start of the clients (`run.started`, just before they are spawned) to the
    moment the server has accepted every connection: all of them established server-side (ss) and the
    listeners' accept queues empty, i.e. the server's accept calls took them all. The clients' own
    "connect() returned" time is `client_seconds`; it is shorter whenever the server accepts more slowly
    than the kernel completes handshakes (the connections then wait in the accept queue).

    How: poll the cheap signals first — the clients' reports (bench-client's `established N in S s`
    line), the machine's TCP sockets in use (both ends; a server-side socket exists once its handshake
    completed) — until the clients are done; then poll the accept queue with sock_diag every ~2 ms
    until it is empty; then confirm with `ss` (which walks every socket, so is called rarely). The
    largest accept queue seen on the way is `accept_queue_max`. Gives up after `timeout`, when the
    count has not grown for `stall` seconds, or when all clients (or the server) exited."""
    t0 = run.started
    deadline = time.monotonic() + timeout
    last_n, last_change, last_log, last_ss, last_q = -1, time.monotonic(), time.monotonic(), 0.0, 0.0
    seconds = None
    client_seconds = None
    target = want
    qmax = 0
    est = 0
    while True:
        now = time.monotonic()
        if now - last_q >= 0.05:  # the accept queue's depth during the ramp (cheap)
            last_q = now
            qmax = max(qmax, listen_queue(port))
        if run.kind == "bench-client":
            reports = run.established_reports()
            n = sum(r[0] for r in reports)
            done = len(reports) == len(run.procs)
            if done:
                target = min(want, n)
                client_seconds = max(r[1] for r in reports)
        else:
            n = max(run.connected(), (tcp_inuse() - inuse0) // 2)
            done = n >= want
        if done:
            q = listen_queue(port)
            qmax = max(qmax, q)
            if q == 0:
                t_q = time.monotonic()
                if now - last_ss >= 0.5:
                    last_ss = time.monotonic()
                    est = established_to(port)
                    if est >= target:
                        seconds = t_q - t0
                        break
        if n != last_n:
            last_n, last_change = n, now
        if log_every and now - last_log >= log_every:
            log(f"establishing: ~{n} connections after {now - t0:.0f} s")
            last_log = now
        if now > deadline or now - last_change > stall or run.alive() == 0:
            break
        if server is not None and not server.alive():
            break
        time.sleep(0.002 if done else 0.01)
    q_deadline = time.monotonic() + 60
    queued = listen_queue(port)
    while queued and time.monotonic() < q_deadline:
        time.sleep(0.2)
        queued = listen_queue(port)
    if seconds is None:
        est = established_to(port)
    return {"established": est, "seconds": seconds, "client_seconds": client_seconds,
            "accept_queue_left": queued, "accept_queue_max": qmax}


# ---------------------------------------------------------------------------------------------------
# A long hold with heartbeats (bench/thirty_k, bench/million)


def tcp_inuse() -> int:
    """TCP sockets in use machine-wide (both ends of loopback connections): cheap at any scale."""
    return tcp_sockstat("inuse")


def hold_experiment(server_name: str, server_argv: list, connections: int, client: Client, hold: float,
                    heartbeat: float, settle: float, connect_rate: float, raw: Path,
                    establish_timeout: float, sample_every: float = 10.0) -> dict:
    """Starts one server, opens `connections` from `client`, holds them `hold` seconds with a heartbeat
    every `heartbeat` seconds, and measures: time to establish, server RSS and kernel slab per
    connection, server CPU, connections lost. Everything started here is stopped before returning."""
    srv = Server(server_name, server_argv, raw / f"{server_name}.log")
    samples: list[dict] = []
    try:
        time.sleep(1.0)
        info0 = slab_read()
        rss0, slab0, cpu0, inuse0 = srv.rss(), slab_bytes(info0), srv.cpu(), tcp_inuse()
        tcp0 = info0.get("TCP", (0, 0))[0]
        mem0 = meminfo_kib("MemAvailable") * 1024
        log(f"baseline: server RSS {rss0 / 2**20:.1f} MiB, TCP sockets in use {inuse0}")
        # The client's own duration is only a safety bound: this function stops it.
        run = client.start(srv.addr, connections, mode="hold", duration=hold + establish_timeout + 600,
                           heartbeat=heartbeat, connect_rate=connect_rate, tag="client")

        est = wait_established(run, srv.port, connections, establish_timeout, inuse0, log_every=5, server=srv)
        t_established = time.monotonic()
        seconds, established = est["seconds"], est["established"]
        cpu_est = srv.cpu()
        log(f"established {established} of {connections} in {seconds if seconds is None else round(seconds, 2)} s "
            f"(accepted by the server; largest accept queue {est['accept_queue_max']})")
        time.sleep(settle)
        if not srv.alive():
            raise BenchError(f"{server_name} exited: {srv.out.tail(3)}")
        info1 = slab_read()
        rss1, slab1, cpu1 = srv.rss(), slab_bytes(info1), srv.cpu()
        tcp1 = info1.get("TCP", (0, 0))[0]
        mem1 = meminfo_kib("MemAvailable") * 1024
        hold_start = time.monotonic()
        next_sample = hold_start
        while True:
            now = time.monotonic()
            if now >= next_sample:
                s = {"t": round(now - hold_start, 1), "rss_bytes": srv.rss() if srv.alive() else None,
                     "cpu_s": srv.cpu() if srv.alive() else None, "tcp_inuse": tcp_inuse(),
                     "clients_alive": run.alive()}
                samples.append(s)
                log(f"holding: t={s['t']:.0f}s RSS {((s['rss_bytes'] or 0)) / 2**20:.1f} MiB, "
                    f"TCP in use {s['tcp_inuse']}, clients alive {s['clients_alive']}/{len(run.procs)}")
                next_sample += sample_every
            if now - hold_start >= hold or not srv.alive() or run.alive() < len(run.procs):
                break
            time.sleep(min(1.0, max(0.05, next_sample - now)))
        held_end = established_to(srv.port) if srv.alive() else 0
        # How long the connections were really held: from the end of the ramp to the count above (the
        # loop ends early when the server or a client exits).
        held_seconds = time.monotonic() - t_established
        hold_loop_seconds = time.monotonic() - hold_start
        rss2 = srv.rss() if srv.alive() else None
        cpu2 = srv.cpu() if srv.alive() else None
        server_alive = srv.alive()
        clients = run.stop(grace=60)
    finally:
        srv.stop()
    slab_total, slab_top = slab_delta(slab0, slab1, top=12)
    per = max(established, 1)
    ok = [c for c in clients if isinstance(c, dict) and "error" not in c]

    def csum(key: str) -> int:
        return sum(int(c.get(key) or 0) for c in ok)

    return {
        "passed": None,
        "server": server_name,
        "server_argv": [str(a) for a in server_argv],
        "requested": connections,
        "established": established,
        # Timed at the server (wait_established): until every connection was accepted.
        "establish_seconds": seconds,
        "establish_per_s": round(established / seconds, 1) if seconds else None,
        # The client's own clock (until its connects returned / settled), for comparison.
        "establish_seconds_client": run.establish_seconds(),
        "accept_queue_max": est["accept_queue_max"],
        "held_at_end": held_end,
        "server_alive_at_end": server_alive,
        "not_established": max(0, connections - established),
        "lost": max(0, established - held_end) if server_alive else established,
        "client_lost": csum("lost"),
        "client_connect_errors": csum("connect_errors"),
        "heartbeats_ok": csum("messages"),
        "mismatches": csum("mismatches"),
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "rss_end_bytes": rss2,
        "rss_per_conn_bytes": round((rss1 - rss0) / per, 1),
        "rss_total_per_conn_bytes": round(rss1 / per, 1),
        "slab_delta_bytes": slab_total,
        "slab_per_conn_bytes": round(slab_total / per, 1),
        "slab_top": slab_top,
        "slab_interference": slab_interference(tcp0, tcp1, established),
        "mem_available_delta_per_conn_bytes": round((mem0 - mem1) / per, 1),
        "server_cpu_establish_s": round(cpu_est - cpu0, 3),
        "server_cpu_hold_s": None if cpu2 is None else round(cpu2 - cpu1, 3),
        "server_cpu_total_s": None if cpu2 is None else round(cpu2 - cpu0, 3),
        "hold_seconds_requested": hold,
        "hold_seconds": round(held_seconds, 1),
        "hold_loop_seconds": round(hold_loop_seconds, 1),
        "heartbeat_seconds": heartbeat,
        "samples": samples,
        "clients": clients,
    }


def hold_markdown(title: str, meta: dict, r: dict, extra: list[str] | None = None) -> str:
    m = meta["machine"]
    est_s = "–" if r["establish_seconds"] is None else f"{r['establish_seconds']:.2f} s"
    est_rate = "–" if not r["establish_per_s"] else f"{r['establish_per_s']:,.0f} /s"
    c = r.get("establish_seconds_client")
    est_c = "–" if c is None else f"{c:.2f} s"
    total_rss = (f"{r['rss_after_bytes'] / max(r['established'], 1):,.1f} B (RSS {r['rss_after_bytes'] / 2**20:.1f} MiB ÷ "
                 f"{r['established']:,})")
    lines = [
        f"# {title} — {meta['date']} on {m['host']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_total_bytes'] / 2**30:.1f} GiB, Linux {m['kernel']}, "
        f"RLIMIT_NOFILE {m['rlimit_nofile'][0]}/{m['rlimit_nofile'][1]}.",
        f"Commit: `{(meta['git'].get('commit') or '?')[:12]}`. Command: `{meta['command']}`",
        f"Server: `{' '.join(r['server_argv'])}`; client: {meta.get('client')}",
        *([f"Note: {meta['note']}"] if meta.get("note") else []),
        "",
        "| measure | value |",
        "|---|---:|",
        f"| connections requested | {r['requested']:,} |",
        f"| established (server side) | {r['established']:,} |",
        f"| time to establish (until the server accepted them all) | {est_s} |",
        f"| establish rate | {est_rate} |",
        f"| time to establish, client's clock | {est_c} |",
        f"| held for (measured: end of ramp to final count; hold asked for {r.get('hold_seconds_requested', r['hold_seconds']):g} s "
        f"after a settle) "
        f"| {r['hold_seconds']:g} s |",
        f"| held at the end | {r['held_at_end']:,} |",
        f"| connections lost while held | {r['lost']:,} (client saw {r['client_lost']:,}) |",
        f"| never established | {r['not_established']:,} (client connect errors {r['client_connect_errors']:,}) |",
        f"| heartbeats echoed intact (every {r['heartbeat_seconds']:g} s) | {r['heartbeats_ok']:,} (mismatches {r['mismatches']}) |",
        f"| server RSS per connection, marginal | {r['rss_per_conn_bytes']:,.1f} B ({(r['rss_after_bytes'] - r['rss_before_bytes']) / 2**20:.1f} MiB for all) |",
        f"| server RSS per connection, total | {total_rss} |",
        f"| kernel slab per connection (both ends) | {r['slab_per_conn_bytes']:,.0f} B ({r['slab_delta_bytes'] / 2**20:.1f} MiB; "
        f"interference {r['slab_interference']:+.1%}) |",
        f"| MemAvailable drop per connection | {r['mem_available_delta_per_conn_bytes']:,.0f} B |",
        f"| server CPU: establish / hold / total | {r['server_cpu_establish_s']} s / {r['server_cpu_hold_s']} s / {r['server_cpu_total_s']} s |",
        "",
        "Top slab caches (delta per connection): "
        + ", ".join(f"{c} {d / max(r['established'], 1):+.0f} B" for c, d in r["slab_top"][:8]),
        "",
    ]
    return "\n".join(lines + (extra or []))
