"""The Retention workflow, started by a Temporal schedule: delete what is past its keep period."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain.contracts import ACTIVITY_CLEANUP, WORKFLOW_RETENTION, CleanupResult


@workflow.defn(name=WORKFLOW_RETENTION)
class Retention:
    """One cleanup run; the schedule decides how often (hourly by default, first run at worker start)."""

    @workflow.run
    async def run(self) -> CleanupResult:
        return await workflow.execute_activity(
            ACTIVITY_CLEANUP,
            result_type=CleanupResult,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=5),
            summary="delete retired messages, hooks and processed bounces past their keep period",
        )
