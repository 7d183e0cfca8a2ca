"""Heartbeats for long activities, so Temporal notices a dead worker within the heartbeat timeout.

Without heartbeats an attempt lost with its worker (a crash, or a task handed to a worker as it shut down)
is only retried when its start-to-close timeout runs out, which for a delivery attempt is minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(every: timedelta, details: Callable[[], object] | None = None) -> AsyncIterator[None]:
    """Heartbeat every `every` while the block runs; `details` says how far the activity got.

    A local activity has no heartbeats of its own (its workflow task's heartbeats keep it alive).
    """
    if activity.info().is_local:
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat(*([details()] if details is not None else []))
            await asyncio.sleep(every.total_seconds())

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
