"""A TLS-terminating proxy for tests: TLS on the client's side, plain on the server's.

After the handshake (which can require a client certificate) the proxy copies bytes both ways. For
Temporal (ALPN h2) the HTTP/2 stream reaches the dev server unchanged: a stand-in for a frontend that
requires mTLS, or for Temporal Cloud's TLS endpoint. With `postgres=True` it speaks PostgreSQL's own TLS
negotiation first (an SSLRequest answered "S", then the handshake; protocol §55.2.10) and closes any
connection that does not ask for TLS: a stand-in for a server with ssl on and hostssl-only access, since the
embedded PostgreSQL's binaries are built without SSL. With `api_key` every gRPC request must also carry
`authorization: Bearer <api_key>`, as on Temporal Cloud (tests/support/h2gate.py checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.support.h2gate import APIKeyGate, GateCounts


class TLSProxy:
    """Listens on 127.0.0.1 with TLS and forwards each connection to `upstream` ("host:port")."""

    def __init__(
        self, upstream: str, server_context: ssl.SSLContext, *, postgres: bool = False, api_key: str = ""
    ) -> None:
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.context = server_context
        self.postgres = postgres
        self.api_key = api_key
        # Requests that carried the API key, and those refused for want of it (with `api_key` only).
        self.requests = GateCounts()
        if not postgres:
            self.context.set_alpn_protocols(["h2"])
        self.port = 0
        self.handshakes = 0
        self.refused = 0
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
            ssl=None if self.postgres else self.context,
            ssl_handshake_timeout=None if self.postgres else 10,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _postgres_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """PostgreSQL's TLS negotiation; False when the client does not ask for TLS."""
        while True:
            request = await reader.readexactly(8)
            code = int.from_bytes(request[4:], "big")
            if code == _GSSENC_REQUEST:
                writer.write(b"N")  # no GSS encryption here; the client asks for TLS next
                await writer.drain()
                continue
            if code != _SSL_REQUEST:
                self.refused += 1
                return False
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context)
            return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.postgres and not await self._postgres_tls(reader, writer):
                writer.close()
                return
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


# PostgreSQL's negotiation request codes (protocol §55.7, SSLRequest and GSSENCRequest).
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
