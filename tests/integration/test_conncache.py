"""The SMTP connection cache (activities/conncache.py): deliveries to one destination share a connection.

Through the real worker, API, Temporal and PostgreSQL to the loopback SMTP sink, which counts the TCP
connections it accepted and the RSET and QUIT commands it got; the cache's limits against the sink directly.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client import REGISTRY

from activities.conncache import ConnectionCache, SessionKey
from activities.smtpclient import Envelope, SMTPConnection, open_session, transact
from domain.contracts import MsgState
from tests.conftest import Stack
from tests.support.smtpsink import SMTPSink
from worker.main import run_worker

REUSED = "tempost_queue_smtp_sessions_reused_total"
REUSE_FAILURES = "tempost_queue_smtp_session_reuse_failures_total"
OPENED = "tempost_queue_smtp_sessions_opened_total"


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _deliver(stack: Stack, *to: str) -> Any:
    resp = await stack.send_ok({"To": [{"Address": a} for a in to], "Subject": "hi", "Text": "hello"})
    return await stack.finished(resp["Submissions"][0]["QueueMsgID"])


# An idle limit no busy test machine reaches between two deliveries, for the tests about reuse itself.
LONG_IDLE = "30s"


async def test_consecutive_deliveries_share_one_connection(stack_factory) -> None:
    stack = await stack_factory(connection_cache_time_limit=LONG_IDLE)
    reused, opened = _metric(REUSED), _metric(OPENED)
    for n in range(3):
        status = await _deliver(stack, f"rcpt{n}@example.com")
        assert status.msgs[0].state == MsgState.DELIVERED
    sink = stack.sink
    assert [t.rcpt_tos for t in sink.messages()] == [[f"rcpt{n}@example.com"] for n in range(3)]
    # One TCP connection carried all three, each later transaction after an RSET; nothing said QUIT yet.
    assert sink.connections == 1 and len({t.session for t in sink.messages()}) == 1
    assert sink.rsets == 2 and sink.quits == 0
    assert _metric(REUSED) - reused == 2 and _metric(OPENED) - opened == 1


async def test_connection_closed_while_idle_is_found_at_rset_and_replaced(stack_factory) -> None:
    stack = await stack_factory(connection_cache_time_limit=LONG_IDLE)
    sink = stack.sink
    assert (await _deliver(stack, "first@example.com")).msgs[0].state == MsgState.DELIVERED
    await _until(lambda: len(sink.open) == 1, "the idle session at the sink")
    # The server ends the idle connection, as servers do after their own idle timeout.
    sink.drop_connections()
    await _until(lambda: not sink.open, "the sink to drop the connection")
    failures = _metric(REUSE_FAILURES)
    status = await _deliver(stack, "second@example.com")
    # The dead session cost neither an attempt nor a duplicate: a fresh connection delivered it once.
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 1
    assert [t.rcpt_tos for t in sink.messages()] == [["first@example.com"], ["second@example.com"]]
    assert sink.connections == 2 and sink.data_commands == 2
    assert _metric(REUSE_FAILURES) - failures == 1


async def test_failed_transactions_and_421_are_not_cached(stack_factory) -> None:
    # Retries a second after an attempt starts, so the test can change the sink's replies in between.
    stack = await stack_factory(connection_cache_time_limit=LONG_IDLE, backoff_base="1s")
    sink = stack.sink
    assert (await _deliver(stack, "a@example.com")).msgs[0].state == MsgState.DELIVERED
    # DATA refused with 451 on the cached session: that session is QUIT, and the retry opens a new one.
    sink.behaviour.temp_failures = 1
    status = await _deliver(stack, "b@example.com")
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 2
    assert sink.connections == 2 and sink.quits == 1
    # 421 for one recipient (RFC 5321 §3.8: the server is closing): the other is delivered over the
    # session, which is then QUIT, not kept.
    sink.behaviour.rcpt_replies["closing@example.com"] = "421 4.3.2 shutting down"
    to = [{"Address": "c@example.com"}, {"Address": "closing@example.com"}]
    resp = await stack.send_ok({"To": to, "Text": "hello"})
    await _until(lambda: "closing@example.com" in sink.rcpts_seen, "the 421")
    del sink.behaviour.rcpt_replies["closing@example.com"]
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED] * 2
    assert sorted(m.attempts for m in status.msgs) == [1, 2]
    # Attempt 1 reused the session of b's retry, then QUIT it; attempt 2 needed a third connection.
    assert sink.connections == 3 and sink.quits == 2


async def test_caching_off_opens_a_connection_per_delivery(stack_factory) -> None:
    stack = await stack_factory(connection_cache_time_limit="0s")
    for n in range(2):
        assert (await _deliver(stack, f"r{n}@example.com")).msgs[0].state == MsgState.DELIVERED
    assert stack.sink.connections == 2 and stack.sink.quits == 2 and stack.sink.rsets == 0


async def test_worker_shutdown_quits_idle_sessions(stack_factory) -> None:
    stack = await stack_factory(worker=False, connection_cache_time_limit=LONG_IDLE)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(stack.config, stop, stack.client))
    try:
        assert (await _deliver(stack, "bob@example.com")).msgs[0].state == MsgState.DELIVERED
        sink = stack.sink
        assert sink.quits == 0 and sink.connections == 1
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
    # The worker said QUIT to its idle session before it returned.
    assert sink.quits == 1
    await _until(lambda: not sink.open, "the sink to see the connection closed")


# The cache's limits, against the sink without the rest of Tempost.


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _session(sink: SMTPSink, clock: _Clock | None = None) -> SMTPConnection:
    conn = await open_session(
        sink.host,
        sink.port,
        ehlo="tempost.test",
        mode="skip",
        tls_context=ssl.create_default_context(),
        server_name=None,
        connect_timeout=10,
        command_timeout=10,
    )
    if clock is not None:
        conn.opened_at = clock.now
    return conn


async def _send(conn: SMTPConnection, rcpt: str) -> None:
    async def accepted(_: list[int], __: str) -> None:
        pass

    env = Envelope("me@example.org", [rcpt], b"Subject: x\r\n\r\nhello\r\n")
    [reply] = await transact(conn, env, accepted)
    assert reply.success


KEY = SessionKey("sink", "mx.example", "127.0.0.1", 25, "tempost.test", ("skip",))


async def test_idle_limit_and_age_limit(sink: SMTPSink) -> None:
    clock = _Clock()
    cache = ConnectionCache(idle_limit=2, reuse_time_limit=300, clock=clock)
    conn = await _session(sink, clock)
    await _send(conn, "a@example.com")
    await cache.give_back(KEY, conn)
    # Within the idle limit the session comes back, for the same key only.
    clock.now += 1.9
    assert await cache.take(replace(KEY, ip="127.0.0.2")) is None
    assert await cache.take(replace(KEY, tls=("requiredstarttls", "pkix"))) is None
    assert await cache.take(KEY) is conn
    await _send(conn, "b@example.com")
    await cache.give_back(KEY, conn)
    # Idle longer than the limit: QUIT instead of reuse, and no reuse failure counted.
    clock.now += 2.1
    failures = _metric(REUSE_FAILURES)
    assert await cache.take(KEY) is None
    assert sink.quits == 1 and _metric(REUSE_FAILURES) == failures and cache.idle() == 0
    # A session older than the reuse time limit is QUIT when given back.
    old = await _session(sink, clock)
    clock.now += 300
    await _send(old, "c@example.com")
    await cache.give_back(KEY, old)
    assert sink.quits == 2 and cache.idle() == 0
    await cache.close()


async def test_reuse_count_limit_and_destination_bound(sink: SMTPSink) -> None:
    cache = ConnectionCache(idle_limit=30, reuse_count_limit=2, per_destination=2)
    conn = await _session(sink)
    for n in range(3):
        await _send(conn, f"r{n}@example.com")
        await cache.give_back(KEY, conn)
        taken = await cache.take(KEY)
        if n < 2:
            assert taken is conn
    # Taken twice: the third give_back QUITs it.
    assert taken is None and sink.quits == 1 and sink.connections == 1
    # At most two idle sessions per destination: a third pushes out the oldest, with QUIT.
    sessions = [await _session(sink) for _ in range(3)]
    for s in sessions:
        await cache.give_back(KEY, s)
    assert cache.idle() == 2 and sink.quits == 2
    assert await cache.take(KEY) is sessions[2]
    await cache.close()
    assert sink.quits == 3 and cache.idle() == 0


async def test_reaper_quits_sessions_past_the_idle_limit(sink: SMTPSink) -> None:
    cache = ConnectionCache(idle_limit=0.2)
    conn = await _session(sink)
    await _send(conn, "a@example.com")
    await cache.give_back(KEY, conn)
    assert cache.idle() == 1
    # Nobody takes it: the reaper QUITs it on its own.
    await _until(lambda: sink.quits == 1, "the reaper's QUIT")
    assert cache.idle() == 0
    await cache.close()
