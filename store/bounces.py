"""Incoming bounces in PostgreSQL: stored on receipt, matched and marked by the worker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from store.db import Conn, Pool

Row = dict[str, Any]

# Bodies no recipient waits for any more: dropped, while the row stays as long as its recipients' rows.
_DROP_UNNEEDED_BODIES = (
    "UPDATE bounce_messages m SET data = ''::bytea WHERE octet_length(m.data) > 0"
    " AND NOT EXISTS (SELECT 1 FROM bounces b WHERE b.message_id = m.id AND b.processed IS NULL)"
)


async def store(pool: Pool, mail_from: str, rcpt_to: str, data: bytes) -> int:
    """Keep an incoming message to one recipient until the worker has processed it; returns its id."""
    [bounce_id] = await store_message(pool, mail_from, [rcpt_to], data)
    return bounce_id


async def store_message(pool: Pool, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> list[int]:
    """Keep one copy of an incoming message and a bounce per recipient pointing at it; returns their ids,
    in the order of rcpt_tos.

    One transaction: the worker never sees recipients without their message.
    """
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("INSERT INTO bounce_messages (data) VALUES (%s) RETURNING id", (data,))
        message = await cur.fetchone()
        assert message is not None
        cur = await conn.execute(
            "INSERT INTO bounces (mail_from, rcpt_to, data, message_id)"
            " SELECT %s, rcpt, ''::bytea, %s FROM unnest(%s::text[]) WITH ORDINALITY AS r(rcpt, n)"
            " ORDER BY n RETURNING id",
            (mail_from, message["id"], list(rcpt_tos)),
        )
        return [int(r["id"]) for r in await cur.fetchall()]


async def get(pool: Pool, bounce_id: int) -> Row | None:
    """One stored bounce, with the body of its message in `data` (empty once processed)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT b.id, b.received, b.mail_from, b.rcpt_to, b.processed, b.event, b.queue_msg_id,"
            " b.detail, b.message_id, COALESCE(m.data, b.data) AS data"
            " FROM bounces b LEFT JOIN bounce_messages m ON m.id = b.message_id WHERE b.id = %s",
            (bounce_id,),
        )
        return await cur.fetchone()


async def mark(conn: Conn, bounce_id: int, now: datetime, event: str, queue_msg_id: int, detail: str) -> None:
    """Record what the bounce was taken for; the body is dropped once no recipient still needs it."""
    cur = await conn.execute(
        "UPDATE bounces SET processed = %s, event = %s, queue_msg_id = %s, detail = %s, data = ''::bytea"
        " WHERE id = %s RETURNING message_id",
        (now, event, queue_msg_id, detail, bounce_id),
    )
    row = await cur.fetchone()
    if row is not None and row["message_id"] is not None:
        # Recipients of one message processed at the same moment take turns on its row: the check below
        # then runs with a snapshot taken after the others committed, so the last one drops the body.
        await conn.execute("SELECT 1 FROM bounce_messages WHERE id = %s FOR UPDATE", (row["message_id"],))
        await conn.execute(_DROP_UNNEEDED_BODIES + " AND m.id = %s", (row["message_id"],))


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
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("DELETE FROM bounces WHERE processed < %s", (before,))
        await conn.execute(_DROP_UNNEEDED_BODIES)
        await conn.execute(
            "DELETE FROM bounce_messages m"
            " WHERE NOT EXISTS (SELECT 1 FROM bounces b WHERE b.message_id = m.id)"
        )
        return cur.rowcount
