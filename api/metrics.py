"""Queue gauges on the API's /metrics, computed from PostgreSQL at scrape time.

They describe the whole queue, so one process reports them (the API), not every worker.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Gauge

from store import stats
from store.db import Pool

QUEUE_MESSAGES = Gauge(
    "tempost_queue_messages",
    "Queued messages by state: held, due (waiting for a slot) or waiting.",
    ["state"],
)
QUEUE_OLDEST = Gauge(
    "tempost_queue_oldest_seconds", "Age of the oldest queued message in each state (0 when none).", ["state"]
)
QUEUE_HOLD = Gauge("tempost_queue_hold", "Messages on hold (mox's mox_queue_hold).")
HOOKS_PENDING = Gauge("tempost_webhook_queue_messages", "Webhooks waiting to be delivered.")
HOOKS_OLDEST = Gauge("tempost_webhook_oldest_seconds", "Age of the oldest pending webhook (0 when none).")


def _age(now: datetime, t: datetime | None) -> float:
    return (now - t).total_seconds() if t is not None else 0.0


async def refresh(pool: Pool) -> None:
    """Set the gauges from the current queue."""
    now = datetime.now(UTC)
    for state, s in (await stats.queue_states(pool, now)).items():
        QUEUE_MESSAGES.labels(state).set(s["n"])
        QUEUE_OLDEST.labels(state).set(_age(now, s["oldest"]))
        if state == "held":
            QUEUE_HOLD.set(s["n"])
    hooks = await stats.hooks_pending(pool)
    HOOKS_PENDING.set(hooks["n"])
    HOOKS_OLDEST.set(_age(now, hooks["oldest"]))
