"""The Temporal schedules of Tempost's periodic jobs, kept in line with the configuration."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from domain.config import Config
from domain.contracts import (
    WORKFLOW_MTASTS_REFRESH,
    WORKFLOW_RETENTION,
    mtasts_refresh_schedule_id,
    retention_schedule_id,
)


async def _ensure_schedule(
    client: Client, schedule_id: str, workflow: str, every: timedelta, tq: str
) -> bool:
    """Make the schedule starting the named workflow every `every` match the configuration: create it,
    change its interval, or delete it for a zero interval; True when created.

    A Temporal schedule rather than a timer in some process: it runs once per interval however many
    workers there are, and operators see, pause or trigger it in the UI (a pause survives an update).
    """
    handle = client.get_schedule_handle(schedule_id)
    if every <= timedelta(0):
        with contextlib.suppress(RPCError):  # none to delete
            await handle.delete()
        return False
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(workflow, id=schedule_id, task_queue=tq),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule, trigger_immediately=True)
    except ScheduleAlreadyRunningError:
        pass
    else:
        return True

    def retime(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        existing = current.description.schedule
        if [i.every for i in existing.spec.intervals] == [every]:
            return None
        existing.spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
        return ScheduleUpdate(schedule=existing)

    await handle.update(retime)
    return False


async def ensure_retention_schedule(client: Client, config: Config) -> bool:
    """Create the schedule of the Retention workflow unless it exists; True when created."""
    tq = config.temporal.task_queue
    return await _ensure_schedule(
        client, retention_schedule_id(tq), WORKFLOW_RETENTION, config.worker.retention_interval, tq
    )


async def ensure_mtasts_refresh_schedule(client: Client, config: Config) -> bool:
    """Create the schedule of the MTASTSRefresh workflow unless it exists; True when created."""
    tq = config.temporal.task_queue
    every = config.worker.mtasts_refresh_interval
    return await _ensure_schedule(client, mtasts_refresh_schedule_id(tq), WORKFLOW_MTASTS_REFRESH, every, tq)
