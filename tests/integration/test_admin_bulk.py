"""Bulk admin operations over a filter, through the API, the workflow signals and the worker (spec 01 §5)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.contracts import MsgState
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
