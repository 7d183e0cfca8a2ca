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
