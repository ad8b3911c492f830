#!/usr/bin/env python3
"""Small asyncio echo server for ringhold-load's tests and hand measurements.

Usage: echo_server.py [--corrupt-after N] [--reuseport PORT]
Listens on 127.0.0.1 (port 0 unless --reuseport), prints 'listening on 127.0.0.1:PORT' on stdout.
--corrupt-after N: flip one bit of the byte at stream offset N on every connection (tests that a
mismatch is detected).
"""
import asyncio
import resource
import socket
import sys


def main():
    corrupt_after = None
    port = 0
    reuse = False
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--corrupt-after":
            corrupt_after = int(args.pop(0))
        elif a == "--reuseport":
            port = int(args.pop(0))
            reuse = True
        else:
            sys.exit(f"unknown argument {a}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.seen = 0

        def data_received(self, data):
            if corrupt_after is not None and self.seen <= corrupt_after < self.seen + len(data):
                b = bytearray(data)
                b[corrupt_after - self.seen] ^= 1
                data = bytes(b)
            self.seen += len(data)
            self.t.write(data)

    async def serve():
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        server = await loop.create_server(Echo, sock=sock, backlog=4096)
        print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
