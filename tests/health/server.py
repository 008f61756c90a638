#!/usr/bin/env python3
"""A real server for the health-check lab tests (tests/tests/health_checks.rs).

HTTP, or HTTPS with --cert/--key, on --port. GET /health answers the status in DIR/status
(default 200) with the body in DIR/body (default "healthy"), read at each request, so a test
switches a server's health by rewriting a file. Any other path answers 200 with the server's
name, as lab-server does, so the lab's clients can tell who served them. Prints "ready" once
it listens.
"""

import argparse
import os
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def read(path, default):
    try:
        with open(path) as f:
            return f.read().strip() or default
    except OSError:
        return default


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                status = int(read(os.path.join(a.dir, "status"), "200"))
                body = read(os.path.join(a.dir, "body"), "healthy") + "\n"
            else:
                status, body = 200, a.name + "\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
    server.daemon_threads = True
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        # The handshake runs in the request's thread, not in the accept loop.
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
