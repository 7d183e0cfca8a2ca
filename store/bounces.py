"""Incoming bounces in PostgreSQL: stored on receipt, matched and marked by the worker."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from store.db import Conn, Pool

Row = dict[str, Any]


async def store(pool: Pool, mail_from: str, rcpt_to: str, data: bytes) -> int:
    """Keep an incoming message until the worker has processed it; returns its id."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO bounces (mail_from, rcpt_to, data) VALUES (%s, %s, %s) RETURNING id",
            (mail_from, rcpt_to, data),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def get(pool: Pool, bounce_id: int) -> Row | None:
    """One stored bounce."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM bounces WHERE id = %s", (bounce_id,))
        return await cur.fetchone()


async def mark(conn: Conn, bounce_id: int, now: datetime, event: str, queue_msg_id: int, detail: str) -> None:
    """Record what the bounce was taken for; the body is no longer needed and is dropped."""
    await conn.execute(
        "UPDATE bounces SET processed = %s, event = %s, queue_msg_id = %s, detail = %s, data = ''::bytea"
        " WHERE id = %s",
        (now, event, queue_msg_id, detail, bounce_id),
    )


async def unprocessed(pool: Pool, older_than: timedelta) -> list[int]:
    """Bounces stored a while ago and never processed (their workflow start was lost)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM bounces WHERE processed IS NULL AND received < now() - %s ORDER BY id LIMIT 1000",
            (older_than,),
        )
        return [r["id"] for r in await cur.fetchall()]


async def retired_by_from_id(conn: Conn, from_id: str) -> Row | None:
    """The retired message sent with this FromID, locked for the update that records the bounce."""
    cur = await conn.execute("SELECT * FROM retired_msgs WHERE from_id = %s FOR UPDATE", (from_id,))
    return await cur.fetchone()


async def queued_with_from_id(conn: Conn, from_id: str) -> bool:
    """Whether a message with this FromID is still in the queue."""
    cur = await conn.execute("SELECT 1 FROM queue_msgs WHERE from_id = %s", (from_id,))
    return await cur.fetchone() is not None


async def record_on_retired(conn: Conn, msg_id: int, now: datetime, result: dict[str, Any]) -> None:
    """Append the bounce's result to the retired message and mark it active now (spec 03 §4.3)."""
    await conn.execute(
        "UPDATE retired_msgs SET last_activity = %s, results = results || %s WHERE id = %s",
        (now, Jsonb([result]), msg_id),
    )


async def cleanup_processed(pool: Pool, before: datetime) -> int:
    """Delete bounces processed before the given time."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM bounces WHERE processed < %s", (before,))
        return cur.rowcount
