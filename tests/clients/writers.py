#!/usr/bin/env python3
"""Non-reading writers for ringhold's end-to-end tests: many connections that write continuously and
never read what the server echoes (SO_RCVBUF set small before connect), the client that starved the
buffer pool in issue 11.

Prints one JSON line once every connection is open ({"phase": "connected", ...}), then writes to every
connection whose socket is writable (a selector, so stuck sockets cost no CPU) until stdin says `quit`
or closes, or --duration passes; then closes every socket (with unread echo in its receive queue the
kernel resets the connection, as a crashing client's would) and prints {"phase": "closed", ...}.
The whole process is bounded by --deadline seconds (SIGALRM ends it) and only ever connects to
loopback.
"""

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True, help="connections (at most 2000)")
    p.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF set before connect")
    p.add_argument("--sndbuf", type=int, default=16384,
                   help="SO_SNDBUF set before connect (0: the kernel's autotuning, which lets each socket "
                   "queue megabytes)")
    p.add_argument("--mss", type=int, default=1460,
                   help="TCP_MAXSEG set before connect, so that the server's side of the connection "
                   "uses an Internet-sized MSS (0: loopback's 64 KiB, which makes the kernel size each "
                   "socket's send buffer at about a megabyte)")
    p.add_argument("--chunk", type=int, default=16384, help="bytes per send")
    p.add_argument("--max-bytes", type=int, default=0,
                   help="stop writing a connection after this many bytes (0: no limit); the kernel's "
                   "socket buffers on loopback otherwise hold about a megabyte per connection")
    p.add_argument("--duration", type=float, default=60.0, help="stop writing after this many seconds")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--deadline", type=int, default=180, help="hard limit for the whole process, seconds")
    a = p.parse_args()
    if not 0 < a.count <= 2000:
        p.error("--count must be 1..2000")
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    return a


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main():
    a = parse_args()
    signal.alarm(a.deadline)
    raise_nofile(a.count + 100)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    t0 = time.monotonic()
    socks, failed = [], 0
    for _ in range(a.count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
        if a.mss:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, a.mss)
        if a.sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, a.sndbuf)
        s.settimeout(a.connect_timeout)
        try:
            s.connect((a.host, a.port))
        except OSError as e:
            sys.stderr.write("connect: %s\n" % e)
            s.close()
            failed += 1
            continue
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"phase": "connected", "connected": len(socks), "failed": failed,
                      "secs": round(time.monotonic() - t0, 3)}), flush=True)

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    stdin = sys.stdin.fileno()
    try:
        os.set_blocking(stdin, False)
        sel.register(stdin, selectors.EVENT_READ)
    except (OSError, ValueError):
        pass  # stdin is a file (e.g. /dev/null): no commands, --duration ends the writing
    junk = bytes(range(256)) * (a.chunk // 256 + 1)
    junk = junk[: a.chunk]
    sent, errors, blocked = 0, {}, 0
    per = {s: 0 for s in socks}
    end = time.monotonic() + a.duration
    pending_in = b""
    done = False
    while not done and time.monotonic() < end:
        for key, _ in sel.select(timeout=min(0.5, max(0.0, end - time.monotonic()))):
            if key.fd == stdin:
                try:
                    data = os.read(stdin, 4096)
                except BlockingIOError:
                    continue
                if not data:
                    done = True
                    break
                pending_in += data
                if b"quit" in pending_in:
                    done = True
                    break
                continue
            s = key.fileobj
            try:
                n = s.send(junk if not a.max_bytes else junk[: a.max_bytes - per[s]])
                sent += n
                if a.max_bytes:
                    per[s] += n
                    if per[s] >= a.max_bytes:
                        sel.unregister(s)
            except BlockingIOError:
                blocked += 1
            except OSError as e:
                name = errno.errorcode.get(e.errno, str(e.errno))
                errors[name] = errors.get(name, 0) + 1
                sel.unregister(s)
    writing_secs = time.monotonic() - t0
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    print(json.dumps({"phase": "closed", "sent": sent, "errors": errors,
                      "secs": round(writing_secs, 3)}), flush=True)


if __name__ == "__main__":
    main()
