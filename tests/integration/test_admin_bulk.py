"""Bulk admin operations over a filter, through the API, the workflow signals and the worker (spec 01 §5)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.contracts import DeliveryStatus, MsgState
from tests.conftest import Stack


async def queue_later(stack: Stack, *rcpts: str) -> list[int]:
    """Queue one submission per recipient, released tomorrow, so nothing is attempted on its own."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    ids = []
    for rcpt in rcpts:
        resp = await stack.send_ok({"To": [{"Address": rcpt}], "Text": "x", "FutureRelease": tomorrow})
        ids.append(resp["Submissions"][0]["QueueMsgID"])
    return ids


async def post(stack: Stack, op: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await stack.admin("POST", f"/queue/{op}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def listed(stack: Stack, **params: str) -> list[dict[str, Any]]:
    r = await stack.admin("GET", "/queue", params={"asc": "true", "sort": "queued", **params})
    assert r.status_code == 200, r.text
    return r.json()["Messages"]


async def test_hold_release_and_kick_over_a_filter(stack: Stack) -> None:
    a, b, c = await queue_later(stack, "a@example.com", "b@example.com", "c@other.example")
    assert await post(stack, "hold", {"Filter": {"To": "@example.com"}}) == {"Affected": 2}
    assert [m["ID"] for m in await listed(stack, hold="true")] == [a, b]
    # Held messages are not delivered even when due.
    assert await post(stack, "kick", {"Filter": {}}) == {"Affected": 3}
    await stack.finished(c)
    await asyncio.sleep(0.3)
    assert stack.sink.delivered_to() == ["c@other.example"]
    assert await post(stack, "release", {"Filter": {"IDs": [a, b]}}) == {"Affected": 2}
    for i in (a, b):
        assert (await stack.finished(i)).msgs[0].state == MsgState.DELIVERED
    assert sorted(stack.sink.delivered_to()) == ["a@example.com", "b@example.com", "c@other.example"]


async def test_10_nextattempt_set_and_add(stack: Stack) -> None:
    a, b = await queue_later(stack, "a@example.com", "b@example.com")
    soon = datetime.now(UTC) + timedelta(hours=2)
    assert await post(stack, "nextattempt", {"Filter": {"IDs": [a]}, "Set": soon.isoformat()}) == {
        "Affected": 1
    }
    [row] = await listed(stack, ids=str(a))
    assert abs(datetime.fromisoformat(row["NextAttempt"]) - soon) < timedelta(seconds=1)
    # A negative duration makes both due: the workflows' timers moved with the rows.
    assert await post(stack, "nextattempt", {"Filter": {}, "Add": "-48h"}) == {"Affected": 2}
    for i in (a, b):
        assert (await stack.finished(i)).msgs[0].state == MsgState.DELIVERED


async def test_04_05_35_fail_and_drop_over_a_filter_retire_with_dsn_only_for_fail(stack: Stack) -> None:
    a, b, c = await queue_later(stack, "a@example.com", "b@example.com", "c@example.com")
    assert await post(stack, "fail", {"Filter": {"IDs": [a, b]}}) == {"Affected": 2}
    assert await post(stack, "drop", {"Filter": {"To": "c@"}}) == {"Affected": 1}
    states = {i: (await stack.finished(i)).msgs[0].state for i in (a, b, c)}
    assert states == {a: MsgState.FAILED, b: MsgState.FAILED, c: MsgState.CANCELED}
    dsns = (await stack.admin("GET", "/dsns")).json()["DSNs"]
    assert sorted(d["QueueMsgID"] for d in dsns) == [a, b]
    for i in (a, b, c):
        retired = (await stack.admin("GET", f"/queue/{i}")).json()
        assert retired["Results"][-1]["Error"] == "delivery canceled by admin"
    # Only the DSNs to the sender may still be queued.
    assert await listed(stack, to="@example.com") == []


async def test_03_18_transport_and_requiretls_change_rows_for_the_next_attempt(stack: Stack) -> None:
    a, b = await queue_later(stack, "a@example.com", "b@example.com")
    assert await post(stack, "transport", {"Filter": {"IDs": [a]}, "Transport": "localserve"}) == {
        "Affected": 1
    }
    assert await post(stack, "requiretls", {"Filter": {"IDs": [b]}, "RequireTLS": False}) == {"Affected": 1}
    rows = {m["ID"]: m for m in await listed(stack)}
    assert rows[a]["Transport"] == "localserve" and rows[b]["RequireTLS"] is False
    assert (await listed(stack, transport="localserve"))[0]["ID"] == a
    await post(stack, "kick", {"Filter": {}})
    for i in (a, b):
        assert (await stack.finished(i)).msgs[0].state == MsgState.DELIVERED
    # The localserve message was simulated: only b reached the SMTP sink.
    assert stack.sink.delivered_to() == ["b@example.com"]


async def test_max_caps_in_id_order_and_a_bad_filter_changes_nothing(stack: Stack) -> None:
    a, b, c = await queue_later(stack, "a@example.com", "b@example.com", "c@example.com")
    assert await post(stack, "hold", {"Filter": {"Max": 2}}) == {"Affected": 2}
    assert [m["ID"] for m in await listed(stack, hold="true")] == [a, b]
    bad = await stack.admin("POST", "/queue/release", json={"Filter": {"Submitted": "1h"}})
    assert bad.status_code == 400 and bad.json()["Code"] == "badFilter"
    assert [m["ID"] for m in await listed(stack, hold="true")] == [a, b]
    bad = await stack.admin("POST", "/queue/nextattempt", json={"Filter": {}})
    assert bad.status_code == 400
    assert c not in [m["ID"] for m in await listed(stack, hold="true")]


# --- Rows and workflows agree (issue 11 item 11) ---


async def test_a_bulk_hold_temporal_refused_reaches_the_workflow_through_the_sweeper(
    stack: Stack, monkeypatch: Any
) -> None:
    # The API writes the rows, then Temporal refuses the signals: the answer is 503, the rows already say
    # held. The change must still reach the workflow, or a message shown as held would be delivered.
    import httpx
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from api.app import create_app
    from store import signals
    from tests.conftest import ADMIN_TOKEN
    from worker.sweeper import sweep_signals

    [msg_id] = await queue_later(stack, "a@example.com")
    dead = await Client.connect("127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter)
    app = create_app(stack.config, dead, stack.pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post(
            "/admin/v0/queue/hold",
            json={"Filter": {"IDs": [msg_id]}},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
    assert r.status_code == 503, r.text
    assert r.json()["Code"] == "unavailable"
    assert [m["ID"] for m in await listed(stack, hold="true")] == [msg_id]
    status = (await stack.handle(msg_id).query("status", result_type=DeliveryStatus)).msgs[0]
    assert status.hold is False

    # The workers' sweeper sends what is pending (here at once instead of after half a minute).
    assert await sweep_signals(stack.client, stack.pool, timedelta(0)) == 1
    assert await signals.older_than(stack.pool, timedelta(0), datetime.now(UTC)) == []
    async with asyncio.timeout(60):
        while not (await stack.handle(msg_id).query("status", result_type=DeliveryStatus)).msgs[0].hold:
            await asyncio.sleep(0.05)
    # Held: a kick does not send it.
    assert await post(stack, "kick", {"Filter": {"IDs": [msg_id]}}) == {"Affected": 1}
    await asyncio.sleep(0.5)
    assert stack.sink.delivered_to() == []


async def test_a_bulk_signal_sent_twice_is_applied_once(stack: Stack) -> None:
    # The API can die after a signal landed and before it noted so; the sweeper then sends it again.
    from domain.contracts import BulkOp
    from workflows.client import signal_bulk

    [msg_id] = await queue_later(stack, "a@example.com")
    before = (await stack.handle(msg_id).query("status", result_type=DeliveryStatus)).msgs[0].next_attempt
    change = BulkOp(op="add_next", msg_ids=[msg_id], add_s=3600, op_id=987654)
    assert await signal_bulk(stack.client, [(msg_id, change), (msg_id, change)]) == [True, True]
    async with asyncio.timeout(60):
        while True:
            [row] = await listed(stack, ids=str(msg_id))
            if datetime.fromisoformat(row["NextAttempt"]) != before:
                break
            await asyncio.sleep(0.05)
    after = (await stack.handle(msg_id).query("status", result_type=DeliveryStatus)).msgs[0].next_attempt
    assert before is not None and after == before + timedelta(hours=1)
    # The row shows what the workflow has.
    assert datetime.fromisoformat(row["NextAttempt"]) == after


async def test_hold_and_release_racing_leave_the_row_as_the_workflow_has_it(stack: Stack) -> None:
    # Each update projects the message's state into its row from its own activity; two of them run at
    # once and can land in either order. The row must end on the workflow's last state.
    [msg_id] = await queue_later(stack, "a@example.com")
    for _ in range(15):
        hold, release = await asyncio.gather(
            stack.admin("POST", f"/queue/{msg_id}/hold"), stack.admin("POST", f"/queue/{msg_id}/release")
        )
        assert hold.status_code == 200 and release.status_code == 200
        status = (await stack.handle(msg_id).query("status", result_type=DeliveryStatus)).msgs[0]
        [row] = await listed(stack, ids=str(msg_id))
        assert row["Hold"] == status.hold
