#!/usr/bin/env python3
"""Slowloris against an HTTP port, for ringhold's end-to-end tests: keeps --count connections open,
each sending one byte of a never-ending request head every --gap seconds, and opens a new one as soon
as the server drops one (a reconnecting botnet, not a fixed set). Prints {"phase": "running"} once the
first --count are open, and a JSON line of counts when stdin closes or --duration passes. Bounded by
--deadline (SIGALRM); loopback only.
"""

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000, help="connections held at once (at most 1500)")
    p.add_argument("--gap", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--deadline", type=int, default=180)
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1") or not 0 < a.count <= 1500:
        p.error("loopback only, --count 1..1500")
    signal.alarm(a.deadline)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.count + 100)), hard))
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 8192
    stdin = sys.stdin.fileno()
    sel = selectors.DefaultSelector()
    try:
        os.set_blocking(stdin, False)
        sel.register(stdin, selectors.EVENT_READ)
    except (OSError, ValueError):
        pass
    conns = {}
    opened = dropped = 0
    announced = False
    end = time.monotonic() + a.duration
    done = False
    while not done and time.monotonic() < end:
        while len(conns) < a.count:
            try:
                s = socket.create_connection((a.host, a.port), timeout=5)
            except OSError:
                break
            s.setblocking(False)
            conns[s] = 0
            opened += 1
        if not announced and len(conns) >= a.count:
            print(json.dumps({"phase": "running", "open": len(conns)}), flush=True)
            announced = True
        for s in list(conns):
            try:
                try:
                    if s.recv(4096) == b"":
                        raise ConnectionError("EOF")
                    raise ConnectionError("answered")
                except BlockingIOError:
                    pass
                i = conns[s] % len(head)
                s.send(head[i:i + 1])
                conns[s] += 1
            except (OSError, ConnectionError):
                dropped += 1
                s.close()
                del conns[s]
        for key, _ in sel.select(timeout=a.gap):
            try:
                if not os.read(stdin, 4096):
                    done = True
            except BlockingIOError:
                pass
    for s in conns:
        s.close()
    print(json.dumps({"phase": "done", "opened": opened, "dropped_by_server": dropped}), flush=True)


if __name__ == "__main__":
    main()
