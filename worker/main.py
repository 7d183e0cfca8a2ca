"""The worker process: runs Delivery and Webhook workflows and their activities, sweeps orphans."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import timedelta

from prometheus_client import Counter, start_http_server
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
    WorkflowExecutionStatus,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bounces import BounceActivities
from activities.delivery import DeliveryActivities
from activities.mtastsrefresh import MTASTSRefresher
from activities.retention import RetentionActivities
from activities.webhooks import HookControl, WebhookActivities, WebhookQueue
from domain.config import Config
from domain.contracts import (
    WORKFLOW_DELIVERY,
    WORKFLOW_MTASTS_REFRESH,
    WORKFLOW_RETENTION,
    WORKFLOW_WEBHOOK,
    delivery_workflow_id,
    mtasts_refresh_schedule_id,
    retention_schedule_id,
    webhook_workflow_id,
)
from store import bounces, db, hooks
from store import queue as q
from store.db import Pool
from worker.bounce_listener import start_listener
from workflows.bounce import Bounce
from workflows.client import (
    delivery_input,
    delivery_summary,
    signal_webhook,
    start_bounce,
    start_delivery,
    start_webhook,
)
from workflows.delivery import Delivery
from workflows.mtastsrefresh import MTASTSRefresh
from workflows.registry import ensure_search_attributes
from workflows.retention import Retention
from workflows.webhook import Webhook

log = logging.getLogger("tempost.worker")

# Our pure rules and pydantic are deterministic; passing them through the sandbox avoids re-importing
# them for every workflow run (about a third of the worker's CPU otherwise).
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("domain", "pydantic", "pydantic_core")
)
# A submission committed this long ago without a workflow lost its API process mid-request.
ORPHAN_AGE = timedelta(seconds=30)
# Queued mail and webhook calls whose workflow is gone are looked for at start and then every this many
# sweeps (10 minutes): it lists every running workflow, so not at every sweep.
LOST_CHECK_ROUNDS = 20
LOST_RECOVERED = Counter(
    "tempost_queue_lost_workflows_recovered_total",
    "Workflows started again because theirs had ended with mail queued or a webhook call pending.",
)


@functools.cache
def _runtime(sdk_metrics_listen: str) -> Runtime:
    # One runtime per process and address: its Prometheus exporter binds the port once.
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=sdk_metrics_listen)))


async def connect_temporal(config: Config) -> Client:
    """A Temporal client with the data converter every Tempost process must share."""
    extra = {}
    if config.worker.sdk_metrics_listen:
        extra["runtime"] = _runtime(config.worker.sdk_metrics_listen)
    return await Client.connect(
        config.temporal.address,
        namespace=config.temporal.namespace,
        data_converter=pydantic_data_converter,
        **extra,  # type: ignore[arg-type]
    )


def build_worker(client: Client, pool: Pool, config: Config) -> Worker:
    """A worker with Tempost's workflows and activities on the configured task queue."""

    async def start(base_id: int) -> None:
        await start_submission(client, pool, config, base_id)

    async def start_hook(hook_id: int, summary: str) -> None:
        await start_webhook(client, config.temporal.task_queue, hook_id, None, summary)
        await hooks.mark_workflow_started(pool, [hook_id])

    async def stop_hook(hook_id: int) -> None:
        await signal_webhook(client, hook_id, "stop")

    async def wake(workflow_id: str) -> None:
        await client.get_workflow_handle(workflow_id).signal(Delivery.lease_free)

    webhook_queue = WebhookQueue(pool, config, HookControl(start_hook, stop_hook))
    acts = DeliveryActivities(pool, config, start, webhook_queue, wake)
    hook_acts = WebhookActivities(pool, config, webhook_queue)
    bounce_acts = BounceActivities(pool, config, webhook_queue)
    return Worker(
        client,
        task_queue=config.temporal.task_queue,
        workflows=[Delivery, Webhook, Bounce, Retention, MTASTSRefresh],
        activities=[
            *acts.all(),
            *hook_acts.all(),
            *bounce_acts.all(),
            *RetentionActivities(pool).all(),
            *MTASTSRefresher(pool, config.direct).all(),
        ],
        workflow_runner=SANDBOX,
        max_concurrent_activities=config.worker.max_concurrent_activities,
        # An SMTP transaction in flight at shutdown gets time to finish and record its outcome rather
        # than being cut off mid-DATA (which would cost a second send later).
        graceful_shutdown_timeout=config.worker.shutdown_grace,
        # Deliveries go through the task queue to whichever worker polls, not eagerly to the one that ran
        # the workflow task: load spreads over all worker processes.
        disable_eager_activity_execution=True,
    )


async def start_submission(
    client: Client, pool: Pool, config: Config, base_id: int, *, again: bool = False
) -> bool:
    """Start the delivery workflow of a queued submission from its queue rows; False when it was running
    already or nothing is queued. `again` allows a new run after a closed one (see recover_lost)."""
    rows = await q.submission_rows(pool, base_id)
    started = False
    if rows:
        first = rows[0]
        inp = delivery_input(
            base_id,
            first["sender_account"],
            [(r["id"], r["recipient_domain_str"]) for r in rows],
            config.queue,
            release_at=min(r["next_attempt"] for r in rows),
            held_ids=[r["id"] for r in rows if r["hold"]],
            separate=any(r["from_id"] for r in rows),
            prior_attempts={r["id"]: r["attempts"] for r in rows if r["attempts"]},
            next_attempts={r["id"]: r["next_attempt"] for r in rows},
        )
        sender = (
            f"{first['sender_localpart']}@{first['sender_domain_str']}" if first["sender_localpart"] else "<>"
        )
        summary = delivery_summary(sender, [q.recipient_address(r) for r in rows])
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await start_delivery(client, config.temporal.task_queue, inp, summary, again=again)
            started = True
    await q.mark_workflow_started(pool, base_id)
    return started


async def recover_lost(client: Client, pool: Pool, config: Config) -> list[str]:
    """Start again every workflow that should be running and is not: a submission with queued mail, a
    pending webhook call. Returns the workflow ids started.

    Such a workflow can end early only from outside: an operator terminating it in the Temporal UI, or
    Temporal losing its state. Its mail would then wait forever. A new Delivery run resumes each
    message's schedule (attempts made, next attempt, hold) from its queue row, so the attempt limit still
    holds, and a delivery the lost run made is found in the queue's journal, not repeated; a webhook's
    attempts are counted in its row already.

    Only rows marked started are looked at, and every starter marks them after the start: a workflow
    being started now is never taken for a lost one.
    """
    tq = config.temporal.task_queue
    restarted: list[str] = []
    submissions = {delivery_workflow_id(b): b for b in await q.started_submissions_with_queued_mail(pool)}
    for workflow_id, how in await _not_running(client, tq, WORKFLOW_DELIVERY, list(submissions)):
        if await start_submission(client, pool, config, submissions[workflow_id], again=True):
            log.warning("%s had queued mail but %s: started it again", workflow_id, how)
            restarted.append(workflow_id)
    pending = {webhook_workflow_id(r["id"]): r for r in await hooks.started_pending(pool)}
    for workflow_id, how in await _not_running(client, tq, WORKFLOW_WEBHOOK, list(pending)):
        r = pending[workflow_id]
        await start_webhook(client, tq, r["id"], r["next_attempt"], f"hook {r['id']}", again=True)
        log.warning("%s was pending but %s: started it again", workflow_id, how)
        restarted.append(workflow_id)
    LOST_RECOVERED.inc(len(restarted))
    return restarted


async def _not_running(
    client: Client, task_queue: str, workflow_type: str, workflow_ids: list[str]
) -> list[tuple[str, str]]:
    """Those of the workflow ids with no running workflow, each with how its last run ended."""
    if not workflow_ids:
        return []
    query = f"WorkflowType = '{workflow_type}' AND ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'"
    running = {w.id async for w in client.list_workflows(query)}
    gone = []
    for workflow_id in workflow_ids:
        if workflow_id in running:
            continue
        # The list comes from visibility, which lags behind; the workflow's own record decides.
        try:
            status = (await client.get_workflow_handle(workflow_id).describe()).status
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            gone.append((workflow_id, "Temporal does not know its workflow"))
            continue
        if status != WorkflowExecutionStatus.RUNNING:
            gone.append((workflow_id, f"its workflow ended {status.name.lower() if status else 'somehow'}"))
    return gone


async def sweep_orphans(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start the workflow of every submission that was committed but never started; returns how many."""
    started = 0
    for base_id in await q.unstarted_submissions(pool, older_than):
        if await start_submission(client, pool, config, base_id):
            started += 1
            log.warning("started delivery of orphaned submission %d", base_id)
    return started


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


async def sweep_hooks(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start the workflow of every hook committed without one; returns how many."""
    rows = await hooks.unstarted(pool, older_than)
    for r in rows:
        await start_webhook(client, config.temporal.task_queue, r["id"], r["next_attempt"], f"hook {r['id']}")
        log.warning("started orphaned webhook %d", r["id"])
    if rows:
        await hooks.mark_workflow_started(pool, [r["id"] for r in rows])
    return len(rows)


async def sweep_bounces(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start matching every bounce stored a while ago and still unprocessed: its workflow start was lost,
    or its run ended before matching it. A running one is left alone. Returns how many were looked at."""
    ids = await bounces.unprocessed(pool, older_than)
    for bounce_id in ids:
        await start_bounce(client, config.temporal.task_queue, bounce_id)
    return len(ids)


async def _sweeper(client: Client, pool: Pool, config: Config) -> None:
    rounds = 0
    while True:
        try:
            if rounds % LOST_CHECK_ROUNDS == 0:
                await recover_lost(client, pool, config)
            rounds += 1
            await sweep_orphans(client, pool, config, ORPHAN_AGE)
            await sweep_hooks(client, pool, config, ORPHAN_AGE)
            await sweep_bounces(client, pool, config, ORPHAN_AGE)
        except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
            log.exception("sweeping orphaned submissions and hooks")
        await asyncio.sleep(ORPHAN_AGE.total_seconds())


def _listen(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_worker(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set; running activities finish first."""
    stop = stop or asyncio.Event()
    if config.worker.metrics_listen:
        host, port = _listen(config.worker.metrics_listen)
        start_http_server(port, addr=host)
    client = await connect_temporal(config)
    added = await ensure_search_attributes(client, config.temporal.namespace)
    if added:
        log.info("registered search attributes %s", ", ".join(added))
    pool = await db.open_pool(config.database.url, config.database.pool_min, config.database.pool_max)
    try:
        worker = build_worker(client, pool, config)
        sweeper = asyncio.create_task(_sweeper(client, pool, config))
        for ensure_schedule in (ensure_retention_schedule, ensure_mtasts_refresh_schedule):
            try:
                await ensure_schedule(client, config)
            except Exception:  # noqa: BLE001 - the periodic job waits; nothing queued depends on it
                log.exception("creating a schedule: %s failed", ensure_schedule.__name__)
        listener = None
        if config.worker.bounces_listen:
            host, port = _listen(config.worker.bounces_listen)
            listener = await start_listener(config, pool, client, host, port)
            log.info("accepting bounces by SMTP on %s", config.worker.bounces_listen)
        async with worker:
            log.info("worker polling task queue %s", config.temporal.task_queue)
            await stop.wait()
        sweeper.cancel()
        if listener is not None:
            listener.close()
    finally:
        await pool.close()
