"""Stored DSNs and their queueing (spec 03 §1.7, DESIGN §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from store.db import Conn, Pool
from store.queue import NewMsg, insert_submission


async def store_and_queue(
    conn: Conn,
    *,
    account: str,
    msg_id: int,
    kind: str,
    sender: str,
    recipient: str,
    data: bytes,
    now: datetime,
    prefix: bytes = b"",
    delivery: NewMsg | None,
) -> int | None:
    """Store the DSN and queue it (when `delivery` says to whom) with `prefix` (its DKIM signatures) sent
    before it; the new BaseID, or None if nothing new.

    A DSN that exists already for (msg_id, kind) is left alone: retries never queue a second one.
    """
    cur = await conn.execute(
        "INSERT INTO dsns (account, msg_id, kind, sender, recipient, data) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (msg_id, kind) DO NOTHING RETURNING id",
        (account, msg_id, kind, sender, recipient, data),
    )
    row = await cur.fetchone()
    if row is None or delivery is None:
        return None
    base_id, _ = await insert_submission(conn, account, data, now, [delivery], prefix)
    await conn.execute("UPDATE dsns SET queue_base_id = %s WHERE id = %s", (base_id, row["id"]))
    return base_id


async def list_dsns(pool: Pool, account: str = "", limit: int = 100) -> list[dict[str, Any]]:
    """Recent DSNs, newest first, optionally of one account."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, created, account, msg_id, kind, sender, recipient, queue_base_id FROM dsns"
            " WHERE (%s = '' OR account = %s) ORDER BY id DESC LIMIT %s",
            (account, account, limit),
        )
        return list(await cur.fetchall())


async def raw_dsn(pool: Pool, dsn_id: int) -> bytes | None:
    """The DSN message itself."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT data FROM dsns WHERE id = %s", (dsn_id,))
        row = await cur.fetchone()
        return bytes(row["data"]) if row else None
