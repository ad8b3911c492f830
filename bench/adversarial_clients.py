#!/usr/bin/env python3
"""Hostile and unlucky clients for bench/adversarial (issue 11, part 6), one kind per process:

  writers    connections that write continuously and never read (SO_RCVBUF 4 KiB)
  probe      one well-behaved ping-pong client: every echo checked, round-trip latency recorded
  slowloris  connections to the metrics port that trickle a request head one byte at a time
  rststorm   batches of connections that send, never read, and close with RST (SO_LINGER 0)
  vanish     connections that echo once (half of them then stream) and are left to vanish: the
             driver deletes their network path, so no FIN or RST ever reaches the server
  flood      rounds of many connects at once, past --max-connections: admitted, refused, hanging
  garbage    random bytes of random sizes, checked echo; some half-close, some reset mid-stream

Every kind runs for at most --duration seconds (SIGALRM at --deadline ends it regardless), opens a
bounded number of sockets, prints one JSON line with its counts at the end (`vanish` also prints
{"phase": "ready"} once connected) and only connects to loopback or to the 10.254.0.0/16 addresses
of the network namespaces bench/adversarial creates.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24


def allowed(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or ip in ipaddress.ip_network("10.254.0.0/16")


def target(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not allowed(host):
        raise argparse.ArgumentTypeError(f"{host}: loopback or 10.254.0.0/16 only")
    return host, int(port)


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def err_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e))


def new_socket(source: str | None, rcvbuf: int = 0, sndbuf: int = 0, mss: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if mss:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    if source:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
    return s


def linger_zero(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def connect_many(addr, n: int, source: str | None, timeout: float, **opts) -> tuple[list, dict]:
    """Opens n connections (non-blocking, all at once); returns (connected sockets, errors by name)."""
    sel = selectors.DefaultSelector()
    errors: dict[str, int] = {}
    pending = 0
    for _ in range(n):
        try:
            s = new_socket(source, **opts)
        except OSError as e:
            errors[err_name(e)] = errors.get(err_name(e), 0) + 1
            continue
        s.setblocking(False)
        rc = s.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            errors[errno.errorcode.get(rc, str(rc))] = errors.get(errno.errorcode.get(rc, str(rc)), 0) + 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        pending += 1
    done = []
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for key, _ in sel.select(timeout=max(0.0, min(0.5, end - time.monotonic()))):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                name = errno.errorcode.get(rc, str(rc))
                errors[name] = errors.get(name, 0) + 1
                s.close()
            else:
                done.append(s)
    for key in list(sel.get_map().values()):
        errors["connect_timeout"] = errors.get("connect_timeout", 0) + 1
        key.fileobj.close()
    sel.close()
    return done, errors


def out(d: dict) -> None:
    print(json.dumps(d), flush=True)


# ------------------------------------------------------------------------------------------ writers


def run_writers(a) -> None:
    raise_nofile(a.count + 100)
    t0 = time.monotonic()
    opts = {"rcvbuf": a.rcvbuf, "sndbuf": a.sndbuf, "mss": a.mss}
    socks, errors = connect_many(a.target, a.count, a.source, 30.0, **opts)
    connected = len(socks)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    junk = (bytes(range(256)) * 64)[: a.chunk]
    per = {s: 0 for s in socks}
    sent = reconnects = 0
    write_errors: dict[str, int] = {}
    lost = 0  # connections the server closed, waiting to be replaced (--reconnect)
    end = t0 + a.duration
    while time.monotonic() < end:
        if lost and reconnects < a.count * a.reconnect:
            fresh, errs = connect_many(a.target, min(lost, a.count * a.reconnect - reconnects), a.source, 5.0,
                                       **opts)
            for k, v in errs.items():
                errors[k] = errors.get(k, 0) + v
            for s in fresh:
                per[s] = 0
                sel.register(s, selectors.EVENT_WRITE)
            reconnects += len(fresh)
            lost -= len(fresh)
        if not sel.get_map():
            # Every connection wrote its --max-bytes: they stay open, unread, until the end.
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))
            continue
        for key, _ in sel.select(timeout=min(0.5, max(0.0, end - time.monotonic()))):
            s = key.fileobj
            room = a.max_bytes - per[s] if a.max_bytes else len(junk)
            try:
                n = s.send(junk[:room])
            except BlockingIOError:
                continue
            except OSError as e:
                write_errors[err_name(e)] = write_errors.get(err_name(e), 0) + 1
                sel.unregister(s)
                del per[s]
                s.close()
                lost += 1
                continue
            sent += n
            per[s] += n
            if a.max_bytes and per[s] >= a.max_bytes:
                sel.unregister(s)
    for s in per:
        s.close()
    out({"kind": "writers", "source": a.source, "connected": connected, "reconnects": reconnects,
         "connect_errors": errors, "sent_bytes": sent, "write_errors": write_errors,
         "secs": round(time.monotonic() - t0, 2)})


# -------------------------------------------------------------------------------------------- probe


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def run_probe(a) -> None:
    t0 = time.monotonic()
    lat: list[float] = []
    worst: list[tuple] = []  # (ms, seconds since start) of the slowest round trips
    failures: list[str] = []
    rnd = random.Random(7)
    s = None
    end = t0 + a.duration
    i = 0
    while time.monotonic() < end:
        if s is None:
            try:
                s = socket.create_connection(a.target, timeout=a.timeout)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:
                failures.append(f"connect: {err_name(e)}")
                s = None
                time.sleep(a.interval)
                continue
        msg = struct.pack("<Q", i) + rnd.randbytes(a.size - 8)
        t = time.monotonic()
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(len(msg) - len(got))
                if not d:
                    raise ConnectionError("EOF")
                got += d
            if got != msg:
                raise ValueError("echo differs")
            lat.append(time.monotonic() - t)
            worst.append((round(lat[-1] * 1000, 1), round(t - t0, 1)))
            worst.sort(reverse=True)
            del worst[5:]
        except (OSError, ConnectionError, ValueError) as e:
            failures.append(f"round trip {i} after {time.monotonic() - t:.3f}s: {e}")
            try:
                s.close()
            except OSError:
                pass
            s = None
        i += 1
        time.sleep(a.interval)
    if s:
        s.close()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    out({"kind": "probe", "round_trips": i, "echoed": len(lat), "failures": len(failures),
         "failure_samples": failures[:10], "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
         "max_ms": ms(max(lat) if lat else None), "over_1s": sum(1 for x in lat if x > 1.0),
         "worst_ms_at_s": worst,
         "secs": round(time.monotonic() - t0, 2)})


# ---------------------------------------------------------------------------------------- slowloris


def run_slowloris(a) -> None:
    raise_nofile(a.count + 100)
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096
    t0 = time.monotonic()
    end = t0 + a.duration
    conns: dict[socket.socket, int] = {}
    opened = dropped = bytes_sent = 0
    errors: dict[str, int] = {}
    while time.monotonic() < end:
        while len(conns) < a.count:
            try:
                s = socket.create_connection(a.target, timeout=5)
                s.setblocking(False)
                conns[s] = 0
                opened += 1
            except OSError as e:
                errors[err_name(e)] = errors.get(err_name(e), 0) + 1
                break
        for s in list(conns):
            try:
                # Anything from the server (an error answer, EOF) means it dropped us.
                try:
                    if s.recv(4096) == b"":
                        raise ConnectionError("EOF")
                    raise ConnectionError("answered")
                except BlockingIOError:
                    pass
                s.send(head[conns[s]: conns[s] + 1])
                conns[s] += 1
                bytes_sent += 1
            except (OSError, ConnectionError):
                dropped += 1
                s.close()
                del conns[s]
        time.sleep(a.gap)
    for s in conns:
        s.close()
    out({"kind": "slowloris", "opened": opened, "dropped_by_server": dropped, "bytes_sent": bytes_sent,
         "connect_errors": errors, "secs": round(time.monotonic() - t0, 2)})


# ----------------------------------------------------------------------------------------- rststorm


def run_rststorm(a) -> None:
    raise_nofile(a.batch + 100)
    t0 = time.monotonic()
    end = t0 + a.duration
    junk = os.urandom(a.bytes)
    rounds = opened = 0
    errors: dict[str, int] = {}
    while time.monotonic() < end and rounds < a.max_rounds:
        socks, errs = connect_many(a.target, a.batch, a.source, 5.0)
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
        opened += len(socks)
        for s in socks:
            try:
                s.send(junk)
            except OSError:
                pass
        time.sleep(0.05)  # let the echo start flowing back, unread
        for s in socks:
            linger_zero(s)
            s.close()
        rounds += 1
        time.sleep(max(0.0, a.every - 0.05))
    out({"kind": "rststorm", "rounds": rounds, "opened": opened, "connect_errors": errors,
         "secs": round(time.monotonic() - t0, 2)})


# ------------------------------------------------------------------------------------------- vanish


def run_vanish(a) -> None:
    raise_nofile(a.count + 100)
    socks, errors = connect_many(a.target, a.count, None, 15.0)
    echoed = 0
    for s in socks:
        s.setblocking(True)
        s.settimeout(5)
        try:
            s.sendall(b"hello, soon gone")
            got = b""
            while len(got) < 16:
                d = s.recv(16 - len(got))
                if not d:
                    break
                got += d
            echoed += got == b"hello, soon gone"
        except OSError:
            pass
        s.setblocking(False)
    out({"phase": "ready", "kind": "vanish", "connected": len(socks), "echoed": echoed,
         "connect_errors": errors})
    # Half of them stream (the server then has bytes for them when they vanish), until killed.
    streamers = socks[: len(socks) // 2]
    junk = b"v" * 4096
    end = time.monotonic() + a.duration
    while time.monotonic() < end:
        for s in streamers:
            try:
                s.send(junk)
            except OSError:
                pass
        time.sleep(0.05)


# -------------------------------------------------------------------------------------------- flood


def run_flood(a) -> None:
    raise_nofile(a.count + 100)
    t0 = time.monotonic()
    end = t0 + a.duration
    totals = {"rounds": 0, "attempted": 0, "admitted": 0, "refused": 0, "hanging": 0, "connect_failed": 0}
    errors: dict[str, int] = {}
    while time.monotonic() < end and totals["rounds"] < a.max_rounds:
        socks, errs = connect_many(a.target, a.count, a.source, 10.0)
        totals["attempted"] += a.count
        totals["connect_failed"] += a.count - len(socks)
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
        sel = selectors.DefaultSelector()
        for s in socks:
            try:
                s.send(b"flood!")
                sel.register(s, selectors.EVENT_READ)
            except OSError:
                totals["refused"] += 1
        got: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + 5.0
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    d = s.recv(64)
                except OSError:
                    d = b""
                if not d:
                    totals["refused"] += 1
                    sel.unregister(s)
                    continue
                got[s] = got.get(s, b"") + d
                if len(got[s]) >= 6:
                    totals["admitted"] += 1
                    sel.unregister(s)
        totals["hanging"] += len(sel.get_map())
        sel.close()
        for s in socks:
            linger_zero(s)
            s.close()
        totals["rounds"] += 1
        wait = a.every - (time.monotonic() - t0) % a.every
        if time.monotonic() + wait < end:
            time.sleep(wait)
        else:
            break
    out({"kind": "flood", **totals, "connect_errors": errors, "secs": round(time.monotonic() - t0, 2)})


# ------------------------------------------------------------------------------------------ garbage


def run_garbage(a) -> None:
    raise_nofile(a.count + 100)
    rnd = random.Random(11)
    t0 = time.monotonic()
    end = t0 + a.duration
    c = {"sessions": 0, "sent": 0, "echoed": 0, "refused": 0, "mismatches": 0, "cut_short": 0,
         "unexpected_closes": 0,
         "half_closes_ok": 0, "resets_sent": 0}
    samples: list[str] = []
    while time.monotonic() < end:
        socks, _ = connect_many(a.target, a.count, a.source, 5.0)
        for s in socks:
            s.setblocking(True)
            s.settimeout(10)
            c["sessions"] += 1
            msg = rnd.randbytes(rnd.randint(1, 32 * 1024))
            try:
                s.sendall(msg)
                c["sent"] += len(msg)
                fate = rnd.random()
                if fate < 0.2:
                    s.shutdown(socket.SHUT_WR)
                got = bytearray()
                while len(got) < len(msg):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                if bytes(got) == msg:
                    c["echoed"] += len(msg)
                elif not got:
                    # Closed at once: refused (--max-connections, while a flood holds the slots).
                    c["refused"] += 1
                    s.close()
                    continue
                else:
                    # Bytes that are not a prefix of what we sent are a server bug; a prefix that
                    # stops early is a close in mid-echo.
                    c["mismatches" if bytes(got) != msg[: len(got)] else "cut_short"] += 1
                    samples.append(f"{len(got)} of {len(msg)} bytes back")
                if fate < 0.2:
                    if s.recv(1) == b"":
                        c["half_closes_ok"] += 1
                    else:
                        c["unexpected_closes"] += 1
                    s.close()
                elif fate < 0.4:
                    s.sendall(rnd.randbytes(4096))
                    linger_zero(s)
                    s.close()
                    c["resets_sent"] += 1
                else:
                    s.close()
            except OSError as e:
                # A reset before any echo while a flood holds every slot is a refusal too.
                c["refused" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "unexpected_closes"] += 1
                samples.append(err_name(e))
                s.close()
        time.sleep(0.2)
    out({"kind": "garbage", **c, "samples": samples[:10], "secs": round(time.monotonic() - t0, 2)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)

    def common(sp, count_max):
        sp.add_argument("--target", type=target, required=True, help="host:port")
        sp.add_argument("--duration", type=float, default=120.0)
        sp.add_argument("--deadline", type=int, default=900, help="hard limit for the process, seconds")
        sp.add_argument("--source", help="bind to this (loopback) source address")
        sp.add_argument("--count", type=int, default=100, help=f"connections (at most {count_max})")
        sp.set_defaults(count_max=count_max)

    w = sub.add_parser("writers")
    common(w, 18_000)
    w.add_argument("--rcvbuf", type=int, default=4096)
    w.add_argument("--sndbuf", type=int, default=16384)
    w.add_argument("--mss", type=int, default=1460, help="TCP_MAXSEG: an Internet-sized MSS, not loopback's 64 KiB")
    w.add_argument("--chunk", type=int, default=16384)
    w.add_argument("--max-bytes", type=int, default=256 * 1024, help="per connection; 0 = no limit")
    w.add_argument("--reconnect", type=int, default=0,
                   help="replace a connection the server closed (e.g. --send-timeout), at most this many "
                   "times --count in all")
    pr = sub.add_parser("probe")
    common(pr, 1)
    pr.add_argument("--interval", type=float, default=0.02)
    pr.add_argument("--timeout", type=float, default=5.0)
    pr.add_argument("--size", type=int, default=64)
    sl = sub.add_parser("slowloris")
    common(sl, 5000)
    sl.add_argument("--gap", type=float, default=1.0, help="seconds between bytes")
    rs = sub.add_parser("rststorm")
    common(rs, 1)
    rs.add_argument("--batch", type=int, default=200)
    rs.add_argument("--every", type=float, default=0.5)
    rs.add_argument("--bytes", type=int, default=8192)
    rs.add_argument("--max-rounds", type=int, default=2000)
    va = sub.add_parser("vanish")
    common(va, 5000)
    fl = sub.add_parser("flood")
    common(fl, 5000)
    fl.add_argument("--every", type=float, default=10.0)
    fl.add_argument("--max-rounds", type=int, default=100)
    ga = sub.add_parser("garbage")
    common(ga, 1000)
    a = p.parse_args()
    if a.kind not in ("probe", "rststorm") and not 0 < a.count <= a.count_max:
        p.error(f"--count must be 1..{a.count_max}")
    if a.source and not allowed(a.source):
        p.error("--source: loopback only")
    if a.kind == "rststorm" and not 0 < a.batch <= 5000:
        p.error("--batch must be 1..5000")
    signal.alarm(a.deadline)
    {"writers": run_writers, "probe": run_probe, "slowloris": run_slowloris, "rststorm": run_rststorm,
     "vanish": run_vanish, "flood": run_flood, "garbage": run_garbage}[a.kind](a)


if __name__ == "__main__":
    main()
