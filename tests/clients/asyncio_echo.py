#!/usr/bin/env python3
"""An asyncio echo client for ringhold's end-to-end tests: N concurrent connections, each sending M
messages of random sizes and checking every echoed byte. Prints one JSON summary line and exits 0 only
if every connection echoed everything. Bounded by --deadline seconds; loopback only."""

import argparse
import asyncio
import json
import random
import resource
import signal
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--max-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--deadline", type=int, default=120)
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    if not 0 < a.connections <= 1500:
        p.error("--connections must be 1..1500")
    return a


async def one(args, cid, rng_seed, results, all_open):
    rng = random.Random(rng_seed)
    try:
        reader, writer = await asyncio.open_connection(args.host, args.port)
    except OSError as e:
        results["connect_error"] += 1
        results["errors"].append("conn %d: connect: %s" % (cid, e))
        all_open.release()
        return
    results["open"] += 1
    all_open.release()
    try:
        # Hold all connections open at once before talking, so the server really has N of them.
        await all_open.wait_all()
        for m in range(args.messages):
            size = rng.randint(1, args.max_size)
            msg = bytes(rng.getrandbits(8) for _ in range(size))
            writer.write(msg)
            await writer.drain()
            back = await reader.readexactly(size)
            if back != msg:
                results["errors"].append("conn %d message %d: echo differs" % (cid, m))
                return
            results["bytes"] += size
        writer.write_eof()
        rest = await reader.read()
        if rest:
            results["errors"].append("conn %d: %d unexpected bytes before EOF" % (cid, len(rest)))
            return
        results["ok"] += 1
    except (OSError, asyncio.IncompleteReadError) as e:
        results["errors"].append("conn %d: %r" % (cid, e))
    finally:
        writer.close()


class Gate:
    """Opens when every connection attempt has finished (successfully or not)."""

    def __init__(self, n):
        self.left = n
        self.event = asyncio.Event()

    def release(self):
        self.left -= 1
        if self.left <= 0:
            self.event.set()

    async def wait_all(self):
        await self.event.wait()


async def main(args):
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    results = {"open": 0, "ok": 0, "bytes": 0, "connect_error": 0, "errors": []}
    gate = Gate(args.connections)
    t0 = time.monotonic()
    # Open in waves so the listen backlog is never the bottleneck being tested here.
    tasks = []
    for cid in range(args.connections):
        tasks.append(asyncio.create_task(one(args, cid, seed * 100003 + cid, results, gate)))
        if cid % 100 == 99:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    results["secs"] = round(time.monotonic() - t0, 3)
    results["seed"] = seed
    results["errors"] = results["errors"][:20]
    print(json.dumps(results), flush=True)
    return results["ok"] == args.connections


if __name__ == "__main__":
    a = parse_args()
    signal.alarm(a.deadline)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.connections + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.connections + 100), hard))
    sys.exit(0 if asyncio.run(main(a)) else 1)
