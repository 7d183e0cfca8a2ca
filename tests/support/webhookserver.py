"""A real HTTP server on loopback that receives webhooks, answering with scripted statuses."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """How the server answers: statuses in order (the last one repeats), a body, a delay per call."""

    statuses: list[int] = field(default_factory=lambda: [200])
    body: bytes = b"ok\n"
    delay: float = 0.0


class WebhookServer:
    """Records every call; tracks how many calls per path ran at the same time."""

    def __init__(self) -> None:
        self.script = Script()
        self.calls: list[Call] = []
        self.max_parallel: dict[str, int] = {}
        self.max_parallel_total = 0
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with server._lock:
                    server.calls.append(Call(self.path, {k: v for k, v in self.headers.items()}, body))
                    index = len([c for c in server.calls if c.path == self.path]) - 1
                    server._inflight[self.path] = server._inflight.get(self.path, 0) + 1
                    server.max_parallel[self.path] = max(
                        server.max_parallel.get(self.path, 0), server._inflight[self.path]
                    )
                    server.max_parallel_total = max(server.max_parallel_total, sum(server._inflight.values()))
                    statuses = server.script.statuses
                    status = statuses[min(index, len(statuses) - 1)]
                try:
                    if server.script.delay:
                        time.sleep(server.script.delay)
                    payload = server.script.body if status == 200 else b"server error\n"
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with server._lock:
                        server._inflight[self.path] -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def events(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Payloads received on a path, in arrival order."""
        with self._lock:
            return [c.json() for c in self.calls if c.path == path]
