#!/usr/bin/env python3
"""HTTP/1.1 keep-alive server (Python's http.server) for ringhold-load's `--protocol http` tests.

Usage: http_server.py [--status CODE] [--extra N] [--split-head]
Listens on 127.0.0.1 (port 0), prints 'listening on 127.0.0.1:PORT' on stdout. Answers GET with
`?length=N` (default 1024) bytes of text/plain, Content-Length and keep-alive (the http-kit handler).
--status CODE: answer with that status instead of 200. --extra N: send N body bytes more than asked
(with a matching Content-Length), to test that a wrong length is detected. --split-head: send each
answer's head in two writes 20 ms apart (TCP_NODELAY), so that it arrives split across reads.
"""
import resource
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TEXT = b"http-kit is a http server & client written from scratch for high performance.\n" * 1000


def main():
    status = 200
    extra = 0
    split = False
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--status":
            status = int(args.pop(0))
        elif a == "--extra":
            extra = int(args.pop(0))
        elif a == "--split-head":
            split = True
        else:
            sys.exit(f"unknown argument {a}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            q = parse_qs(urlsplit(self.path).query)
            n = int(q.get("length", ["1024"])[0]) + extra
            body = (TEXT * (n // len(TEXT) + 1))[:n]
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if split:
                self._headers_buffer.append(b"\r\n")
                head = b"".join(self._headers_buffer)
                self._headers_buffer = []
                self.wfile.write(head[:20])
                time.sleep(0.02)
                self.wfile.write(head[20:] + body)
            else:
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 4096

        def handle_error(self, request, client_address):
            pass  # clients that fail on purpose reset their connections

    server = Server(("127.0.0.1", 0), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
