"""Scenarios of the delivery workflow through the real API, Temporal dev server, PostgreSQL and SMTP."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from temporalio.api.enums.v1 import EventType

from domain.contracts import MsgState
from store import queue as q
from tests.conftest import SENDER, Stack


def text_msg(*to: str, **extra: object) -> dict[str, object]:
    req: dict[str, object] = {"To": [{"Address": a} for a in to], "Subject": "hi", "Text": "hello"}
    req.update(extra)
    return req


async def test_single_delivery(stack: Stack) -> None:
    resp = await stack.send_ok(text_msg("bob@example.com"))
    [sub] = resp["Submissions"]
    assert sub["Address"] == "bob@example.com" and sub["FromID"] == ""
    status = await stack.finished(sub["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED
    [t] = stack.sink.transactions
    assert t.mail_from == SENDER and t.rcpt_tos == ["bob@example.com"]
    parsed = message_from_bytes(t.data, policy=default_policy)
    assert parsed["Message-Id"] == resp["MessageID"]
    assert parsed["Subject"] == "hi"
    assert parsed.get_content().strip() == "hello"
    # Retired with its result (account alice keeps retired messages for 1h).
    r = await stack.admin("GET", f"/queue/{sub['QueueMsgID']}")
    assert r.status_code == 200
    body = r.json()
    assert body["Success"] is True and body["Event"] == "delivered"
    assert body["Results"][-1]["Success"] is True and body["Results"][-1]["Code"] == 250
    assert body["Attempts"] == 1
    # The body is stored once and removed with the last queued recipient.
    async with stack.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM submissions")
        assert (await cur.fetchone())["n"] == 0


async def test_multi_recipient_same_domain_one_transaction(stack: Stack) -> None:
    resp = await stack.send_ok(text_msg("a@example.com", "b@example.com", "c@example.com"))
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    assert len(set(ids)) == 3
    status = await stack.finished(ids[0])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED] * 3
    assert len(stack.sink.transactions) == 1
    assert stack.sink.transactions[0].rcpt_tos == ["a@example.com", "b@example.com", "c@example.com"]
    assert stack.sink.data_commands == 1


async def test_two_domains_two_transactions(stack: Stack) -> None:
    resp = await stack.send_ok(text_msg("a@one.example", "b@two.example", "c@one.example"))
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    by_rcpts = sorted(sorted(t.rcpt_tos) for t in stack.sink.transactions)
    assert by_rcpts == [["a@one.example", "c@one.example"], ["b@two.example"]]


async def test_mail_log_has_a_line_per_recipient_and_attempt(
    stack_factory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await stack_factory()
    stack.sink.behaviour.temp_failures = 1
    caplog.set_level(logging.INFO, logger="tempost.delivery")
    resp = await stack.send_ok(text_msg("bob@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    mine = [r for r in caplog.records if getattr(r, "msg_id", None) == msg_id]
    assert [r.event for r in mine] == ["deferred", "delivered"]  # type: ignore[attr-defined]
    deferred, delivered = mine
    assert deferred.getMessage().startswith(
        f"deferred msg {msg_id} from <{SENDER}> to <bob@example.com>, attempt 1"
    )
    assert deferred.code == 451 and deferred.levelno == logging.WARNING  # type: ignore[attr-defined]
    assert delivered.attempt == 2 and delivered.code == 250  # type: ignore[attr-defined]
    assert delivered.relay == f"[{stack.sink.host}]:{stack.sink.port}"  # type: ignore[attr-defined]


async def test_temporary_failure_then_success(stack_factory) -> None:
    stack = await stack_factory(backoff_base="1s")
    stack.sink.behaviour.temp_failures = 1
    sent = datetime.now(UTC)
    resp = await stack.send_ok(text_msg("bob@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 2
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    first, second = body["Results"]
    assert first["Success"] is False and first["Code"] == 451 and first["Secode"] == "3.0"
    assert "try again later" in first["Error"]
    assert second["Success"] is True
    # Between the attempts the workflow slept on a timer for the rest of the backoff (1s base, jitter
    # scaled alike); the next attempt time is set before an attempt starts, as in mox.
    events = [e async for e in stack.handle(msg_id).fetch_history_events()]
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert len(timers) == 1 and timers[0] <= timedelta(milliseconds=1010)
    # The backoff (at least 1s less 5/450 of jitter) counts from the first attempt's start in the workflow,
    # which came after the submission. (Not from first["Start"]: the activity stamps that a variable while
    # later, longer on a slow machine for a workflow's first attempt than for its next.)
    gap = datetime.fromisoformat(second["Start"]) - sent
    assert timedelta(milliseconds=950) <= gap


async def test_permanent_failure(stack: Stack) -> None:
    stack.sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    resp = await stack.send_ok(text_msg("nobody@example.com", "bob@example.com"))
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    status = await stack.finished(ids[0])
    states = {m.id: m.state for m in status.msgs}
    assert states == {ids[0]: MsgState.FAILED, ids[1]: MsgState.DELIVERED}
    # The refused recipient is never retried: one attempt only.
    failed = (await stack.admin("GET", f"/queue/{ids[0]}")).json()
    assert failed["Event"] == "failed" and failed["Attempts"] == 1
    assert failed["Results"][-1]["Code"] == 550 and failed["Results"][-1]["Secode"] == "1.1"
    assert stack.sink.delivered_to() == ["bob@example.com"]


async def test_attempts_exhausted(stack: Stack) -> None:
    stack.sink.behaviour.data_reply = "451 4.4.1 still busy"
    resp = await stack.send_ok(text_msg("bob@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == MsgState.FAILED
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert body["Attempts"] == 3 == stack.sink.data_commands
    assert [r["Code"] for r in body["Results"]] == [451, 451, 451]
    assert body["Event"] == "failed"


async def test_hold_then_release(stack_factory) -> None:
    stack = await stack_factory(worker=True)
    # Far enough out that a slow submission and hold still come before the release.
    release = datetime.now(UTC) + timedelta(seconds=5)
    resp = await stack.send_ok(text_msg("bob@example.com", FutureRelease=release.isoformat()))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    r = await stack.admin("POST", f"/queue/{msg_id}/hold")
    assert r.status_code == 200, r.text
    assert r.json()["State"] == "held" and r.json()["Hold"] is True
    listed = (await stack.admin("GET", "/queue", params={"hold": "true"})).json()["Messages"]
    assert [m["ID"] for m in listed] == [msg_id]
    # Past the release time, a held message stays put.
    await asyncio.sleep(max(0.0, (release - datetime.now(UTC)).total_seconds()) + 0.5)
    assert stack.sink.messages() == []
    r = await stack.admin("POST", f"/queue/{msg_id}/release")
    assert r.status_code == 200 and r.json()["Hold"] is False
    await stack.finished(msg_id)
    assert stack.sink.delivered_to() == ["bob@example.com"]


async def test_drop(stack: Stack) -> None:
    resp = await stack.send_ok(
        text_msg("bob@example.com", FutureRelease=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    )
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    r = await stack.admin("POST", f"/queue/{msg_id}/drop")
    assert r.status_code == 200, r.text
    assert r.json()["State"] == "canceled"
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == MsgState.CANCELED
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert body["Event"] == "canceled" and body["Success"] is False
    assert body["Results"][-1]["Error"] == "delivery canceled by admin"
    assert stack.sink.messages() == []
    # A second drop finds nothing to drop.
    again = await stack.admin("POST", f"/queue/{msg_id}/drop")
    assert again.status_code == 404


async def test_fail(stack: Stack) -> None:
    resp = await stack.send_ok(
        text_msg(
            "a@example.com",
            "b@example.com",
            FutureRelease=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        )
    )
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    r = await stack.admin("POST", f"/queue/{ids[0]}/fail")
    assert r.status_code == 200 and r.json()["State"] == "failed"
    body = (await stack.admin("GET", f"/queue/{ids[0]}")).json()
    assert body["Event"] == "failed" and body["LastAttempt"] is not None
    # The other recipient is still queued, and a kick delivers it now.
    other = (await stack.admin("GET", f"/queue/{ids[1]}")).json()
    assert other["State"] == "queued"
    r = await stack.admin("POST", f"/queue/{ids[1]}/kick")
    assert r.status_code == 200
    await stack.finished(ids[0])
    assert stack.sink.delivered_to() == ["b@example.com"]


async def test_future_release(stack: Stack) -> None:
    release = datetime.now(UTC) + timedelta(seconds=2)
    # The release time on the sink's clock (time.monotonic), to compare with when the sink took the message.
    release_on_sink_clock = time.monotonic() + (release - datetime.now(UTC)).total_seconds()
    resp = await stack.send_ok(text_msg("bob@example.com", FutureRelease=release.isoformat()))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    row = await q.get_msg(stack.pool, msg_id)
    assert row is not None and row["future_release_request"].startswith("until;")
    assert abs((row["next_attempt"] - release).total_seconds()) < 1
    await stack.finished(msg_id)
    assert stack.sink.delivered_to() == ["bob@example.com"]
    # Nothing went out before the release time: judged by when the sink accepted the message, not by looking
    # shortly before the release (a slow submission could push that look past it).
    [tx] = stack.sink.messages()
    assert tx.accepted_at >= release_on_sink_clock - 0.05
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert datetime.fromisoformat(body["Results"][0]["Start"]) >= release - timedelta(milliseconds=50)


async def test_admin_operation_on_unknown_message(stack: Stack) -> None:
    assert (await stack.admin("POST", "/queue/999999/hold")).status_code == 404
    assert (await stack.admin("GET", "/queue/999999")).status_code == 404
    assert (await stack.http.post("/admin/v0/queue/1/hold")).status_code == 401


async def test_queue_list_filters(stack_factory) -> None:
    stack = await stack_factory(worker=False)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await stack.send_ok(text_msg("x@one.example", "y@two.example", FutureRelease=later))
    listed = (await stack.admin("GET", "/queue", params={"to": "two.example"})).json()["Messages"]
    assert [m["RecipientDomainStr"] for m in listed] == ["two.example"]
    assert (await stack.admin("GET", "/queue", params={"account": "bob"})).json()["Messages"] == []
    assert len((await stack.admin("GET", "/queue", params={"account": "alice"})).json()["Messages"]) == 2
    assert (await stack.admin("GET", "/queue/count")).json() == {"Count": 2}
    bad = await stack.admin("GET", "/queue", params={"nextattempt": "soon"})
    assert bad.status_code == 400 and bad.json()["Code"] == "badFilter"
    raw = await stack.admin("GET", f"/queue/{listed[0]['ID']}/raw")
    assert raw.headers["content-type"].startswith("message/rfc822") and b"Subject: hi" in raw.content


@pytest.mark.parametrize(
    "localpart,state,code", [("bob", MsgState.DELIVERED, 250), ("queuepermerror", MsgState.FAILED, 550)]
)
async def test_localserve_simulation(stack_factory, localpart: str, state: MsgState, code: int) -> None:
    stack = await stack_factory(default_transport="localserve")
    resp = await stack.send_ok(text_msg(f"{localpart}@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == state
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert body["Results"][-1]["Code"] == code
    assert stack.sink.messages() == []


async def test_localserve_temporary_error_retries(stack_factory) -> None:
    stack = await stack_factory(default_transport="localserve", max_attempts=2)
    resp = await stack.send_ok(text_msg("queuetemperror@example.com", "x-timeout@example.com"))
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    await stack.finished(ids[0])
    a = (await stack.admin("GET", f"/queue/{ids[0]}")).json()
    b = (await stack.admin("GET", f"/queue/{ids[1]}")).json()
    assert [r["Code"] for r in a["Results"]] == [451, 451]
    assert [r["Code"] for r in b["Results"]] == [0, 0] and "timeout" in b["Results"][0]["Error"]
