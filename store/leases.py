"""Delivery leases in PostgreSQL: a few deliveries per recipient domain (one unless configured) and a global
cap, across workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from store.db import Conn, Pool

# Serialises lease decisions across processes; any constant shared by every process works.
_LEASE_LOCK = 7_314_161


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
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASE_LOCK,))
        cur = await conn.execute(
            "SELECT slot, holder, expires, last_start FROM delivery_leases WHERE domain = %s", (domain,)
        )
        rows = await cur.fetchall()
        own = [r["slot"] for r in rows if r["holder"] == holder]
        busy = {r["slot"] for r in rows if r["expires"] > now and r["holder"] != holder}
        if not own and len(busy) >= per_domain:
            await _wait(conn, workflow_id, domain, now)
            return Grant(False)
        cur = await conn.execute(
            "SELECT count(*) AS n FROM delivery_leases WHERE expires > %s AND holder <> %s", (now, holder)
        )
        active = await cur.fetchone()
        if active is not None and active["n"] >= cap:
            # Woken by whichever delivery finishes first.
            await _wait(conn, workflow_id, "", now)
            return Grant(False, global_cap=True)
        if not own and rows and min_interval > timedelta(0):
            allowed = max(r["last_start"] for r in rows) + min_interval
            if allowed > now:
                return Grant(False, allowed)
        # The lowest free slot, so a domain's rows stay few whatever its history.
        slot = own[0] if own else min(set(range(per_domain + len(busy))) - busy)
        await conn.execute(
            """INSERT INTO delivery_leases (domain, slot, holder, expires, last_start)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (domain, slot) DO UPDATE SET holder = excluded.holder, expires = excluded.expires,
               last_start = excluded.last_start""",
            (domain, slot, holder, now + ttl, now),
        )
        await conn.execute(
            "DELETE FROM delivery_waiters WHERE workflow_id = %s AND domain IN (%s, '')",
            (workflow_id, domain),
        )
        if keep_global_wait:
            # Other groups of the workflow still wait for a global slot: it queues again, at the back.
            await _wait(conn, workflow_id, "", now)
        return Grant(True)


async def _wait(conn: Conn, workflow_id: str, domain: str, now: datetime) -> None:
    # The first wait keeps its place in line (ON CONFLICT leaves `since` alone).
    await conn.execute(
        "INSERT INTO delivery_waiters (workflow_id, domain, since) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (workflow_id, domain, now),
    )


async def release(pool: Pool, domain: str, holder: str, now: datetime) -> dict[str, list[str]]:
    """End the holder's lease; returns the workflows to wake, each with what it waited for: the domain's
    oldest waiter (the domain) and the oldest waiter for a global slot ("")."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASE_LOCK,))
        cur = await conn.execute(
            "UPDATE delivery_leases SET expires = %s WHERE domain = %s AND holder = %s RETURNING domain",
            (now, domain, holder),
        )
        if await cur.fetchone() is None:
            return {}
        woken: dict[str, list[str]] = {}
        for d in (domain, ""):
            cur = await conn.execute(
                """DELETE FROM delivery_waiters WHERE (workflow_id, domain) IN
                       (SELECT workflow_id, domain FROM delivery_waiters
                        WHERE domain = %s ORDER BY since LIMIT 1)
                   RETURNING workflow_id""",
                (d,),
            )
            for r in await cur.fetchall():
                woken.setdefault(r["workflow_id"], []).append(d)
        return woken
