"""The Bounce workflow: match one stored incoming bounce to its message, durably and exactly once.

The bounce body stays in PostgreSQL; this workflow carries its id only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain.contracts import ACTIVITY_INGEST_BOUNCE, WORKFLOW_BOUNCE, BounceResult


@workflow.defn(name=WORKFLOW_BOUNCE)
class Bounce:
    """Runs the ingest activity until it succeeds; the activity is idempotent on the bounce row."""

    @workflow.run
    async def run(self, bounce_id: int) -> BounceResult:
        return await workflow.execute_activity(
            ACTIVITY_INGEST_BOUNCE,
            bounce_id,
            result_type=BounceResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60)
            ),
            summary=f"match bounce {bounce_id}",
        )
