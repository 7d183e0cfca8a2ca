"""Deleting retired records past their keep period (spec 01 §6.4, spec 03 §3.8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity

from domain.contracts import ACTIVITY_CLEANUP, CleanupResult
from domain.idempotency import WINDOW as IDEMPOTENCY_WINDOW
from store import attempts, bounces, hooks, idempotency
from store import queue as q
from store.db import Pool

# Processed bounces keep only their verdict (the body is dropped when processed); a week is plenty to look.
BOUNCE_KEEP = timedelta(days=7)
# An attempt's recorded outcome only serves retries of its activity, which end within minutes.
ATTEMPT_OUTCOME_KEEP = timedelta(days=1)


class RetentionActivities:
    """The cleanup activity, bound to one PostgreSQL pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.cleanup_retired]

    @activity.defn(name=ACTIVITY_CLEANUP)
    async def cleanup_retired(self) -> CleanupResult:
        """Delete retired messages and hooks past KeepUntil, old processed bounces, idempotency keys and
        attempt outcomes."""
        now = datetime.now(UTC)
        result = CleanupResult(
            messages=await q.cleanup_retired(self._pool, now),
            hooks=await hooks.cleanup_retired(self._pool, now),
            bounces=await bounces.cleanup_processed(self._pool, now - BOUNCE_KEEP),
            idempotency_keys=await idempotency.cleanup(self._pool, now - IDEMPOTENCY_WINDOW),
            attempt_outcomes=await attempts.cleanup(self._pool, now - ATTEMPT_OUTCOME_KEEP),
        )
        if result.messages or result.hooks or result.bounces or result.idempotency_keys:
            activity.logger.info(
                "retention: deleted %d messages, %d hooks, %d bounces, %d idempotency keys",
                result.messages,
                result.hooks,
                result.bounces,
                result.idempotency_keys,
            )
        return result
