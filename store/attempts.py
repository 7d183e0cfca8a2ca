"""Recorded outcomes of delivery attempts, per message and attempt number, for retries of the same attempt.

The outcome of an attempt is written in the transaction that records everything else it decided (queue
rows retired or updated, DSNs, suppressions, webhooks). A retried deliver activity reads it back and
returns it instead of sending again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from store.db import Conn, Pool


async def recorded(conn: Conn, attempts: Mapping[int, int]) -> dict[int, dict[str, Any]]:
    """The outcomes already recorded for these (message id -> attempt number) pairs, by message id."""
    if not attempts:
        return {}
    cur = await conn.execute(
        """SELECT o.msg_id, o.outcome FROM attempt_outcomes o
           JOIN unnest(%s::bigint[], %s::int[]) AS a(msg_id, attempt)
             ON o.msg_id = a.msg_id AND o.attempt = a.attempt""",
        (list(attempts), list(attempts.values())),
    )
    return {r["msg_id"]: r["outcome"] for r in await cur.fetchall()}


async def record(conn: Conn, outcomes: Mapping[int, tuple[int, dict[str, Any]]], now: datetime) -> None:
    """Store (attempt number, outcome) per message id in the caller's transaction.

    Earlier attempts' outcomes of the same messages go: only a retry of the latest attempt can still run.
    """
    if not outcomes:
        return
    ids = list(outcomes)
    if any(attempt > 1 for attempt, _ in outcomes.values()):
        await conn.execute(
            """DELETE FROM attempt_outcomes o USING unnest(%s::bigint[], %s::int[]) AS a(msg_id, attempt)
               WHERE o.msg_id = a.msg_id AND o.attempt < a.attempt""",
            (ids, [a for a, _ in outcomes.values()]),
        )
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO attempt_outcomes (msg_id, attempt, outcome, recorded) VALUES (%s, %s, %s, %s)
               ON CONFLICT (msg_id, attempt) DO NOTHING""",
            [(i, attempt, Jsonb(out), now) for i, (attempt, out) in outcomes.items()],
        )


async def cleanup(pool: Pool, before: datetime) -> int:
    """Delete outcomes recorded before `before`; returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM attempt_outcomes WHERE recorded < %s", (before,))
        return cur.rowcount
