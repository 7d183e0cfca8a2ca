"""The MTA-STS policy cache in PostgreSQL (spec 02 §2.3)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from store.db import Pool


async def get(pool: Pool, domain: str, now: datetime) -> dict[str, Any] | None:
    """The cached row for domain if still valid, marking it used."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE mtasts_policies SET last_use = %s WHERE domain = %s AND valid_until > %s RETURNING *",
            (now, domain, now),
        )
        return await cur.fetchone()


async def put(
    pool: Pool,
    domain: str,
    now: datetime,
    *,
    record_id: str,
    mode: str,
    mx: list[str],
    max_age: int,
    policy_text: str,
    backoff: bool = False,
) -> None:
    """Store (or replace) the policy of domain, valid for max_age seconds."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO mtasts_policies (domain, valid_until, last_update, last_use, backoff, record_id,"
            " mode, mx, max_age, policy_text) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (domain) DO UPDATE SET valid_until = EXCLUDED.valid_until,"
            " last_update = EXCLUDED.last_update, last_use = EXCLUDED.last_use, backoff = EXCLUDED.backoff,"
            " record_id = EXCLUDED.record_id, mode = EXCLUDED.mode, mx = EXCLUDED.mx,"
            " max_age = EXCLUDED.max_age, policy_text = EXCLUDED.policy_text",
            (
                domain,
                now + timedelta(seconds=max_age),
                now,
                now,
                backoff,
                record_id,
                mode,
                mx,
                max_age,
                policy_text,
            ),
        )


# --- The background refresher (spec 02 §2.3 item 6). Its writes apply only while the row's last_update is
# the one it read: a lookup that replaced the policy meanwhile wins. None of them touches last_use, which
# only lookups bump, or unused rows would never get old enough to delete.


async def delete_unused(pool: Pool, used_before: datetime) -> int:
    """Delete the rows last used before used_before; returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM mtasts_policies WHERE last_use < %s", (used_before,))
        return cur.rowcount


async def stale_domains(pool: Pool, updated_before: datetime) -> list[str]:
    """The domains whose row was last updated before updated_before."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT domain FROM mtasts_policies WHERE last_update < %s ORDER BY domain", (updated_before,)
        )
        return [r["domain"] for r in await cur.fetchall()]


async def stale(pool: Pool, domain: str, updated_before: datetime) -> dict[str, Any] | None:
    """The row of domain if it was still last updated before updated_before, without marking it used."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT * FROM mtasts_policies WHERE domain = %s AND last_update < %s", (domain, updated_before)
        )
        return await cur.fetchone()


async def extend(pool: Pool, domain: str, seen_update: datetime, now: datetime) -> bool:
    """Keep the policy of domain valid for another max_age from now; False when the row changed."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE mtasts_policies SET last_update = %s, valid_until = %s + make_interval(secs => max_age)"
            " WHERE domain = %s AND last_update = %s",
            (now, now, domain, seen_update),
        )
        return cur.rowcount == 1


async def replace(
    pool: Pool,
    domain: str,
    seen_update: datetime,
    now: datetime,
    *,
    record_id: str,
    mode: str,
    mx: list[str],
    max_age: int,
    policy_text: str,
) -> bool:
    """Store a refetched policy of domain (clearing back-off); False when the row changed."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE mtasts_policies SET valid_until = %s, last_update = %s, backoff = false, record_id = %s,"
            " mode = %s, mx = %s, max_age = %s, policy_text = %s WHERE domain = %s AND last_update = %s",
            (
                now + timedelta(seconds=max_age),
                now,
                record_id,
                mode,
                mx,
                max_age,
                policy_text,
                domain,
                seen_update,
            ),
        )
        return cur.rowcount == 1


async def delete(pool: Pool, domain: str, seen_update: datetime) -> bool:
    """Delete the row of domain; False when it changed."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM mtasts_policies WHERE domain = %s AND last_update = %s", (domain, seen_update)
        )
        return cur.rowcount == 1
