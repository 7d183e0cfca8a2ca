"""Every queued message, pending webhook call and stored bounce has a running workflow.

Starters (the API, the DSN path, the webhook queue) start a workflow after committing its rows and then mark
the rows started. A process dying between the two leaves rows unstarted; a workflow can also end while its
rows are pending (an operator terminating it in the Temporal UI, Temporal losing its state). The sweeper of
every worker finds both and starts what is missing, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.config import Config
from domain.contracts import delivery_workflow_id, webhook_workflow_id
from store import bounces, hooks, signals
from store import queue as q
from store.db import Pool
from workflows.client import (
    delivery_input,
    delivery_summary,
    signal_bulk,
    start_bounce,
    start_delivery,
    start_webhook,
)

log = logging.getLogger("tempost.worker")

# A submission committed this long ago without a workflow lost its API process mid-request.
ORPHAN_AGE = timedelta(seconds=30)
# Queued mail and webhook calls whose workflow is gone are looked for at start and then every this many
# sweeps (10 minutes): it lists every running workflow, so not at every sweep.
LOST_CHECK_ROUNDS = 20
# Describe calls in flight at once while looking for lost workflows.
_DESCRIBE_CONCURRENCY = 16
LOST_RECOVERED = Counter(
    "tempost_queue_lost_workflows_recovered_total",
    "Workflows started again because theirs had ended with mail queued or a webhook call pending.",
)
START_ERRORS = Counter(
    "tempost_queue_workflow_start_errors_total",
    "Workflow starts by the sweeper that Temporal refused or did not answer; each is tried again next round.",
    ["workflow"],
)


async def _started(workflow: str, what: str, start: Awaitable[object]) -> bool:
    """Whether a workflow start went through (a start that returns False had nothing to start). A failed
    start is counted, logged and tried again next round: it must not hold up the rest of this one."""
    try:
        return (await start) is not False
    except Exception:  # noqa: BLE001 - see the docstring
        START_ERRORS.labels(workflow).inc()
        log.exception("starting %s failed; trying again next round", what)
        return False


async def start_submission(client: Client, pool: Pool, config: Config, base_id: int) -> bool:
    """Start the delivery workflow of a queued submission from its queue rows; False when nothing is
    queued. A running workflow is joined, not started twice."""
    rows = await q.submission_rows(pool, base_id)
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
        await start_delivery(client, config.temporal.task_queue, inp, summary)
    await q.mark_workflow_started(pool, base_id)
    return bool(rows)


async def sweep_orphans(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start the workflow of every submission that was committed but never started; returns how many."""
    started = 0
    for base_id in await q.unstarted_submissions(pool, older_than):
        orphan = f"the delivery of orphaned submission {base_id}"
        if await _started("delivery", orphan, start_submission(client, pool, config, base_id)):
            started += 1
            log.warning("started %s", orphan)
    return started


async def sweep_hooks(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start the workflow of every hook committed without one; returns how many."""
    started = []
    for r in await hooks.unstarted(pool, older_than):
        start = start_webhook(
            client, config.temporal.task_queue, r["id"], r["next_attempt"], f"hook {r['id']}"
        )
        if await _started("webhook", f"orphaned webhook {r['id']}", start):
            started.append(r["id"])
            log.warning("started orphaned webhook %d", r["id"])
    if started:
        await hooks.mark_workflow_started(pool, started)
    return len(started)


async def sweep_bounces(client: Client, pool: Pool, config: Config, older_than: timedelta) -> int:
    """Start matching every bounce stored a while ago and still unprocessed: its workflow start was lost,
    or its run ended before matching it. A running one is left alone. Returns how many were looked at."""
    ids = await bounces.unprocessed(pool, older_than)
    for bounce_id in ids:
        start = start_bounce(client, config.temporal.task_queue, bounce_id)
        await _started("bounce", f"the matching of bounce {bounce_id}", start)
    return len(ids)


async def sweep_signals(client: Client, pool: Pool, older_than: timedelta) -> int:
    """Send again every bulk-operation signal recorded a while ago and not known to have landed (Temporal
    refused it, or the API died before noting it); returns how many landed now."""
    pending = await signals.older_than(pool, older_than, datetime.now(UTC))
    if not pending:
        return 0
    ok = await signal_bulk(client, [(p.base_id, signals.bulk_op(p)) for p in pending])
    done = [p.id for p, landed in zip(pending, ok, strict=True) if landed]
    await signals.landed(pool, done)
    if len(done) < len(pending):
        START_ERRORS.labels("signal").inc(len(pending) - len(done))
        log.warning(
            "%d bulk-operation signals still not taken; trying again next round", len(pending) - len(done)
        )
    if done:
        log.warning("sent %d bulk-operation signals again", len(done))
    return len(done)


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
    for workflow_id, how in await _not_running(client, list(submissions)):
        start = start_submission(client, pool, config, submissions[workflow_id])
        if await _started("delivery", f"{workflow_id} again", start):
            log.warning("%s had queued mail but %s: started it again", workflow_id, how)
            restarted.append(workflow_id)
    pending = {webhook_workflow_id(r["id"]): r for r in await hooks.started_pending(pool)}
    for workflow_id, how in await _not_running(client, list(pending)):
        r = pending[workflow_id]
        again = start_webhook(client, tq, r["id"], r["next_attempt"], f"hook {r['id']}")
        if await _started("webhook", f"{workflow_id} again", again):
            log.warning("%s was pending but %s: started it again", workflow_id, how)
            restarted.append(workflow_id)
    LOST_RECOVERED.inc(len(restarted))
    return restarted


async def _not_running(client: Client, workflow_ids: list[str]) -> list[tuple[str, str]]:
    """Those of the workflow ids with no running workflow, each with how its last run ended.

    Each workflow's own record decides, never the visibility list: visibility lags behind a start and
    behind a terminate, so it would take a just-terminated workflow for a running one (and its mail
    would wait another ten minutes) as readily as the reverse.
    """
    limit = asyncio.Semaphore(_DESCRIBE_CONCURRENCY)

    async def ended(workflow_id: str) -> str | None:
        async with limit:
            try:
                status = (await client.get_workflow_handle(workflow_id).describe()).status
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                return "Temporal does not know its workflow"
        if status == WorkflowExecutionStatus.RUNNING:
            return None
        return f"its workflow ended {status.name.lower() if status else 'somehow'}"

    hows = await asyncio.gather(*(ended(w) for w in workflow_ids))
    return [(w, how) for w, how in zip(workflow_ids, hows, strict=True) if how is not None]


async def run_sweeper(client: Client, pool: Pool, config: Config) -> None:
    """Sweep until cancelled: unstarted rows every ORPHAN_AGE, lost workflows every LOST_CHECK_ROUNDS."""
    rounds = 0
    while True:
        try:
            if rounds % LOST_CHECK_ROUNDS == 0:
                await recover_lost(client, pool, config)
            rounds += 1
            await sweep_orphans(client, pool, config, ORPHAN_AGE)
            await sweep_hooks(client, pool, config, ORPHAN_AGE)
            await sweep_bounces(client, pool, config, ORPHAN_AGE)
            await sweep_signals(client, pool, ORPHAN_AGE)
        except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
            log.exception("sweeping orphaned submissions and hooks")
        await asyncio.sleep(ORPHAN_AGE.total_seconds())
