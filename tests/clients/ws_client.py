#!/usr/bin/env python3
"""A python `websockets` client (a strict RFC 6455 implementation nobody here wrote) for ringhold's
end-to-end tests (tests/tests/websocket.rs). One scenario per run; prints one JSON line and exits 0
only if the scenario went as RFC 6455 says it must. Loopback only, bounded by --deadline seconds.

Scenarios:
  sizes        every size of --sizes as a binary and as a text message, one after the other, then all
               of them in flight at once; each echo compared byte for byte
  fragments    fragmented messages (an iterable of fragments, and an async iterable with a ping sent
               between two fragments), a character split across fragments, empty fragments
  ping         pings with 0, 5 and 125 byte payloads: each pong must carry the same payload
  close        a close with --code and a reason: the server must answer with the same code
  invalid-utf8 a text frame that is not UTF-8 (sent raw with text=True): reports what each side said
  too-big      a binary message of --size bytes: reports the close code the server sent
  idle         connected, sending nothing for --hold seconds while answering the server's pings; then
               one echo. Reports the pings the server sent (counted from the library's frame log)
  many         --connections connections open at once, --messages echoes each (random sizes, text and
               binary alternating), then a normal close each
Exits with 3 when `websockets` is not importable.
"""

import argparse
import asyncio
import json
import logging
import random
import resource
import sys
import time

try:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
except ImportError:
    print("websockets is not installed", file=sys.stderr)
    sys.exit(3)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=["sizes", "fragments", "ping", "close", "invalid-utf8", "too-big", "idle", "many"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sizes", default="0,1,125,126,65535,65536,1048576")
    p.add_argument("--code", type=int, default=4001)
    p.add_argument("--size", type=int, default=1 << 16)
    p.add_argument("--hold", type=float, default=6.0)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--messages", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline", type=float, default=120)
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    if not 0 < a.connections <= 2000:
        p.error("--connections must be 1..2000")
    return a


def uri(a):
    return f"ws://{a.host}:{a.port}/"


def opts(**kw):
    # No client pings (they would count as activity and hide the server's idle handling), no size limit
    # on what the server sends back, no compression offered (the server declines it anyway).
    base = dict(ping_interval=None, max_size=None, compression=None, open_timeout=30, close_timeout=30)
    base.update(kw)
    return base


def text_of(n, seed):
    """A str whose UTF-8 encoding is exactly n bytes, mixing 1-, 2-, 3- and 4-byte characters."""
    rng = random.Random(seed)
    chars = ["a", "Z", "é", "ß", "€", "✓", "😀", "𝄞"]
    out, size = [], 0
    while size < n:
        c = rng.choice(chars)
        b = len(c.encode())
        if size + b > n:
            c, b = "x", 1
        out.append(c)
        size += b
    return "".join(out)


def binary_of(n, seed):
    return random.Random(seed).randbytes(n)


def close_info(e):
    return {
        "rcvd": None if e.rcvd is None else e.rcvd.code,
        "sent": None if e.sent is None else e.sent.code,
        "rcvd_reason": None if e.rcvd is None else e.rcvd.reason,
        "sent_reason": None if e.sent is None else e.sent.reason,
    }


async def sizes(a):
    sizes = [int(s) for s in a.sizes.split(",") if s]
    msgs = []
    for i, n in enumerate(sizes):
        msgs.append(binary_of(n, a.seed + i))
        msgs.append(text_of(n, a.seed + i))
    async with connect(uri(a), **opts()) as ws:
        for m in msgs:
            await ws.send(m)
            back = await ws.recv()
            if type(back) is not type(m) or back != m:
                return {"ok": False, "error": f"{type(m).__name__} of {len(m)}: echo differs ({type(back).__name__} of {len(back)})"}
        # All in flight at once: echoes must come back in order.
        for m in msgs:
            await ws.send(m)
        for m in msgs:
            back = await ws.recv()
            if type(back) is not type(m) or back != m:
                return {"ok": False, "error": f"pipelined {type(m).__name__} of {len(m)}: echo differs"}
        await ws.close()
        return {"ok": ws.close_code == 1000, "messages": 2 * len(msgs), "close_code": ws.close_code}


async def fragments(a):
    cases = [
        ("binary fragments", [b"ab", b"", b"cdef", b"g"], b"abcdefg"),
        ("text fragments", ["héllo", " ", "wörld €"], "héllo wörld €"),
        ("large binary fragments", [binary_of(100_000, 7), binary_of(70_000, 8), binary_of(1, 9)],
         binary_of(100_000, 7) + binary_of(70_000, 8) + binary_of(1, 9)),
        ("one empty fragment then data", ["", "x"], "x"),
    ]
    async with connect(uri(a), **opts()) as ws:
        for name, frags, whole in cases:
            await ws.send(frags)
            back = await ws.recv()
            if back != whole:
                return {"ok": False, "error": f"{name}: echo differs"}
        # A 3-byte character split across fragments (bytes sent as a text message).
        euro = "€".encode()
        await ws.send([b"a" + euro[:1], euro[1:2], euro[2:] + b"b"], text=True)
        back = await ws.recv()
        if back != "a€b":
            return {"ok": False, "error": f"split character: got {back!r}"}
        # A ping between two fragments of one message (control frames may be interleaved).
        pong = {}

        async def gen():
            yield "first half, "
            pong["waiter"] = await ws.ping(b"between")
            yield "second half"

        await ws.send(gen())
        back = await ws.recv()
        if back != "first half, second half":
            return {"ok": False, "error": f"interleaved ping: echo {back!r}"}
        await asyncio.wait_for(pong["waiter"], 30)
        await ws.close()
        return {"ok": ws.close_code == 1000, "messages": len(cases) + 2, "close_code": ws.close_code}


async def ping(a):
    async with connect(uri(a), **opts()) as ws:
        payloads = [b"", b"hello", bytes(range(125)), b"\xff\x00\xfe"]
        for p in payloads:
            # websockets resolves a pong waiter only for a pong whose payload equals its ping's.
            waiter = await ws.ping(p)
            await asyncio.wait_for(waiter, 30)
        # Ten in flight at once.
        waiters = [await ws.ping(f"p{i}".encode()) for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*waiters), 30)
        # A message still echoes after them.
        await ws.send("after pings")
        back = await ws.recv()
        await ws.close()
        return {"ok": back == "after pings" and ws.close_code == 1000, "pongs": len(payloads) + 10}


async def close(a):
    async with connect(uri(a), **opts()) as ws:
        await ws.send("before close")
        await ws.recv()
        await ws.close(a.code, "bye")
        return {"ok": ws.close_code == a.code, "close_code": ws.close_code, "close_reason": ws.close_reason}


async def invalid_utf8(a):
    async with connect(uri(a), **opts()) as ws:
        await ws.send(b"ok \xff\xfe bad", text=True)
        got = None
        try:
            got = await ws.recv()
            # Wait for the close too.
            await ws.recv()
        except ConnectionClosed as e:
            info = close_info(e)
            info["got_message"] = got is not None
            info["ok"] = True
            return info
        return {"ok": False, "error": "the connection stayed open"}


async def too_big(a):
    async with connect(uri(a), **opts()) as ws:
        try:
            await ws.send(binary_of(a.size, 3))
            back = await ws.recv()
            return {"ok": False, "error": f"echoed {len(back)} bytes"}
        except ConnectionClosed as e:
            info = close_info(e)
            info["ok"] = True
            return info


class PingCounter(logging.Handler):
    """Counts the pings the server sent, from the library's debug log of received frames."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.pings = 0

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a log line we cannot format is not a ping
            return
        if msg.startswith("< PING"):
            self.pings += 1


async def idle(a):
    counter = PingCounter()
    log = logging.getLogger("ringhold.ws.idle")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(counter)
    async with connect(uri(a), **opts(logger=log)) as ws:
        t0 = time.monotonic()
        # Nothing to send: wait for a message, which never comes; the library answers pings meanwhile.
        try:
            m = await asyncio.wait_for(ws.recv(), a.hold)
            return {"ok": False, "error": f"unexpected message {m!r}"}
        except asyncio.TimeoutError:
            pass
        except ConnectionClosed as e:
            info = close_info(e)
            info.update(ok=False, error=f"closed after {time.monotonic() - t0:.2f} s", pings=counter.pings)
            return info
        held = time.monotonic() - t0
        await ws.send("still here")
        back = await ws.recv()
        await ws.close()
        return {"ok": back == "still here" and ws.close_code == 1000, "held_s": round(held, 2), "pings": counter.pings}


class FrameLog(logging.Handler):
    """Keeps the library's debug log of one connection (frames sent and received, state changes)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        try:
            self.lines.append(f"{record.created:.6f} {record.getMessage()}"[:200])
        except Exception:  # noqa: BLE001 - a line we cannot format is left out
            pass


class Gate:
    def __init__(self, n):
        self.left = n
        self.event = asyncio.Event()

    def release(self):
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def many(a):
    res = {"open": 0, "ok": 0, "messages": 0, "payload_bytes": 0, "errors": []}
    gate = Gate(a.connections)

    async def one(cid):
        rng = random.Random(a.seed * 100_003 + cid)
        # The library's frame log of this connection, printed to stderr if it fails.
        trace = FrameLog()
        log = logging.getLogger(f"ringhold.ws.many.{cid}")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        log.addHandler(trace)
        try:
            ws = await connect(uri(a), **opts(logger=log))
        except (OSError, asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - reported, not raised
            res["errors"].append(f"conn {cid}: connect: {e!r}")
            gate.release()
            return
        res["open"] += 1
        gate.release()
        try:
            await gate.event.wait()  # every connection open at once before talking
            for m in range(a.messages):
                n = rng.randint(0, 4096)
                msg = binary_of(n, rng.random()) if m % 2 else text_of(n, rng.random())
                await ws.send(msg)
                back = await ws.recv()
                if back != msg:
                    res["errors"].append(f"conn {cid} message {m}: echo differs")
                    return
                res["messages"] += 1
                res["payload_bytes"] += n
            await ws.close()
            if ws.close_code != 1000:
                res["errors"].append(f"conn {cid}: close code {ws.close_code}")
                print(f"conn {cid} ({ws.local_address}): close code {ws.close_code}; its log:\n  "
                      + "\n  ".join(trace.lines), file=sys.stderr)
                return
            res["ok"] += 1
        except ConnectionClosed as e:
            res["errors"].append(f"conn {cid}: closed {close_info(e)}")
        finally:
            await ws.close()

    await asyncio.gather(*(one(i) for i in range(a.connections)))
    errors = res.pop("errors")
    res["error_count"] = len(errors)
    res["first_errors"] = errors[:5]
    res["ok_all"] = res["ok"] == a.connections
    return res


async def run(a):
    f = {"sizes": sizes, "fragments": fragments, "ping": ping, "close": close, "invalid-utf8": invalid_utf8,
         "too-big": too_big, "idle": idle, "many": many}[a.scenario]
    return await asyncio.wait_for(f(a), a.deadline)


def main():
    a = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * a.connections + 100)), hard))
    try:
        out = asyncio.run(run(a))
    except asyncio.TimeoutError:
        out = {"ok": False, "error": f"deadline of {a.deadline} s passed"}
    except ConnectionClosed as e:
        out = close_info(e)
        out.update(ok=False, error=f"connection closed: {e}")
    except OSError as e:
        out = {"ok": False, "error": f"{e!r}"}
    print(json.dumps(out), flush=True)
    ok = out.get("ok_all", out.get("ok"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
