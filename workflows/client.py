"""How processes outside the worker start and address Delivery workflows."""

from __future__ import annotations

from datetime import datetime

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from domain.config import QueueConfig
from domain.contracts import DeliveryInput, RecipientGroup, delivery_workflow_id
from workflows.delivery import Delivery


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
    """Start the submission's workflow; starting the same BaseID again never queues it twice."""
    return await client.start_workflow(
        Delivery.run,
        inp,
        id=delivery_workflow_id(inp.base_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=summary,
    )


def delivery_input(
    base_id: int,
    account: str,
    recipients: list[tuple[int, str]],
    queue: QueueConfig,
    *,
    release_at: datetime | None = None,
    hold: bool = False,
) -> DeliveryInput:
    """Group a submission's (message id, recipient domain) pairs by domain into the workflow's input."""
    groups: dict[str, list[int]] = {}
    for msg_id, domain in recipients:
        groups.setdefault(domain, []).append(msg_id)
    return DeliveryInput(
        base_id=base_id,
        account=account,
        groups=[RecipientGroup(domain=d, msg_ids=ids) for d, ids in groups.items()],
        release_at=release_at,
        hold=hold,
        max_attempts=queue.max_attempts,
        backoff_base_s=queue.backoff_base.total_seconds(),
        attempt_timeout_s=queue.attempt_timeout.total_seconds(),
    )
