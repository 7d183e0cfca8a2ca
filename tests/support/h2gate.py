"""An HTTP/2 gate for the test TLS proxy: every gRPC request must carry the API key, as Temporal Cloud checks.

Temporal Cloud authenticates each request by its `authorization: Bearer <API key>` header. The gate sits
between the client and the dev server on one HTTP/2 connection (after TLS termination with ALPN h2) and
reads the client's frames (RFC 9113 §4.1): HEADERS and CONTINUATION frames carry one HPACK header block
per request (§4.3), decoded in order with one stateful decoder per connection (RFC 7541 §2.2). A request
without the key is answered by the gate as a gRPC server answers one it refuses: a Trailers-Only response
with grpc-status 16 (UNAUTHENTICATED). The request never reaches the server.

Dropping a request's header block would leave the server's HPACK decoder without the table entries the
client's encoder added in it, so the gate re-encodes every forwarded header block with its own encoder:
the server decodes the gate's context, not the client's. The server's replies pass unchanged, frame by
frame, so that the gate's own answers go in between whole frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

import hpack

# The client connection preface (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags the gate reads or writes.
DATA, HEADERS, SETTINGS, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x4, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
# The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce (RFC 9113 §6.5.2): always safe to send.
MIN_MAX_FRAME_SIZE = 16384
# gRPC's status for a request without valid credentials (grpc/doc/statuscodes.md).
GRPC_UNAUTHENTICATED = 16


@dataclass(frozen=True)
class Frame:
    """One HTTP/2 frame: the 9-byte header's type, flags and stream, and the payload (RFC 9113 §4.1)."""

    type: int
    flags: int
    stream: int
    payload: bytes = b""

    def encode(self) -> bytes:
        """The frame as sent on the wire."""
        return (
            len(self.payload).to_bytes(3, "big")
            + bytes((self.type, self.flags))
            + (self.stream & 0x7FFFFFFF).to_bytes(4, "big")
            + self.payload
        )


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; asyncio.IncompleteReadError at the end of the connection."""
    header = await reader.readexactly(9)
    payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
    # The stream identifier's first bit is reserved and ignored on receipt (§4.1).
    return Frame(header[3], header[4], int.from_bytes(header[5:], "big") & 0x7FFFFFFF, payload)


def header_block_fragment(frame: Frame) -> bytes:
    """A HEADERS or CONTINUATION frame's piece of the header block, without padding or priority (§6.2)."""
    payload = frame.payload
    if frame.type != HEADERS:
        return payload
    padding = 0
    if frame.flags & PADDED:
        padding, payload = payload[0], payload[1:]
    if frame.flags & PRIORITY:
        payload = payload[5:]  # stream dependency (4 bytes) and weight (1 byte)
    return payload[: len(payload) - padding]


def header_frames(stream: int, block: bytes, end_stream: bool) -> list[Frame]:
    """A header block as a HEADERS frame and as many CONTINUATION frames as it needs (§4.3)."""
    pieces = [block[i : i + MIN_MAX_FRAME_SIZE] for i in range(0, len(block), MIN_MAX_FRAME_SIZE)] or [b""]
    frames = []
    for i, piece in enumerate(pieces):
        flags = END_HEADERS if i == len(pieces) - 1 else 0
        if i == 0:
            frames.append(Frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream, piece))
        else:
            frames.append(Frame(CONTINUATION, flags, stream, piece))
    return frames


def unauthenticated_response(stream: int, message: str) -> Frame:
    """A gRPC Trailers-Only response refusing the request for its credentials.

    Encoded by a fresh encoder and marked never-indexed (RFC 7541 §6.2.3), so the block adds nothing to
    the client's decoding table, which the server's encoder keeps in step with its own.
    """
    fields = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(GRPC_UNAUTHENTICATED).encode()),
        (b"grpc-message", message.encode()),
    ]
    block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in fields])
    return Frame(HEADERS, END_HEADERS | END_STREAM, stream, block)


@dataclass
class GateCounts:
    """Requests the gate let through and refused, over all connections."""

    authorized: int = 0
    refused: int = 0


class APIKeyGate:
    """One client connection's HTTP/2 traffic to the server, each request checked for the API key."""

    def __init__(self, api_key: str, counts: GateCounts) -> None:
        self.expected = f"Bearer {api_key}".encode()
        self.counts = counts
        self.from_client = hpack.Decoder()  # the client's compression context (RFC 7541 §2.2)
        self.to_server = hpack.Encoder()  # the gate's own context toward the server
        self.last_stream = 0
        self.refused_streams: set[int] = set()
        # Whole frames only on the client's side: the server's and the gate's answers never interleave.
        self.client_lock = asyncio.Lock()

    async def run(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        server_reader: asyncio.StreamReader,
        server_writer: asyncio.StreamWriter,
    ) -> None:
        """Carry the connection both ways until either side ends it."""
        await asyncio.gather(
            self._client_to_server(client_reader, client_writer, server_writer),
            self._server_to_client(server_reader, client_writer),
        )

    async def _to_client(self, writer: asyncio.StreamWriter, *frames: Frame) -> None:
        async with self.client_lock:
            writer.write(b"".join(f.encode() for f in frames))
            await writer.drain()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            if await reader.readexactly(len(PREFACE)) != PREFACE:
                return
            server.write(PREFACE)
            block: list[Frame] = []  # a HEADERS frame and its CONTINUATIONs so far
            while True:
                frame = await read_frame(reader)
                if frame.type in (HEADERS, CONTINUATION):
                    block.append(frame)
                    if frame.flags & END_HEADERS:
                        await self._header_block(block, client, server)
                        block = []
                    continue
                if frame.stream in self.refused_streams:
                    if frame.type == DATA and frame.payload:
                        # The client spent connection flow-control window on a body the server never
                        # sees and so never credits back (§6.9.1): the gate gives it back.
                        increment = len(frame.payload).to_bytes(4, "big")
                        await self._to_client(client, Frame(WINDOW_UPDATE, 0, 0, increment))
                    continue
                server.write(frame.encode())
                await server.drain()
        with contextlib.suppress(OSError, RuntimeError):
            server.write_eof()

    async def _header_block(
        self, frames: list[Frame], client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        stream = frames[0].stream
        # Decoded whatever becomes of the request: every block updates the decoding table, in order.
        fields = self.from_client.decode(b"".join(header_block_fragment(f) for f in frames), raw=True)
        if stream in self.refused_streams:
            return  # trailers of a refused request
        if stream > self.last_stream:  # a new request (client streams count up, §5.1.1); else trailers
            self.last_stream = stream
            keys = [value for name, value in fields if name == b"authorization"]
            if keys != [self.expected]:
                self.counts.refused += 1
                self.refused_streams.add(stream)
                why = "Request unauthorized: " + ("invalid API key" if keys else "missing API key")
                await self._to_client(client, unauthenticated_response(stream, why))
                return
            self.counts.authorized += 1
        end_stream = bool(frames[0].flags & END_STREAM)
        for frame in header_frames(stream, self.to_server.encode(fields), end_stream):
            server.write(frame.encode())
        await server.drain()

    async def _server_to_client(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            while True:
                frame = await read_frame(reader)
                if frame.type == SETTINGS and not frame.flags & ACK:
                    self._apply_settings(frame)
                await self._to_client(client, frame)
        with contextlib.suppress(OSError, RuntimeError):
            client.write_eof()

    def _apply_settings(self, frame: Frame) -> None:
        # The server's table size bounds the client's encoder (which the gate decodes) and the gate's
        # encoder (which the server decodes) alike (§6.5.2, RFC 7541 §4.2).
        for i in range(0, len(frame.payload) - 5, 6):
            if int.from_bytes(frame.payload[i : i + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
                size = int.from_bytes(frame.payload[i + 2 : i + 6], "big")
                self.from_client.max_allowed_table_size = size
                self.to_server.header_table_size = size
