"""Bulk admin operations on their way to the workflows (pending_signals): an outbox.

The API changes the queue rows and records one pending signal per submission in one transaction, signals,
and deletes the signals that landed. Whatever is left (Temporal refused or did not answer, the API died)
is sent again by the workers' sweeper, so a row shown as held always ends with a held workflow.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from domain.contracts import BulkOp
from store.db import Pool
from store.queue import settable_sql


@dataclass(frozen=True)
class PendingSignal:
    """One submission's share of a bulk operation: the signal's argument, with its message ids."""

    id: int
    base_id: int
    op: dict[str, Any]


def bulk_op(p: PendingSignal) -> BulkOp:
    """The signal's argument, marked with its id so that a signal sent twice is applied once."""
    return BulkOp.model_validate({**p.op, "op_id": p.id})


async def change_and_queue(
    pool: Pool,
    ids: Sequence[int],
    op: dict[str, Any],
    now: datetime,
    column: str | None = None,
    value: Any = None,
) -> list[PendingSignal]:
    """Set `column` to `value` on the queued rows among `ids` (none: only look them up) and record the
    signal `op` for each of their submissions, with its message ids, in one transaction."""
    async with pool.connection() as conn, conn.transaction():
        if column is None:
            cur = await conn.execute(
                "SELECT id, base_id FROM queue_msgs WHERE id = ANY(%s) FOR UPDATE", (list(ids),)
            )
        else:
            cur = await conn.execute(
                f"UPDATE queue_msgs SET {settable_sql(column)} WHERE id = ANY(%s) "  # type: ignore[arg-type]
                "RETURNING id, base_id",
                (value, list(ids)),
            )
        by_base: dict[int, list[int]] = defaultdict(list)
        for r in await cur.fetchall():
            by_base[r["base_id"]].append(r["id"])
        pending = []
        for base_id, msg_ids in sorted(by_base.items()):
            body = {**op, "msg_ids": sorted(msg_ids)}
            cur = await conn.execute(
                "INSERT INTO pending_signals (base_id, op, created) VALUES (%s, %s, %s) RETURNING id",
                (base_id, Jsonb(body), now),
            )
            row = await cur.fetchone()
            assert row is not None
            pending.append(PendingSignal(row["id"], base_id, body))
        return pending


async def landed(pool: Pool, signal_ids: Sequence[int]) -> None:
    """Forget signals that reached their workflow (or whose workflow had nothing left to change)."""
    if signal_ids:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM pending_signals WHERE id = ANY(%s)", (list(signal_ids),))


async def older_than(pool: Pool, age: timedelta, now: datetime, limit: int = 1000) -> list[PendingSignal]:
    """Signals recorded more than `age` ago and not known to have landed, oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, base_id, op FROM pending_signals WHERE created < %s ORDER BY id LIMIT %s",
            (now - age, limit),
        )
        return [PendingSignal(r["id"], r["base_id"], r["op"]) for r in await cur.fetchall()]
