"""The Bounce workflow: match one stored incoming bounce to its message, durably and exactly once.

The bounce body stays in PostgreSQL; this workflow carries its id only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain.contracts import ACTIVITY_INGEST_BOUNCE, WORKFLOW_BOUNCE, BounceResult


# A bounce about a message still queued is tried again, 10 s later at first and then at doubling waits up to
# an hour, for about two days (a deferred message's attempts span about 16 hours by default). Few tries
# keep the history small.
_PENDING_WAIT = timedelta(seconds=10)
_PENDING_WAIT_MAX = timedelta(hours=1)
_PENDING_FOR = timedelta(hours=48)


@workflow.defn(name=WORKFLOW_BOUNCE)
class Bounce:
    """Runs the ingest activity until it succeeds; the activity is idempotent on the bounce row."""

    @workflow.run
    async def run(self, bounce_id: int) -> BounceResult:
        wait, waited = _PENDING_WAIT, timedelta(0)
        while True:
            result = await workflow.execute_activity(
                ACTIVITY_INGEST_BOUNCE,
                bounce_id,
                result_type=BounceResult,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60)
                ),
                summary=f"match bounce {bounce_id}",
            )
            if not result.pending or waited >= _PENDING_FOR:
                return result
            # The message it is about is still queued (being retired, or being retried): wait for it.
            await workflow.sleep(wait, summary="message still queued")
            waited += wait
            wait = min(wait * 2, _PENDING_WAIT_MAX)
