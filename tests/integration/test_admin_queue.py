"""Admin listing, filters, sort and keyset paging of queued and retired messages, and hold rules
(spec 01 scenarios 1, 6, 37, 38, 41–44)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.service import RPCError

from domain.config import Config
from domain.contracts import MsgState, retention_schedule_id
from store import idempotency
from store import queue as q
from tests.conftest import SENDER, Stack
from worker.schedules import ensure_retention_schedule


async def insert(stack: Stack, n: int, *, queued: datetime, next_attempt: datetime) -> list[int]:
    """Queue rows directly (no workflow): the listing reads PostgreSQL only."""
    msgs = [
        q.NewMsg(
            "alice",
            "example.org",
            "example.org",
            "rcpt",
            "example.com",
            "example.com",
            next_attempt,
            10,
            "<m>",
            "s",
        )
        for _ in range(n)
    ]
    async with stack.pool.connection() as conn, conn.transaction():
        _, ids = await q.insert_submission(conn, "alice", b"Subject: s\r\n\r\nx\r\n", queued, msgs)
    return ids


async def ids_of(stack: Stack, path: str = "/queue", **params: str) -> list[int]:
    r = await stack.admin("GET", path, params=params)
    assert r.status_code == 200, r.text
    return [m["ID"] for m in r.json()["Messages"]]


async def test_01_06_filters_on_every_field(stack_factory: Any) -> None:
    stack = await stack_factory(worker=False)
    assert await ids_of(stack) == []
    now = datetime.now(UTC)
    [one] = await insert(stack, 1, queued=now, next_attempt=now)
    cases = [
        ({}, [one]),
        ({"account": "alice"}, [one]),
        ({"account": "bogus"}, []),
        ({"ids": "1"}, []),
        ({"from": "alice@"}, [one]),
        ({"from": "bogus@"}, []),
        ({"to": "rcpt@"}, [one]),
        ({"hold": "true"}, []),
        ({"hold": "false"}, [one]),
        ({"submitted": "<now"}, [one]),
        ({"submitted": ">now"}, []),
        ({"nextattempt": "<1m"}, [one]),
        ({"nextattempt": ">1m"}, []),
        ({"transport": ""}, [one]),
        ({"transport": "bogus"}, []),
        # Both From and To: either may match (mox's OR, spec 01 §5.1).
        ({"from": "bogus@", "to": "rcpt@"}, [one]),
    ]
    for params, want in cases:
        assert await ids_of(stack, **params) == want, params
    assert (await stack.admin("GET", "/queue/count")).json() == {"Count": 1}
    bad = await stack.admin("GET", "/queue", params={"nextattempt": "1m"})
    assert bad.status_code == 400 and "must start with" in bad.json()["Message"]


async def test_41_42_43_sort_filter_and_keyset_pages(stack_factory: Any) -> None:
    stack = await stack_factory(worker=False)
    now = datetime.now(UTC).replace(microsecond=0)
    five = await insert(stack, 5, queued=now, next_attempt=now)
    [six] = await insert(stack, 1, queued=now - timedelta(seconds=1), next_attempt=now + timedelta(minutes=1))
    everything = [*five, six]
    assert await ids_of(stack, sort="nextattempt", asc="true") == everything
    assert await ids_of(stack) == list(reversed(everything))
    assert await ids_of(stack, sort="queued") == [*reversed(five), six]
    got = await ids_of(
        stack,
        max="2",
        ids=str(six),
        account="alice",
        **{"from": SENDER},
        to="rcpt@example.com",
        hold="false",
        submitted="<1s",
        nextattempt=">1s",
    )
    assert got == [six]
    for sort in ("nextattempt", "queued"):
        for asc in ("true", "false"):
            want = await ids_of(stack, sort=sort, asc=asc)
            paged: list[int] = []
            last: dict[str, str] = {}
            while True:
                r = await stack.admin("GET", "/queue", params={"sort": sort, "asc": asc, "max": "1", **last})
                page = r.json()["Messages"]
                if not page:
                    break
                paged.append(page[0]["ID"])
                field = "NextAttempt" if sort == "nextattempt" else "Queued"
                last = {"lastid": str(page[0]["ID"]), "last": page[0][field]}
            assert paged == want, (sort, asc)


async def test_44_retired_listing_filter_and_pages(stack_factory: Any) -> None:
    stack = await stack_factory(worker=False)
    now = datetime.now(UTC)
    ids = await insert(stack, 3, queued=now, next_attempt=now)
    # A minute apart, so the "last activity more than a minute from now" filter below picks the last one
    # only however long the test takes to get there.
    for i, msg_id in enumerate(ids):
        await q.retire(
            stack.pool, {msg_id: None}, "delivered", {"alice": timedelta(hours=1)}, now + timedelta(minutes=i)
        )
    assert await ids_of(stack, "/retired") == list(reversed(ids))
    paged: list[int] = []
    last: dict[str, str] = {}
    while True:
        page = (await stack.admin("GET", "/retired", params={"max": "1", **last})).json()["Messages"]
        if not page:
            break
        paged.append(page[0]["ID"])
        last = {"lastid": str(page[0]["ID"]), "last": page[0]["LastActivity"]}
    assert paged == list(reversed(ids))
    one = await ids_of(
        stack,
        "/retired",
        ids=str(ids[2]),
        account="alice",
        **{"from": SENDER},
        to="rcpt@example.com",
        submitted="<1s",
        lastactivity=">1m",
        success="true",
    )
    assert one == [ids[2]]
    assert await ids_of(stack, "/retired", success="false") == []
    assert (await stack.admin("GET", f"/retired/{ids[0]}")).json()["Success"] is True
    assert (await stack.admin("GET", "/retired/1")).status_code == 404


async def test_37_38_hold_rules_hold_new_mail_and_removing_them_releases_nothing(stack: Stack) -> None:
    r = await stack.admin("POST", "/holdrules", json={"Account": "alice"})
    assert r.status_code == 200 and r.json()["Affected"] == 0
    mine = r.json()["HoldRule"]
    everything = (await stack.admin("POST", "/holdrules", json={})).json()["HoldRule"]
    rules = (await stack.admin("GET", "/holdrules")).json()["HoldRules"]
    assert [x["ID"] for x in rules] == [mine["ID"], everything["ID"]]
    resp = await stack.send_ok({"To": [{"Address": "a@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await asyncio.sleep(0.3)
    assert stack.sink.delivered_to() == []
    [row] = (await stack.admin("GET", "/queue")).json()["Messages"]
    assert row["Hold"] is True
    for rule in (mine, everything):
        assert (await stack.admin("DELETE", f"/holdrules/{rule['ID']}")).status_code == 204
    assert (await stack.admin("DELETE", f"/holdrules/{mine['ID']}")).status_code == 404
    # Removing the rules releases nothing.
    await asyncio.sleep(0.2)
    assert (await stack.admin("GET", "/queue", params={"hold": "true"})).json()["Messages"] != []
    assert (await stack.admin("POST", "/queue/release", json={"Filter": {}})).json() == {"Affected": 1}
    assert (await stack.finished(msg_id)).msgs[0].state == MsgState.DELIVERED
    # Without rules a new message goes at once.
    resp = await stack.send_ok({"To": [{"Address": "b@example.com"}], "Text": "x"})
    assert (await stack.finished(resp["Submissions"][0]["QueueMsgID"])).msgs[0].state == MsgState.DELIVERED


async def test_new_rule_holds_matching_queued_mail_by_all_its_fields(stack: Stack) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    resp = await stack.send_ok(
        {
            "To": [{"Address": "a@example.com"}, {"Address": "b@other.example"}],
            "Text": "x",
            "FutureRelease": tomorrow,
        }
    )
    a, b = (s["QueueMsgID"] for s in resp["Submissions"])
    # Existing messages: every field the rule sets must match (AND).
    r = await stack.admin("POST", "/holdrules", json={"Account": "alice", "RecipientDomain": "example.com"})
    assert r.json()["Affected"] == 1 and r.json()["HoldRule"]["RecipientDomainStr"] == "example.com"
    held = (await stack.admin("GET", "/queue", params={"hold": "true"})).json()["Messages"]
    assert [m["ID"] for m in held] == [a]
    # The workflow holds it too, not only the row (the rule reaches it by a signal).
    async with asyncio.timeout(60):
        while (await stack.admin("GET", f"/queue/{a}")).json().get("State") != "held":
            await asyncio.sleep(0.05)
    assert (await stack.admin("GET", f"/queue/{b}")).json()["State"] == "queued"
    bad = await stack.admin("POST", "/holdrules", json={"SenderDomain": "not a domain!"})
    assert bad.status_code == 400 and bad.json()["Code"] == "badDomain"


async def test_schedule_follows_the_configured_interval_and_zero_removes_it(stack: Stack) -> None:
    def with_interval(every: timedelta) -> Config:
        worker = stack.config.worker.model_copy(update={"retention_interval": every})
        return stack.config.model_copy(update={"worker": worker})

    handle = stack.client.get_schedule_handle(retention_schedule_id(stack.config.temporal.task_queue))
    assert await ensure_retention_schedule(stack.client, with_interval(timedelta(hours=1)))
    await handle.pause(note="paused by an operator")
    # A worker started with a new interval changes the schedule's, and the operator's pause stays.
    assert not await ensure_retention_schedule(stack.client, with_interval(timedelta(minutes=20)))
    described = await handle.describe()
    assert [i.every for i in described.schedule.spec.intervals] == [timedelta(minutes=20)]
    assert described.schedule.state.paused
    # "0s" means no schedule: an existing one is removed.
    assert not await ensure_retention_schedule(stack.client, with_interval(timedelta(0)))
    with pytest.raises(RPCError):
        await handle.describe()


async def test_36_retention_schedule_deletes_retired_records_past_keep_until(stack: Stack) -> None:
    now = datetime.now(UTC)
    ids = await insert(stack, 2, queued=now, next_attempt=now)
    await q.retire(stack.pool, {ids[0]: None}, "delivered", {"alice": timedelta(microseconds=1)}, now)
    await q.retire(stack.pool, {ids[1]: None}, "delivered", {"alice": timedelta(hours=1)}, now)
    # Webapi idempotency keys matter for a day.
    async with stack.pool.connection() as conn:
        for key, created in (("stale-key", now - timedelta(hours=25)), ("fresh-key", now)):
            await idempotency.record(conn, "alice", key, "h", {}, created, created - timedelta(hours=24))
    config = stack.config.model_copy(
        update={"worker": stack.config.worker.model_copy(update={"retention_interval": timedelta(hours=1)})}
    )
    assert await ensure_retention_schedule(stack.client, config)
    # Created once: a second worker starting finds it.
    assert not await ensure_retention_schedule(stack.client, config)
    handle = stack.client.get_schedule_handle(retention_schedule_id(config.temporal.task_queue))
    assert [i.every for i in (await handle.describe()).schedule.spec.intervals] == [timedelta(hours=1)]

    async def keys() -> list[str]:
        async with stack.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key FROM idempotency_keys WHERE account = 'alice' AND key LIKE '%%-key' ORDER BY key"
            )
            return [r["key"] for r in await cur.fetchall()]

    try:
        # The first run comes at once, on this stack's worker; it deletes messages first, keys last.
        async with asyncio.timeout(60):
            while await q.get_retired(stack.pool, ids[0]) is not None or "stale-key" in await keys():
                await asyncio.sleep(0.1)
        assert await q.get_retired(stack.pool, ids[1]) is not None
        assert await keys() == ["fresh-key"]
    finally:
        await handle.delete()
