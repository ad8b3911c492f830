#!/usr/bin/env python3
"""A WebSocket echo server built on the python `websockets` library (strict RFC 6455), for
`ringhold load --protocol websocket`'s tests.

Usage: ws_echo_server.py [--ping-interval SECONDS] [--corrupt] [--close-after N] [--refuse]
Listens on 127.0.0.1 (port 0), prints 'listening on 127.0.0.1:PORT' on stdout.
--ping-interval S: the library pings every connection every S seconds and closes those that do not
answer within max(1, 5 S) seconds (tests automatic pongs; generous, so a busy host does not matter). --corrupt: flip one bit of the last byte of the
second message echoed on each connection. --close-after N: close (1000) after echoing N messages.
--refuse: answer every upgrade with HTTP 403.
Exits with 3 when `websockets` is not importable.
"""
import asyncio
import http
import resource
import sys

try:
    from websockets.asyncio.server import serve
except ImportError:
    print("websockets is not installed", file=sys.stderr)
    sys.exit(3)


def main():
    ping_interval = None
    corrupt = False
    close_after = None
    refuse = False
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--ping-interval":
            ping_interval = float(args.pop(0))
        elif a == "--corrupt":
            corrupt = True
        elif a == "--close-after":
            close_after = int(args.pop(0))
        elif a == "--refuse":
            refuse = True
        else:
            sys.exit(f"unknown argument {a}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def echo(ws):
        n = 0
        async for msg in ws:
            n += 1
            if corrupt and n == 2:
                b = bytearray(msg)
                b[-1] ^= 1
                msg = bytes(b)
            await ws.send(msg)
            if close_after is not None and n >= close_after:
                await ws.close(1000, "enough")
                return

    def process_request(conn, request):
        if refuse:
            return conn.respond(http.HTTPStatus.FORBIDDEN, "no\n")
        return None

    async def run():
        async with serve(
            echo,
            "127.0.0.1",
            0,
            ping_interval=ping_interval,
            ping_timeout=None if ping_interval is None else max(1.0, 5 * ping_interval),
            max_size=1 << 21,
            compression=None,
            process_request=process_request,
            backlog=4096,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"listening on 127.0.0.1:{port}", flush=True)
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
