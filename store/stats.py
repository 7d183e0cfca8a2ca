"""Queue statistics for the gauges operators watch (counts and ages per state), read from PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from store.db import Pool


async def queue_states(pool: Pool, now: datetime) -> dict[str, dict[str, Any]]:
    """Per state (held, due, waiting): how many queued messages and the oldest's queue time."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT CASE WHEN hold THEN 'held' WHEN next_attempt <= %s THEN 'due' ELSE 'waiting' END
                          AS state,
                      count(*) AS n, min(queued) AS oldest
               FROM queue_msgs GROUP BY 1""",
            (now,),
        )
        rows = {r["state"]: {"n": r["n"], "oldest": r["oldest"]} for r in await cur.fetchall()}
    return {s: rows.get(s, {"n": 0, "oldest": None}) for s in ("held", "due", "waiting")}


async def hooks_pending(pool: Pool) -> dict[str, Any]:
    """How many webhooks are pending and when the oldest was submitted."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n, min(submitted) AS oldest FROM hooks")
        row = await cur.fetchone()
    return {"n": row["n"] if row else 0, "oldest": row["oldest"] if row else None}
