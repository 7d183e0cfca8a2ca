"""The test proxy's HTTP/2 gate reads frames and header blocks as RFC 9113 and RFC 7541 define them, refuses
a request without the API key with a gRPC UNAUTHENTICATED answer, and keeps the server's HPACK context
whole when it drops a request.
"""

from __future__ import annotations

import asyncio
import contextlib

import hpack

from tests.support.h2gate import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY,
    SETTINGS,
    WINDOW_UPDATE,
    APIKeyGate,
    Frame,
    GateCounts,
    header_block_fragment,
    header_frames,
    read_frame,
    unauthenticated_response,
)

KEY = "k-123"


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_frames_are_read_from_their_nine_byte_header() -> None:
    wire = (
        b"\x00\x00\x03\x01\x05\x80\x00\x00\x03abc"  # reserved bit set on the stream id: ignored (§4.1)
        + Frame(SETTINGS, 0, 0).encode()
    )
    reader = _reader(wire)
    assert await read_frame(reader) == Frame(HEADERS, END_STREAM | END_HEADERS, 3, b"abc")
    assert await read_frame(reader) == Frame(SETTINGS, 0, 0, b"")
    with contextlib.suppress(asyncio.IncompleteReadError):
        await read_frame(reader)
        raise AssertionError("a frame after the end")


def test_padding_and_priority_are_not_part_of_the_header_block() -> None:
    padded = Frame(HEADERS, PADDED | PRIORITY, 1, b"\x02" + b"\x00\x00\x00\x00\x10" + b"blk" + b"\x00\x00")
    assert header_block_fragment(padded) == b"blk"
    assert header_block_fragment(Frame(HEADERS, PADDED, 1, b"\x01blk\x00")) == b"blk"
    # CONTINUATION has neither (§6.10): its whole payload is block.
    assert header_block_fragment(Frame(CONTINUATION, PADDED, 1, b"\x01blk")) == b"\x01blk"


def test_a_large_block_goes_out_as_headers_and_continuations() -> None:
    block = bytes(range(256)) * 100  # 25 600 bytes: more than the 16 384 every peer accepts
    frames = header_frames(5, block, end_stream=True)
    assert [(f.type, f.flags) for f in frames] == [(HEADERS, END_STREAM), (CONTINUATION, END_HEADERS)]
    assert b"".join(f.payload for f in frames) == block
    assert header_frames(7, b"x", end_stream=False) == [Frame(HEADERS, END_HEADERS, 7, b"x")]


def test_the_refusal_is_a_grpc_trailers_only_response_that_leaves_the_clients_table_alone() -> None:
    frame = unauthenticated_response(3, "Request unauthorized: missing API key")
    assert (frame.type, frame.flags, frame.stream) == (HEADERS, END_HEADERS | END_STREAM, 3)
    client = hpack.Decoder()
    assert client.decode(frame.payload) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "16"),
        ("grpc-message", "Request unauthorized: missing API key"),
    ]
    # Nothing was added to the client's dynamic table: it stays in step with the server's encoder.
    assert len(client.header_table.dynamic_entries) == 0


def _frames(data: bytes) -> list[Frame]:
    """The frames in `data`, which ends at a frame's end."""
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append(Frame(data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def _request(encoder: hpack.Encoder, key: str | None) -> bytes:
    fields = [(":method", "POST"), (":path", "/temporal.api.workflowservice.v1.WorkflowService/X")]
    fields += [("content-type", "application/grpc"), ("temporal-namespace", "default")]
    return encoder.encode(fields + ([("authorization", f"Bearer {key}")] if key is not None else []))


async def test_the_gate_forwards_requests_with_the_key_and_answers_the_others_itself() -> None:
    upstream_received = bytearray()
    upstream_done = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(Frame(SETTINGS, 0, 0, b"\x00\x01\x00\x00\x10\x00").encode())  # table size 4096
        await writer.drain()
        upstream_received.extend(await reader.read(-1))
        upstream_done.set()
        writer.close()

    counts = GateCounts()

    async def gate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", up_port)
        await APIKeyGate(KEY, counts).run(reader, writer, up_reader, up_writer)
        writer.close()

    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]
    gate_server = await asyncio.start_server(gate, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", gate_server.sockets[0].getsockname()[1])
    try:
        encoder = hpack.Encoder()  # one context, as the client's: each block indexes into the next
        first_block = _request(encoder, KEY)
        refused_block = _request(encoder, "wrong")
        writer.write(
            PREFACE
            + Frame(SETTINGS, 0, 0).encode()
            + Frame(HEADERS, 0, 1, first_block[:5]).encode()  # the block split over a CONTINUATION
            + Frame(CONTINUATION, END_HEADERS, 1, first_block[5:]).encode()
            + Frame(DATA, END_STREAM, 1, b"body1").encode()
            + Frame(HEADERS, END_HEADERS, 3, refused_block).encode()
            + Frame(DATA, END_STREAM, 3, b"body-3").encode()
            + Frame(HEADERS, END_HEADERS, 5, _request(encoder, None)).encode()
            + Frame(HEADERS, END_HEADERS | END_STREAM, 7, _request(encoder, KEY)).encode()
        )
        writer.write_eof()
        # The gate ends the client's connection once the server has ended its own.
        async with asyncio.timeout(10):
            answers = _frames(await reader.read(-1))
            await upstream_done.wait()
    finally:
        writer.close()
        gate_server.close()
        up_server.close()

    # The client sees the server's SETTINGS and the gate's answers to streams 3 and 5, with the refused
    # body's flow-control window given back.
    assert [f.type for f in answers].count(SETTINGS) == 1
    refusals = [f for f in answers if f.type == HEADERS]
    assert [f.stream for f in refusals] == [3, 5]
    messages = [dict(hpack.Decoder().decode(f.payload))["grpc-message"] for f in refusals]
    assert messages == ["Request unauthorized: invalid API key", "Request unauthorized: missing API key"]
    assert Frame(WINDOW_UPDATE, 0, 0, (6).to_bytes(4, "big")) in answers
    assert counts == GateCounts(authorized=2, refused=2)

    # The server sees streams 1 and 7 only, and decodes them in its own context although the client's
    # blocks for 3 and 5 (which indexed new entries) never reached it.
    assert upstream_received.startswith(PREFACE)
    frames = _frames(bytes(upstream_received[len(PREFACE) :]))
    assert [(f.type, f.stream) for f in frames] == [(SETTINGS, 0), (HEADERS, 1), (DATA, 1), (HEADERS, 7)]
    server = hpack.Decoder()
    for frame in (frames[1], frames[3]):
        fields = dict(server.decode(frame.payload))
        assert fields["authorization"] == f"Bearer {KEY}" and fields[":method"] == "POST"
    assert frames[3].flags & END_STREAM
