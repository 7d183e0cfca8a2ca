"""Delivery leases in PostgreSQL: a few deliveries per recipient domain (one unless configured) and a global
cap, across workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from store.db import Pool

# Lease decisions are serialised across processes by advisory lock 7314161, taken inside the functions.


@dataclass(frozen=True)
class Grant:
    """The answer to a lease request: granted, or when to ask again (None: when woken)."""

    granted: bool
    retry_at: datetime | None = None
    # Refused because the global cap is reached (not the domain's own slots or rate).
    global_cap: bool = False


async def acquire(
    pool: Pool,
    domain: str,
    holder: str,
    workflow_id: str,
    now: datetime,
    *,
    cap: int,
    ttl: timedelta,
    per_domain: int = 1,
    min_interval: timedelta = timedelta(0),
    keep_global_wait: bool = False,
) -> Grant:
    """Take one of the domain's `per_domain` delivery slots if one is free, fewer than `cap` deliveries run
    anywhere and the domain's rate limit allows a start now. The same holder (a retried attempt) may take
    its own slot again. A refused caller is remembered as a waiter, to be woken when a slot frees.

    A workflow waits in line for a global slot once, however many of its groups wait, and each freed slot
    wakes one group. With `keep_global_wait` (other groups of the caller's workflow still wait) a granted
    caller lines up again, at the back, for the next group."""
    # One statement (migration 016): the decision runs inside PostgreSQL under the lease lock.
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT * FROM tempost_lease_acquire(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (domain, holder, workflow_id, now, cap, ttl, per_domain, min_interval, keep_global_wait),
        )
        row = await cur.fetchone()
    assert row is not None
    return Grant(row["granted"], row["retry_at"], row["global_cap"])


async def release(pool: Pool, domain: str, holder: str, now: datetime) -> dict[str, list[str]]:
    """End the holder's lease; returns the workflows to wake, each with what it waited for: the domain's
    oldest waiter (the domain) and the oldest waiter for a global slot ("")."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM tempost_lease_release(%s, %s, %s)", (domain, holder, now))
        rows = await cur.fetchall()
    woken: dict[str, list[str]] = {}
    for r in rows:
        woken.setdefault(r["workflow_id"], []).append(r["domain"])
    return woken
