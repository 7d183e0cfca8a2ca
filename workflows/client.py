"""How processes outside a workflow start and address Delivery and Webhook workflows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from domain.config import QueueConfig
from domain.contracts import (
    DELIVERY_REVISION,
    BulkOp,
    DeliveryInput,
    HookInput,
    RecipientGroup,
    bounce_workflow_id,
    delivery_workflow_id,
    webhook_workflow_id,
)
from workflows import searchattrs
from workflows.bounce import Bounce
from workflows.delivery import Delivery
from workflows.registry import available_search_attributes
from workflows.webhook import Webhook


def delivery_summary(sender: str, recipients: list[str]) -> str:
    """One line for the Temporal UI's workflow list: "sender → recipient" or a count per domain."""
    if len(recipients) == 1:
        line = f"{sender or '<>'} → {recipients[0]}"
    else:
        domains = sorted({r.rsplit("@", 1)[-1] for r in recipients})
        shown = ", ".join(domains[:3]) + (f" +{len(domains) - 3}" if len(domains) > 3 else "")
        line = f"{sender or '<>'} → {len(recipients)} rcpts @ {shown}"
    # The UI takes at most 200 bytes of summary.
    return line.encode()[:200].decode(errors="ignore")


async def start_delivery(client: Client, task_queue: str, inp: DeliveryInput, summary: str) -> WorkflowHandle:
    """Start the submission's workflow; starting it while it runs joins the running one.

    A new run may follow a closed one: callers start from the submission's queued rows, and queued rows
    with a closed workflow mean the workflow was lost (terminated, or gone with Temporal's state). Rows
    a finished run retired are not there to be sent again.
    """
    known = await available_search_attributes(client)
    attributes: list[SearchAttributePair[Any]] = [
        SearchAttributePair(searchattrs.ACCOUNT, inp.account),
        *searchattrs.at_start(inp, datetime.now(UTC)),
    ]
    if known is not None:
        # The namespace lacks some (a worker logged the commands that create them): set only the others.
        inp = inp.model_copy(update={"search_attributes": known})
        attributes = [a for a in attributes if a.key.name in known]
    return await client.start_workflow(
        Delivery.run,
        inp,
        id=delivery_workflow_id(inp.base_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=summary,
        # Taken up only where a worker shares this client (tempost dev): its first task skips the queue.
        request_eager_start=True,
        search_attributes=TypedSearchAttributes(attributes),
    )


def delivery_input(
    base_id: int,
    account: str,
    recipients: list[tuple[int, str]],
    queue: QueueConfig,
    *,
    release_at: datetime | None = None,
    hold: bool = False,
    separate: bool = False,
    held_ids: list[int] | None = None,
    prior_attempts: dict[int, int] | None = None,
    next_attempts: dict[int, datetime] | None = None,
) -> DeliveryInput:
    """Group a submission's (message id, recipient domain) pairs by domain into the workflow's input.

    separate puts every recipient in its own group: messages with their own MAIL FROM (FromID) cannot
    share an SMTP transaction.
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for msg_id, domain in recipients:
        groups.setdefault((domain, msg_id if separate else 0), []).append(msg_id)
    return DeliveryInput(
        base_id=base_id,
        account=account,
        groups=[RecipientGroup(domain=d, msg_ids=ids) for (d, _), ids in groups.items()],
        release_at=release_at,
        hold=hold,
        held_ids=held_ids or [],
        prior_attempts=prior_attempts or {},
        next_attempts=next_attempts or {},
        max_attempts=queue.max_attempts,
        backoff_base_s=queue.backoff_base.total_seconds(),
        attempt_timeout_s=queue.attempt_timeout.total_seconds(),
        max_in_flight=queue.max_concurrent_deliveries,
        domain_concurrency={d: n for d in {d for d, _ in groups} if (n := queue.concurrency(d)) != 1},
        revision=DELIVERY_REVISION,
    )


# Signals in flight at once: enough to reach thousands of workflows quickly without flooding the frontend.
_SIGNAL_CONCURRENCY = 64


async def signal_bulk(client: Client, changes: Sequence[tuple[int, BulkOp]]) -> list[bool]:
    """Send each (BaseID, change) to its submission's workflow, 64 at a time; for each, whether it is done:
    the signal landed, or the workflow is gone and has nothing left to change."""
    sem = asyncio.Semaphore(_SIGNAL_CONCURRENCY)

    async def one(base_id: int, change: BulkOp) -> bool:
        async with sem:
            try:
                await client.get_workflow_handle(delivery_workflow_id(base_id)).signal(Delivery.bulk, change)
            except RPCError as err:
                return err.status == RPCStatusCode.NOT_FOUND
            except RuntimeError:
                # The client could not connect at all (a lazy client whose server is down).
                return False
            return True

    return list(await asyncio.gather(*(one(b, c) for b, c in changes)))


async def start_webhook(
    client: Client, task_queue: str, hook_id: int, next_attempt: datetime | None, summary: str
) -> None:
    """Start a hook's workflow; starting it while it runs joins the running one. A new run may follow a
    closed one, for a hook still pending whose workflow was lost; a run that finds its row gone ends."""
    await client.start_workflow(
        Webhook.run,
        HookInput(hook_id=hook_id, next_attempt=next_attempt),
        id=webhook_workflow_id(hook_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=summary.encode()[:200].decode(errors="ignore"),
    )


async def signal_webhook(client: Client, hook_id: int, signal: str, *args: object) -> bool:
    """Tell a hook's workflow about a change of its row; False when the workflow is not running."""
    try:
        await client.get_workflow_handle(webhook_workflow_id(hook_id)).signal(signal, *args)
    except RPCError:
        return False
    return True


async def start_bounce(client: Client, task_queue: str, bounce_id: int) -> WorkflowHandle:
    """Start the matching of a stored bounce; starting it again is harmless.

    A new run may follow a closed one: a bounce still unprocessed after its workflow closed was never
    matched (the run was terminated), and matching is idempotent on the bounce row.
    """
    return await client.start_workflow(
        Bounce.run,
        bounce_id,
        id=bounce_workflow_id(bounce_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
