"""PostgreSQL failing around an attempt's outcome: nothing is sent twice and every message ends once.

The faults are real: a trigger makes the PostgreSQL backend that writes a chosen row terminate itself
(pg_terminate_backend), as a database restart would, the first time (or every time) it fires. The worker's
connection dies mid-transaction and the deliver activity is retried by Temporal like after any crash.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from typing import Any

import pytest

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.integration.test_webhooks import hooked, until
from tests.support.webhookserver import WebhookServer
from workflows.delivery import Delivery


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


async def kill_connection_on(stack: Stack, trigger_sql: str, times: int = 1) -> None:
    """Install `trigger_sql` (a CREATE TRIGGER ... EXECUTE FUNCTION fault()); its first `times` firings
    terminate the writing backend. A sequence counts firings: it is not rolled back with the transaction."""
    async with stack.pool.connection() as conn:
        await conn.execute("CREATE SEQUENCE fault_fired")
        await conn.execute(
            f"""CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('fault_fired') <= {times} THEN
                        PERFORM pg_terminate_backend(pg_backend_pid());
                    END IF;
                    RETURN NEW;
                END $$"""  # type: ignore[arg-type]
        )
        await conn.execute(trigger_sql)  # type: ignore[arg-type]


async def faults_fired(stack: Stack) -> int:
    async with stack.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM fault_fired"
        )
        row = await cur.fetchone()
        return int(row["n"])


async def mixed_attempt(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> Stack:
    """A stack whose sink accepts ok@, defers later@ and refuses gone@ (a suppressing 5.1.1)."""
    # The deferred recipient's next attempt is far away: the test looks at the first attempt only.
    stack = await hooked(stack_factory, receiver, monkeypatch, backoff_base="1h")
    stack.sink.behaviour.rcpt_replies["later@example.com"] = "451 4.2.0 mailbox busy"
    stack.sink.behaviour.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    return stack


async def first_attempt_settled(stack: Stack) -> tuple[int, int, int]:
    """Send to ok@, later@ and gone@ in one transaction; wait until the workflow has the attempt's outcome."""
    resp = await stack.send_ok(
        {
            "To": [{"Address": a} for a in ("ok@example.com", "later@example.com", "gone@example.com")],
            "Text": "x",
        }
    )
    ok, later, gone = (s["QueueMsgID"] for s in resp["Submissions"])

    async def settled() -> bool:
        status = await stack.handle(ok).query(Delivery.status)
        states = {m.id: (m.state, m.attempts) for m in status.msgs}
        return states == {
            ok: (MsgState.DELIVERED, 1),
            later: (MsgState.QUEUED, 1),
            gone: (MsgState.FAILED, 1),
        }

    await until(settled, timeout=60)
    return ok, later, gone


async def assert_each_message_ended_once(
    stack: Stack, receiver: WebhookServer, ok: int, later: int, gone: int
) -> None:
    """One copy for ok@, one recorded result for later@, one failure (with its DSN) for gone@, one webhook
    row each."""
    assert sorted(stack.sink.delivered_to()) == ["ok@example.com"]
    delivered = (await stack.admin("GET", f"/queue/{ok}")).json()
    assert delivered["Event"] == "delivered" and delivered["Results"][-1]["Code"] == 250
    failed = (await stack.admin("GET", f"/queue/{gone}")).json()
    assert failed["Event"] == "failed"
    assert [(r["Code"], r["Secode"]) for r in failed["Results"]] == [(550, "1.1")]
    queued = (await stack.admin("GET", f"/queue/{later}")).json()
    assert queued["Attempts"] == 1
    assert [(r["Code"], r["Error"][:3]) for r in queued["Results"]] == [(451, "451")]
    async with stack.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT queue_msg_id, outgoing_event FROM hooks
               UNION ALL SELECT queue_msg_id, outgoing_event FROM retired_hooks ORDER BY 1"""
        )
        assert [(r["queue_msg_id"], r["outgoing_event"]) for r in await cur.fetchall()] == sorted(
            [(ok, "delivered"), (later, "delayed"), (gone, "failed")]
        )
        cur = await conn.execute("SELECT msg_id, kind FROM dsns")
        assert [(r["msg_id"], r["kind"]) for r in await cur.fetchall()] == [(gone, "failed")]
        cur = await conn.execute("SELECT base_address FROM suppressions")
        assert [r["base_address"] for r in await cur.fetchall()] == ["gone@example.com"]
    await until(lambda: len(stack.sink.dsns()) == 1, timeout=30)
    dsn = email.message_from_bytes(stack.sink.dsns()[0].data)
    assert "550 5.1.1 no such user" in dsn.as_string()
    await until(lambda: len(receiver.events()) == 3, timeout=30)
    by_id = {e["QueueMsgID"]: e for e in receiver.events()}
    assert by_id[gone]["Event"] == "failed" and by_id[gone]["Suppressing"] is True
    assert by_id[later]["Event"] == "delayed" and by_id[ok]["Event"] == "delivered"


async def test_connection_lost_while_recording_the_outcome_settles_each_message_once(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await mixed_attempt(stack_factory, receiver, monkeypatch)
    # The failure DSN is written in the middle of the outcome: after the delivered, deferred and
    # suppression rows, before the failed message is retired.
    await kill_connection_on(
        stack, "CREATE TRIGGER fault BEFORE INSERT ON dsns FOR EACH ROW EXECUTE FUNCTION fault()"
    )
    ok, later, gone = await first_attempt_settled(stack)
    assert await faults_fired(stack) >= 1
    await assert_each_message_ended_once(stack, receiver, ok, later, gone)


async def test_connection_lost_at_the_lease_release_sends_nothing_again(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await mixed_attempt(stack_factory, receiver, monkeypatch)
    # The domain's lease is given back when the SMTP session ends, before the outcome is recorded; losing
    # the connection there must not lose or repeat the outcome (the release is tried again after it).
    await kill_connection_on(
        stack,
        """CREATE TRIGGER fault BEFORE UPDATE ON delivery_leases FOR EACH ROW
           WHEN (OLD.domain = 'example.com' AND NEW.expires < OLD.expires) EXECUTE FUNCTION fault()""",
    )
    ok, later, gone = await first_attempt_settled(stack)
    assert await faults_fired(stack) >= 1
    await assert_each_message_ended_once(stack, receiver, ok, later, gone)
    # The retried activity found the attempt recorded and did not start another SMTP transaction.
    assert stack.sink.rcpts_seen.count("later@example.com") == 1
    assert stack.sink.rcpts_seen.count("gone@example.com") == 1


_JOURNAL_TRIGGER = """CREATE TRIGGER fault BEFORE UPDATE ON queue_msgs FOR EACH ROW
    WHEN (OLD.accepted_at IS NULL AND NEW.accepted_at IS NOT NULL) EXECUTE FUNCTION fault()"""


async def test_journal_write_lost_once_after_the_250_is_retried_not_sent_again(stack: Stack) -> None:
    await kill_connection_on(stack, _JOURNAL_TRIGGER)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id, timeout=60)
    assert status.msgs[0].state == MsgState.DELIVERED
    assert await faults_fired(stack) >= 1
    assert stack.sink.delivered_to() == ["bob@example.com"]


async def test_journal_that_never_takes_the_write_leaves_the_outcome_as_the_record(
    stack_factory: Any,
) -> None:
    # A short attempt timeout bounds how long the journal is retried (half of what is left).
    stack = await stack_factory(attempt_timeout="6s")
    await kill_connection_on(stack, _JOURNAL_TRIGGER, times=1_000_000)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id, timeout=60)
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 1
    assert await faults_fired(stack) >= 2
    assert stack.sink.delivered_to() == ["bob@example.com"]
    row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert row["Event"] == "delivered"
