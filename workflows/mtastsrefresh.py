"""The MTASTSRefresh workflow, started by a Temporal schedule: keep the MTA-STS policy cache current."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain.contracts import ACTIVITY_REFRESH_MTASTS, WORKFLOW_MTASTS_REFRESH, MTASTSRefreshResult
    from domain.mtastsrefresh import REFRESH_SPREAD


@workflow.defn(name=WORKFLOW_MTASTS_REFRESH)
class MTASTSRefresh:
    """One refresh run; the schedule decides how often (daily by default, first run at worker start).

    The whole run, with its waits spread over three hours, is one long activity that heartbeats, not a
    timer and an activity per cached domain: history stays at a dozen events however many domains are
    cached (per-domain timers would add five or more each and outgrow one history on a busy server), and
    a crashed worker is noticed within the heartbeat timeout and the run retried, which redoes little:
    rows it refreshed no longer count as not updated for 12 hours.
    """

    @workflow.run
    async def run(self) -> MTASTSRefreshResult:
        """Run the refresh activity and return what it did to the cached rows."""
        return await workflow.execute_activity(
            ACTIVITY_REFRESH_MTASTS,
            result_type=MTASTSRefreshResult,
            # The spread plus time for the last refreshes (a DNS lookup and a one-minute fetch each).
            start_to_close_timeout=REFRESH_SPREAD + timedelta(minutes=15),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(minutes=1), maximum_attempts=3),
            summary="delete MTA-STS policies unused for 180 days, refresh those not updated for 12 hours",
        )
