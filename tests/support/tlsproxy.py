"""A TLS-terminating proxy for tests: TLS on the client's side, plain on the server's.

After the handshake (which can require a client certificate) the proxy copies bytes both ways. For
Temporal (ALPN h2) the HTTP/2 stream reaches the dev server unchanged: a stand-in for a frontend that
requires mTLS, or for Temporal Cloud's TLS endpoint. With `api_key` every gRPC request must also carry
`authorization: Bearer <api_key>`, as on Temporal Cloud (tests/support/h2gate.py checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.support.h2gate import APIKeyGate, GateCounts


class TLSProxy:
    """Listens on 127.0.0.1 with TLS and forwards each connection to `upstream` ("host:port")."""

    def __init__(self, upstream: str, server_context: ssl.SSLContext, *, api_key: str = "") -> None:
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.context = server_context
        self.api_key = api_key
        # Requests that carried the API key, and those refused for want of it (with `api_key` only).
        self.requests = GateCounts()
        self.context.set_alpn_protocols(["h2"])
        self.port = 0
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TLSProxy:
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            0,
            ssl=self.context,
            ssl_handshake_timeout=10,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            self.handshakes += 1
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                writer.close()
                return
            try:
                if self.api_key:
                    gate = APIKeyGate(self.api_key, self.requests)
                    await gate.run(reader, writer, up_reader, up_writer)
                else:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for w in (writer, up_writer):
                    w.close()
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            # A refused handshake or the proxy stopping: the connection ends, nothing to report.
            writer.close()
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
