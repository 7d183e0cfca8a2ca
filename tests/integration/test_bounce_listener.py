"""The bounce listener's limits against a real SMTP client: recipients per transaction (452), one stored copy
per DATA whatever the number of FromID recipients, message size (552) and line length (500) read as they
stream, commands per connection and connections at once (421), idle connections closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosmtplib
import pytest

from deploy.embedded import free_port
from store import bounces
from tests.conftest import Stack
from tests.integration.test_bounces import delivered_with_fromid, dsn, fromid_stack
from tests.integration.test_webhooks import until
from tests.support.webhookserver import WebhookServer
from worker import bounce_listener
from worker.bounce_listener import start_listener


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


@pytest.fixture
async def stack(stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch) -> Stack:
    return await fromid_stack(stack_factory, receiver, monkeypatch)


@pytest.fixture
async def listener(stack: Stack) -> AsyncIterator[int]:
    """The listener on a free port, with the limits the test has set on the module; yields the port."""
    port = free_port()
    server = await start_listener(stack.config, stack.pool, stack.client, "127.0.0.1", port)
    yield port
    server.close()


async def _client(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def test_the_1001st_recipient_of_a_transaction_gets_452(listener: int) -> None:
    smtp = await _client(listener)
    try:
        assert (await smtp.mail("")).code == 250
        for i in range(1000):
            reply = await smtp.execute_command(f"RCPT TO:<alice+r{i}@example.org>".encode())
            assert reply.code == 250, (i, reply)
        reply = await smtp.execute_command(b"RCPT TO:<alice+r1000@example.org>")
        # RFC 5321 §4.5.3.1.10: too many recipients is a temporary 452; the client sends the rest later.
        assert (reply.code, reply.message) == (452, "4.5.3 too many recipients")
        # A new transaction takes recipients again.
        assert (await smtp.rset()).code == 250
        assert (await smtp.mail("")).code == 250
        assert (await smtp.execute_command(b"RCPT TO:<alice+again@example.org>")).code == 250
    finally:
        await smtp.quit()


async def test_one_data_to_three_fromids_is_stored_once_and_matched_for_each(
    stack: Stack, listener: int, receiver: WebhookServer
) -> None:
    sent = [await delivered_with_fromid(stack) for _ in range(3)]
    await until(lambda: len(receiver.events()) == 3)
    rcpts = [f"alice+{from_id}@example.org" for _, from_id in sent]
    smtp = await _client(listener)
    try:
        await smtp.sendmail("", rcpts, dsn(rcpts[0]))
    finally:
        await smtp.quit()
    # Every recipient is matched to its own message.
    await until(lambda: len(receiver.events()) == 6, timeout=60)
    failed = {e["QueueMsgID"] for e in receiver.events()[3:] if e["Event"] == "failed"}
    assert failed == {msg_id for msg_id, _ in sent}
    async with stack.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n, count(DISTINCT message_id) AS messages,"
            " sum(octet_length(data)) AS own_copies, count(processed) AS processed"
            " FROM bounces WHERE rcpt_to = ANY(%s)",
            (rcpts,),
        )
        row = await cur.fetchone()
        # One message row for the three recipients, no copy of the body on any of them.
        assert row == {"n": 3, "messages": 1, "own_copies": 0, "processed": 3}
        # Once all three are processed the body is not kept.
        cur = await conn.execute(
            "SELECT octet_length(data) AS size FROM bounce_messages"
            " WHERE id IN (SELECT message_id FROM bounces WHERE rcpt_to = ANY(%s))",
            (rcpts,),
        )
        assert await cur.fetchall() == [{"size": 0}]
    # The retention cleanup deletes the processed recipients and then their message.
    assert await bounces.cleanup_processed(stack.pool, datetime.now(UTC) + timedelta(seconds=1)) == 3
    async with stack.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM bounce_messages")
        assert await cur.fetchone() == {"n": 0}


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounce_listener, "MAX_SIZE", 256 * 1024)
    monkeypatch.setattr(bounce_listener, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(bounce_listener, "COMMAND_LIMITS", {**bounce_listener.COMMAND_LIMITS, "MAIL": 3})


async def _transaction(smtp: aiosmtplib.SMTP, body: bytes) -> tuple[int, str]:
    """MAIL, one FromID RCPT and DATA with `body` sent as is (already dot-stuffed, without the end)."""
    assert (await smtp.mail("")).code == 250
    assert (await smtp.execute_command(b"RCPT TO:<alice+x@example.org>")).code == 250
    assert (await smtp.execute_command(b"DATA")).code == 354
    smtp.transport.write(body + b"\r\n.\r\n")  # type: ignore[union-attr]
    reply = await smtp.protocol.read_response(timeout=30)  # type: ignore[union-attr]
    return reply.code, reply.message


@pytest.mark.usefixtures("small_limits")
async def test_a_message_over_the_size_limit_is_read_to_its_end_and_refused_with_552(listener: int) -> None:
    smtp = await _client(listener)
    try:
        line = b"x" * 998 + b"\r\n"
        code, message = await _transaction(smtp, line * 300)  # 300 kB against 256 kB
        assert (code, message.split(" ")[0]) == (552, "5.3.4")
        # One line that never ends is counted as it streams, not kept until its end.
        code, _ = await _transaction(smtp, b"y" * (2 * 1024 * 1024))
        assert code == 552
        # The connection is still in step: the next message goes through.
        code, _ = await _transaction(smtp, dsn("alice+x@example.org").rstrip(b"\r\n"))
        assert code == 250
    finally:
        await smtp.quit()


@pytest.mark.usefixtures("small_limits")
async def test_a_line_over_1000_bytes_is_refused_with_500(listener: int) -> None:
    smtp = await _client(listener)
    try:
        code, message = await _transaction(smtp, b"Subject: x\r\n\r\n" + b"z" * 1500)
        assert (code, message.split(" ")[0]) == (500, "5.5.2")
    finally:
        await smtp.quit()


@pytest.mark.usefixtures("small_limits")
async def test_transactions_per_connection_are_limited_with_421(listener: int) -> None:
    smtp = await _client(listener)
    for _ in range(3):
        assert (await smtp.mail("")).code == 250
        assert (await smtp.rset()).code == 250
    reply = await smtp.execute_command(b"MAIL FROM:<>")
    assert reply.code == 421
    smtp.close()


async def _greeting(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await asyncio.wait_for(reader.readline(), 30), writer


@pytest.mark.usefixtures("small_limits")
async def test_connections_over_the_limit_get_421_until_one_closes(listener: int) -> None:
    first, w1 = await _greeting(listener)
    second, w2 = await _greeting(listener)
    third, w3 = await _greeting(listener)
    assert first.startswith(b"220") and second.startswith(b"220")
    assert third.startswith(b"421 4.3.2")
    for w in (w1, w3):
        w.close()
    # A slot frees when a connection ends.
    greetings: list[bytes] = []

    async def free() -> bool:
        got, w = await _greeting(listener)
        w.close()
        greetings.append(got)
        return got.startswith(b"220")

    await until(free)
    w2.close()


async def test_a_connection_idle_longer_than_the_timeout_is_closed(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounce_listener, "IDLE_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener)
    assert (await reader.readline()).startswith(b"220")
    # Nothing sent: the server hangs up after IDLE_TIMEOUT, well before the test's own timeout.
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
