"""Webapi idempotency keys in PostgreSQL: the first response per (account, key) within the window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from store.db import Conn, Pool


@dataclass(frozen=True)
class StoredKey:
    """A key already used: the digest of the request that used it and the response it got."""

    request_hash: str
    response: dict[str, Any]


async def find(pool: Pool, account: str, key: str, since: datetime) -> StoredKey | None:
    """The account's use of a key made at or after `since`, or None."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT request_hash, response FROM idempotency_keys
               WHERE account = %s AND key = %s AND created >= %s""",
            (account, key, since),
        )
        r = await cur.fetchone()
    return StoredKey(r["request_hash"], r["response"]) if r else None


async def record(
    conn: Conn,
    account: str,
    key: str,
    request_hash: str,
    response: dict[str, Any],
    now: datetime,
    since: datetime,
) -> bool:
    """Store a key's response on the caller's transaction; False when another call holds the key.

    A use older than `since` is removed first, so it does not block reuse. A concurrent call with the same
    key blocks here on the primary key until the other transaction ends; if that one committed, this one
    gets False and must roll back what it queued.
    """
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE account = %s AND key = %s AND created < %s", (account, key, since)
    )
    cur = await conn.execute(
        """INSERT INTO idempotency_keys (account, key, request_hash, response, created)
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account, key) DO NOTHING""",
        (account, key, request_hash, Jsonb(response), now),
    )
    return cur.rowcount == 1


async def cleanup(pool: Pool, before: datetime) -> int:
    """Delete key uses made before `before`, which no longer block anything; returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM idempotency_keys WHERE created < %s", (before,))
        return cur.rowcount
