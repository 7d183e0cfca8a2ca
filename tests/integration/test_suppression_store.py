"""The suppression store and retirement cleanup against real PostgreSQL (spec 03 scenarios 16, 18–27, 40)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from domain.addresses import parse_address
from domain.suppression import base_address, original_address
from store import db, hooks, suppressions
from store import queue as q
from store.db import Pool


@pytest.fixture
async def pool(database: str) -> AsyncIterator[Pool]:
    p = await db.open_pool(database, 1, 2)
    yield p
    await p.close()


def keys(address: str) -> tuple[str, str]:
    addr = parse_address(address)
    return base_address(addr), original_address(addr)


async def add(pool: Pool, account: str, address: str) -> None:
    base, original = keys(address)
    await suppressions.add(pool, account, base, original, manual=True, reason="tests")


async def test_18_19_empty_store_lists_nothing_and_finds_nothing(pool: Pool) -> None:
    assert await suppressions.list_account(pool, "nobody") == []
    assert await suppressions.list_all(pool) == []
    assert not await suppressions.present(pool, "mjl", keys("mjl2@mox.example")[0])
    assert not await suppressions.present(pool, "no-such-account", keys("mjl2@mox.example")[0])


async def test_20_21_duplicates_and_missing_account_are_refused(pool: Pool) -> None:
    await add(pool, "mjl", "mjl2@mox.example")
    with pytest.raises(suppressions.DuplicateSuppression):
        await add(pool, "mjl", "mjl2@mox.example")
    # Another spelling of the same base address is the same entry.
    with pytest.raises(suppressions.DuplicateSuppression):
        await add(pool, "mjl", "M.j.l2+catchall@Mox.example")
    with pytest.raises(ValueError):
        await add(pool, "", "other@mox.example")


async def test_22_23_24_listing_lookup_and_isolation(pool: Pool) -> None:
    await add(pool, "mjl", "mjl2@mox.example")
    await add(pool, "other", "someone@mox.example")
    assert len(await suppressions.list_all(pool)) == 2
    [entry] = await suppressions.list_account(pool, "mjl")
    assert entry["base_address"] == "mjl2@mox.example"
    for variant in ("mjl2@mox.example", "M.j.l2+catchall@Mox.example"):
        assert await suppressions.present(pool, "mjl", keys(variant)[0])
    # One account's entries are invisible to another's lookup.
    assert not await suppressions.present(pool, "other", keys("mjl2@mox.example")[0])


async def test_25_26_27_remove_once_by_any_variant_even_for_unconfigured_accounts(pool: Pool) -> None:
    await add(pool, "mjl", "mjl2@mox.example")
    await suppressions.remove(pool, "mjl", keys("M.j.l2+catchall@Mox.example")[0])
    with pytest.raises(suppressions.AbsentSuppression):
        await suppressions.remove(pool, "mjl", keys("mjl2@mox.example")[0])
    assert not await suppressions.present(pool, "mjl", keys("mjl2@mox.example")[0])
    # Account names need not be configured: the store does not know the configuration.
    await add(pool, "not-configured", "x@mox.example")
    await suppressions.remove(pool, "not-configured", keys("x@mox.example")[0])


async def test_16_40_cleanup_removes_retired_messages_and_hooks_past_keep_until(pool: Pool) -> None:
    now = datetime.now(UTC)
    async with pool.connection() as conn, conn.transaction():
        _, ids = await q.insert_submission(
            conn,
            "mjl",
            b"Subject: x\r\n\r\nx\r\n",
            now,
            [
                q.NewMsg(
                    "mjl",
                    "mox.example",
                    "mox.example",
                    f"r{i}",
                    "example.com",
                    "example.com",
                    now,
                    10,
                    "<m>",
                    "x",
                )
                for i in range(2)
            ],
        )
        hook = hooks.NewHook(
            account="mjl", url="http://127.0.0.1:1/", auth_header="", payload="{}", outgoing_event="delivered"
        )
        queued = await hooks.insert(conn, hook, now, timedelta(hours=1))
    # A keep period of a nanosecond (spec scenarios use 1ns): gone at the next cleanup.
    await q.retire(pool, {ids[0]: None}, "delivered", {"mjl": timedelta(microseconds=1)}, now)
    await q.retire(pool, {ids[1]: None}, "delivered", {"mjl": timedelta(hours=1)}, now)
    await hooks.cancel(pool, hooks.HookFilter(ids=(queued.id,)), now, lambda _: timedelta(microseconds=1))
    assert (
        await q.get_retired(pool, ids[0]) is not None and await hooks.get_retired(pool, queued.id) is not None
    )
    later = now + timedelta(seconds=1)
    assert await q.cleanup_retired(pool, later) == 1
    assert await hooks.cleanup_retired(pool, later) == 1
    assert await q.get_retired(pool, ids[0]) is None and await hooks.get_retired(pool, queued.id) is None
    assert await q.get_retired(pool, ids[1]) is not None
