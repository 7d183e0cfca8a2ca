"""A real HTTPS server on a loopback address serving MTA-STS policy files (RFC 8461 §3.3)."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deploy.embedded import free_port


class PolicyServer:
    """Serves `policies[host]` at /.well-known/mta-sts.txt, choosing by the Host header; 404 otherwise."""

    def __init__(self, host: str, ctx: ssl.SSLContext) -> None:
        self.host = host
        self.port = free_port(host)
        self.policies: dict[str, str] = {}
        self.status = 200
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = (self.headers.get("Host") or "").split(":")[0]
                outer.requests.append(name)
                body = outer.policies.get(name)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, self.port), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)

    def start(self) -> PolicyServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
