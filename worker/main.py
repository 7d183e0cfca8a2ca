"""The worker process: runs Tempost's workflows and activities, its sweeper and its schedules."""

from __future__ import annotations

import asyncio
import functools
import logging
import os

from prometheus_client import start_http_server
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bounces import BounceActivities
from activities.conncache import ConnectionCache
from activities.delivery import DeliveryActivities
from activities.mtastsrefresh import MTASTSRefresher
from activities.retention import RetentionActivities
from activities.webhooks import HookControl, WebhookActivities, WebhookQueue
from domain.config import Config
from store import db, hooks
from store.db import Pool
from store.dkimkeys import load_keyring
from worker.bounce_listener import start_listener
from worker.connect import connect_error, temporal_connect_options
from worker.schedules import ensure_mtasts_refresh_schedule, ensure_retention_schedule
from worker.sweeper import run_sweeper, start_submission
from workflows.bounce import Bounce
from workflows.client import signal_webhook, start_webhook
from workflows.delivery import Delivery
from workflows.mtastsrefresh import MTASTSRefresh
from workflows.registry import ensure_search_attributes
from workflows.retention import Retention
from workflows.webhook import Webhook

log = logging.getLogger("tempost.worker")

# The sandbox runs workflow code under import and call restrictions, so that a non-deterministic call (the
# clock, randomness, I/O) fails the workflow task instead of corrupting a replay later. It costs about a
# third of the worker's CPU per delivered message (re-importing the workflow module for every run, and
# proxying every activation), so production workers run workflow code directly and the test suite runs it
# sandboxed (TEMPOST_WORKFLOW_SANDBOX=1, set by tests/conftest.py), where such a call fails a test. The
# replay tests guard determinism across releases either way. Our pure rules and pydantic are
# deterministic and pass through the sandbox unchanged.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("domain", "pydantic", "pydantic_core")
)


def workflow_runner() -> WorkflowRunner:
    """The sandbox when TEMPOST_WORKFLOW_SANDBOX=1 (tests), else workflow code runs directly."""
    return SANDBOX if os.environ.get("TEMPOST_WORKFLOW_SANDBOX") == "1" else UnsandboxedWorkflowRunner()


@functools.cache
def _runtime(sdk_metrics_listen: str) -> Runtime:
    # One runtime per process and address: its Prometheus exporter binds the port once. Durations in
    # seconds, as Prometheus expects (the SDK's default is milliseconds under the same names).
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=sdk_metrics_listen, durations_as_seconds=True)
        )
    )


async def connect_temporal(config: Config) -> Client:
    """A Temporal client with the data converter every Tempost process must share, over TLS and with the
    client certificate or API key the configuration names.

    Raises TemporalConnectError (a RuntimeError: worth retrying) saying why the connection failed,
    TemporalCredentialsError when the server refused the API key or client certificate, and
    SecretFileError when a configured file cannot be read.
    """
    extra = temporal_connect_options(config.temporal)
    if config.worker.sdk_metrics_listen:
        extra["runtime"] = _runtime(config.worker.sdk_metrics_listen)
    try:
        return await Client.connect(config.temporal.address, data_converter=pydantic_data_converter, **extra)
    except RuntimeError as err:
        tls = extra["tls"] is not False
        # Not chained: the message holds the SDK's text already, with the API key cut out.
        raise connect_error(config.temporal, err, tls, extra.get("api_key", "")) from None


def build_worker(
    client: Client, pool: Pool, config: Config, connections: ConnectionCache | None = None
) -> Worker:
    """A worker with Tempost's workflows and activities on the configured task queue; its SMTP transports
    keep idle sessions in `connections` (by default a cache of their own)."""

    async def start(base_id: int) -> None:
        await start_submission(client, pool, config, base_id)

    async def start_hook(hook_id: int, summary: str) -> None:
        await start_webhook(client, config.temporal.task_queue, hook_id, None, summary)
        await hooks.mark_workflow_started(pool, [hook_id])

    async def stop_hook(hook_id: int) -> None:
        await signal_webhook(client, hook_id, "stop")

    async def wake(workflow_id: str, freed: list[str]) -> None:
        await client.get_workflow_handle(workflow_id).signal(Delivery.lease_free, freed)

    webhook_queue = WebhookQueue(pool, config, HookControl(start_hook, stop_hook))
    acts = DeliveryActivities(
        pool, config, start, webhook_queue, wake, load_keyring(config), connections=connections
    )
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
        workflow_runner=workflow_runner(),
        max_concurrent_activities=config.worker.max_concurrent_activities,
        # First attempts run as local activities (workflows/delivery.py): the same bound applies.
        max_concurrent_local_activities=config.worker.max_concurrent_activities,
        # An SMTP transaction in flight at shutdown gets time to finish and record its outcome rather
        # than being cut off mid-DATA (which would cost a second send later).
        graceful_shutdown_timeout=config.worker.shutdown_grace,
        # Deliveries go through the task queue to whichever worker polls, not eagerly to the one that ran
        # the workflow task: load spreads over all worker processes.
        disable_eager_activity_execution=True,
    )


def _listen(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_worker(config: Config, stop: asyncio.Event | None = None, client: Client | None = None) -> None:
    """Run until `stop` is set, then stop in order: nothing new is taken, attempts in flight finish.

    `client` is shared with an API in the same process, so the workflows it starts run eagerly here.
    """
    stop = stop or asyncio.Event()
    if config.worker.metrics_listen:
        host, port = _listen(config.worker.metrics_listen)
        start_http_server(port, addr=host)
    client = client or await connect_temporal(config)
    registration = await ensure_search_attributes(client, config.temporal.namespace)
    if registration.added:
        log.info("registered search attributes %s", ", ".join(registration.added))
    database = config.database
    pool = await db.open_pool(db.conninfo(database), database.pool_min, database.pool_max)
    connections = ConnectionCache.from_config(config.queue)
    try:
        worker = build_worker(client, pool, config, connections)
        sweeper = asyncio.create_task(run_sweeper(client, pool, config))
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
        try:
            async with worker:
                log.info("worker polling task queue %s", config.temporal.task_queue)
                await stop.wait()
                grace = config.worker.shutdown_grace
                log.info("stopping: no new work is taken; attempts in flight get %s to finish", grace)
                # Nothing new starts while the worker drains: no sweeps, no bounces accepted.
                sweeper.cancel()
                if listener is not None:
                    listener.close()
                await asyncio.gather(sweeper, return_exceptions=True)
            # Leaving the block shut the worker down: polling stopped, attempts in flight finished within
            # the graceful timeout or were cancelled and handed back to Temporal for another worker.
        finally:
            sweeper.cancel()
            if listener is not None:
                listener.close()
            # After the attempts in flight: idle SMTP sessions get their QUIT rather than a dropped socket.
            await connections.close()
        log.info("worker stopped")
    finally:
        # Last, because the attempts that were finishing wrote their outcomes through it.
        await pool.close()
