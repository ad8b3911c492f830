#!/usr/bin/env python3
"""Raw-socket WebSocket close storm for ringhold's end-to-end tests (tests/tests/websocket.rs): --rounds
rounds of --connections connections at once (plain asyncio sockets, frames built here), each: the upgrade,
one masked binary message of 100..1099 bytes and its echo, then a close 1000, after which the server must
send exactly its close frame `88 02 03 e8` and then EOF. Prints one JSON line; exits 0 only if every
connection got exactly that. Loopback only, bounded by --deadline seconds. Standard library only."""

import argparse
import asyncio
import json
import os
import resource
import struct
import sys

REQ = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
CLOSE_1000 = b"\x88\x02\x03\xe8"


def masked(op, payload):
    k = os.urandom(4)
    n = len(payload)
    if n < 126:
        h = bytes([0x80 | op, 0x80 | n])
    else:
        h = bytes([0x80 | op, 0x80 | 126]) + struct.pack("!H", n)
    return h + k + bytes(b ^ k[i % 4] for i, b in enumerate(payload))


class Gate:
    """Opens when every connection of a round has upgraded or failed."""

    def __init__(self, n):
        self.left = n
        self.event = asyncio.Event()

    def release(self):
        self.left -= 1
        if self.left <= 0:
            self.event.set()

    async def wait(self):
        await self.event.wait()


async def one(a, i, gate, res):
    released = False

    def release():
        nonlocal released
        if not released:
            released = True
            gate.release()

    try:
        r, w = await asyncio.open_connection(a.host, a.port)
    except OSError as e:
        res["errors"].append(f"conn {i}: connect: {e!r}")
        release()
        return
    try:
        w.write(REQ)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        release()
        if not head.startswith(b"HTTP/1.1 101 "):
            res["errors"].append(f"conn {i}: {head[:40]!r}")
            return
        await gate.wait()
        msg = os.urandom(100 + i % 1000)
        w.write(masked(2, msg))
        await w.drain()
        hdr = await r.readexactly(2)
        n = hdr[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await r.readexactly(2))[0]
        back = await r.readexactly(n)
        if hdr[0] != 0x82 or back != msg:
            res["errors"].append(f"conn {i}: echo differs")
            return
        w.write(masked(8, struct.pack("!H", 1000)))
        await w.drain()
        rest = b""
        while True:
            more = await r.read(4096)
            if not more:
                break
            rest += more
        if rest != CLOSE_1000:
            res["bad_close"] += 1
            res["errors"].append(f"conn {i} {w.get_extra_info('sockname')}: after our close 1000 got "
                                 f"{rest.hex()} then EOF, not {CLOSE_1000.hex()}")
            return
        res["ok"] += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        res["errors"].append(f"conn {i}: {e!r}")
    finally:
        release()
        w.close()


async def main(a):
    res = {"ok": 0, "bad_close": 0, "errors": []}
    for _ in range(a.rounds):
        # Every connection of the round upgraded (or failed) before any sends its message.
        gate = Gate(a.connections)
        await asyncio.gather(*(one(a, i, gate, res) for i in range(a.connections)))
    return res


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--deadline", type=float, default=120)
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    if not 0 < a.connections <= 2000:
        p.error("--connections must be 1..2000")
    return a


if __name__ == "__main__":
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 100)), hard))
    try:
        out = asyncio.run(asyncio.wait_for(main(args), args.deadline))
    except asyncio.TimeoutError:
        out = {"ok": 0, "error": f"deadline of {args.deadline} s passed", "errors": []}
    errors = out.pop("errors")
    out["error_count"] = len(errors)
    out["first_errors"] = errors[:5]
    out["expected"] = args.connections * args.rounds
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["ok"] == out["expected"] else 1)
