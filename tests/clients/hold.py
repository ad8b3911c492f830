#!/usr/bin/env python3
"""Opens and holds many echo connections to a server on loopback, for ringhold's end-to-end tests.

Each connection sends a small payload (its id plus filler) and must get it back byte-exact. A
connection ends up in one class: echoed (and held open), closed (EOF or reset before the echo was
complete: the server refused it), failed (connect error), timeout (nothing decided within
--phase-timeout: the server neither served nor refused it).

After the first phase it prints one JSON line and then obeys commands on stdin, one per line:
  echo                  another echo on every held connection; prints a JSON line
  trickle N SECS        opens N more connections evenly over SECS seconds, classifies and closes them
  quit (or EOF)         closes everything and exits 0
The whole process is bounded by --deadline seconds (SIGALRM ends it), and only ever connects to the
address it is given, which the tests set to 127.0.0.1.
"""

import argparse
import errno
import json
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
    p.add_argument("--count", type=int, required=True, help="connections to open (at most 1500)")
    p.add_argument("--payload", type=int, default=64, help="bytes per echo (>= 16)")
    p.add_argument("--phase-timeout", type=float, default=20.0)
    p.add_argument("--deadline", type=int, default=120, help="hard limit for the whole process, seconds")
    a = p.parse_args()
    if not 0 < a.count <= 1500:
        p.error("--count must be 1..1500")
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    a.payload = max(16, a.payload)
    return a


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def payload(conn_id, round_no, size):
    head = b"%010d:%04d:" % (conn_id, round_no % 10000)
    body = bytes((conn_id * 31 + round_no * 7 + i) & 0xFF for i in range(size - len(head)))
    return head + body


class Conn:
    __slots__ = ("id", "sock", "out", "want", "got", "state")

    def __init__(self, cid, sock):
        self.id = cid
        self.sock = sock
        self.out = b""
        self.want = b""
        self.got = bytearray()
        self.state = "connecting"


def run_round(conns, size, round_no, timeout, connecting):
    """Drives every conn in `conns` through one echo; returns counts by final state."""
    sel = selectors.DefaultSelector()
    pending = 0
    for c in conns:
        c.want = payload(c.id, round_no, size)
        c.got = bytearray()
        if not connecting:
            c.out = c.want
            c.state = "sending"
        sel.register(c.sock, selectors.EVENT_WRITE, c)
        pending += 1
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            c = key.data
            done = step(c, ev)
            if c.state in ("sending",):
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
            elif c.state == "reading":
                sel.modify(c.sock, selectors.EVENT_READ, c)
            if done:
                sel.unregister(c.sock)
                pending -= 1
    for c in conns:
        if c.state in ("connecting", "sending", "reading"):
            c.state = "timeout"
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
    sel.close()
    counts = {"echoed": 0, "closed": 0, "failed": 0, "timeout": 0}
    for c in conns:
        counts[c.state] += 1
    return counts


def step(c, ev):
    """Advances one connection; True when it reached a final state."""
    try:
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                c.state = "failed"
                return True
            c.out = c.want
            c.state = "sending"
        if c.state == "sending":
            n = c.sock.send(c.out)
            c.out = c.out[n:]
            if not c.out:
                c.state = "reading"
            return False
        if c.state == "reading":
            data = c.sock.recv(65536)
            if not data:
                c.state = "closed"
                return True
            c.got += data
            if len(c.got) >= len(c.want):
                if bytes(c.got[: len(c.want)]) != c.want:
                    sys.stderr.write("connection %d: echo differs\n" % c.id)
                    c.state = "failed"
                else:
                    c.state = "echoed"
                return True
            return False
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            c.state = "closed"
        else:
            c.state = "failed"
        return True
    return False


def open_conns(args, first_id, n):
    conns = []
    for i in range(n):
        s = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Conn(first_id + i, s)
        try:
            s.connect((args.host, args.port))
        except BlockingIOError:
            pass
        except OSError:
            c.state = "failed"
        conns.append(c)
    return conns


def close_all(conns):
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass


def main():
    args = parse_args()
    signal.alarm(args.deadline)
    raise_nofile(args.count + 200)
    t0 = time.monotonic()
    conns = open_conns(args, 0, args.count)
    live = [c for c in conns if c.state == "connecting"]
    counts = run_round(live, args.payload, 0, args.phase_timeout, connecting=True)
    counts["failed"] += len(conns) - len(live)
    held = [c for c in conns if c.state == "echoed"]
    close_all([c for c in conns if c.state != "echoed"])
    print(json.dumps({"phase": "open", "secs": round(time.monotonic() - t0, 3), **counts}), flush=True)

    next_id = args.count
    round_no = 1
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        if cmd[0] == "echo":
            t = time.monotonic()
            counts = run_round(held, args.payload, round_no, args.phase_timeout, connecting=False)
            round_no += 1
            close_all([c for c in held if c.state != "echoed"])
            held = [c for c in held if c.state == "echoed"]
            print(json.dumps({"phase": "echo", "secs": round(time.monotonic() - t, 3), **counts}), flush=True)
        elif cmd[0] == "trickle":
            n, secs = int(cmd[1]), float(cmd[2])
            t = time.monotonic()
            total = {"echoed": 0, "closed": 0, "failed": 0, "timeout": 0}
            batch = max(1, n // max(1, int(secs * 10)))
            opened = 0
            while opened < n:
                k = min(batch, n - opened)
                fresh = open_conns(args, next_id, k)
                next_id += k
                opened += k
                live = [c for c in fresh if c.state == "connecting"]
                got = run_round(live, args.payload, 0, args.phase_timeout, connecting=True)
                got["failed"] += k - len(live)
                for key in total:
                    total[key] += got[key]
                close_all(fresh)
                # Pace the batches evenly over SECS.
                wait = t + secs * opened / n - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            print(json.dumps({"phase": "trickle", "secs": round(time.monotonic() - t, 3), **total}), flush=True)
        else:
            sys.stderr.write("unknown command: %r\n" % line)
    close_all(held)


if __name__ == "__main__":
    main()
