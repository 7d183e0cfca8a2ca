"""A minimal real SOCKS5 proxy (RFC 1928, no authentication, CONNECT only) on loopback, for tests."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading

from deploy.embedded import free_port


class SocksProxy:
    """Relays CONNECTs and records their destinations."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.connects: list[tuple[str, int]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        """host:port, as a transport's `address` takes it."""
        return f"{self.host}:{self.port}"

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ver, n = await r.readexactly(2)
            await r.readexactly(n)
            w.write(b"\x05\x00")  # no authentication
            _, cmd, _, atyp = await r.readexactly(4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await r.readexactly(4)))
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(await r.readexactly(16)))
            else:
                host = (await r.readexactly((await r.readexactly(1))[0])).decode()
            (port,) = struct.unpack("!H", await r.readexactly(2))
            self.connects.append((host, port))
            try:
                ur, uw = await asyncio.open_connection(host, port)
            except OSError:
                w.write(b"\x05\x05\x00\x01" + socket.inet_aton("0.0.0.0") + b"\0\0")
                w.close()
                return
            w.write(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\0\0")
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        except (asyncio.IncompleteReadError, OSError):
            w.close()

    def start(self) -> SocksProxy:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
            self._ready.set()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
