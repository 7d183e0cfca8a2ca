"""Bulk admin operations over a queue filter (spec 01 §5.3, spec 04 §3): hold, release, kick, reschedule,
transport, requiretls, fail and drop.

The queue rows are written first (so a listing right after shows the effect), then every affected
submission's workflow gets one signal. Signals are accepted even while no worker runs, and are sent with
bounded concurrency, so thousands of workflows are reached in seconds; `Affected` counts the messages whose
workflow was told.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from temporalio.service import RPCError, RPCStatusCode

from api.admin import AdminError, _state, json_body, parse_queue_filter, parse_reschedule
from api.state import AppState
from domain.contracts import BulkOp, delivery_workflow_id
from store import queue as q
from workflows.delivery import Delivery

router = APIRouter(prefix="/admin/v0")

# Signals in flight at once: enough to reach thousands of workflows quickly without flooding the frontend.
_SIGNAL_CONCURRENCY = 64


async def signal_all(st: AppState, rows: Sequence[dict[str, Any]], change: BulkOp) -> int:
    """Send `change` to each submission of the rows, with its message ids; returns how many messages
    were reached."""
    by_base: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        by_base[r["base_id"]].append(r["id"])
    sem = asyncio.Semaphore(_SIGNAL_CONCURRENCY)

    async def one(base_id: int, ids: list[int]) -> int:
        async with sem:
            try:
                await st.client.get_workflow_handle(delivery_workflow_id(base_id)).signal(
                    Delivery.bulk, change.model_copy(update={"msg_ids": ids})
                )
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    # The submission finished meanwhile: nothing left to change.
                    return 0
                raise AdminError(503, "unavailable", f"temporal: {err.message}") from None
            return len(ids)

    reached = await asyncio.gather(*(one(b, ids) for b, ids in by_base.items()))
    return sum(reached)


async def _op(request: Request, op: str) -> dict[str, Any]:
    st = _state(request)
    body = await json_body(request)
    f = parse_queue_filter(body.get("Filter"))
    now = datetime.now(UTC)
    rows = await q.matching(st.pool, f, now)
    ids = [r["id"] for r in rows]
    if op in ("hold", "release"):
        rows = await q.update_rows(st.pool, ids, "hold", op == "hold")
        return {"Affected": await signal_all(st, rows, BulkOp(op=op))}
    if op == "kick":
        rows = await q.update_rows(st.pool, ids, "next_attempt", now)
        return {"Affected": await signal_all(st, rows, BulkOp(op="kick"))}
    if op == "nextattempt":
        at, add = parse_reschedule(body)
        if at is not None:
            rows = await q.update_rows(st.pool, ids, "next_attempt", at)
            change = BulkOp(op="set_next", next_attempt=at)
        else:
            assert add is not None
            rows = await q.update_rows(st.pool, ids, "add_next_attempt", add)
            change = BulkOp(op="add_next", add_s=add.total_seconds())
        return {"Affected": await signal_all(st, rows, change)}
    if op == "transport":
        name = body.get("Transport", "")
        if not isinstance(name, str):
            raise AdminError(400, "badRequest", 'Transport: a name, or "" for routing')
        # Not validated, as in mox: an unknown name fails at delivery, temporarily (spec 01 §7.5).
        return {"Affected": len(await q.update_rows(st.pool, ids, "transport", name))}
    if op == "requiretls":
        value = body.get("RequireTLS")
        if value is not None and not isinstance(value, bool):
            raise AdminError(400, "badRequest", "RequireTLS: true, false or null")
        return {"Affected": len(await q.update_rows(st.pool, ids, "require_tls", value))}
    # fail and drop: the workflow retires, sends the DSN (fail) and the webhook.
    return {"Affected": await signal_all(st, rows, BulkOp(op=op))}


_OPS = ("hold", "release", "kick", "nextattempt", "transport", "requiretls", "fail", "drop")


@router.post("/queue/{op}")
async def bulk(op: str, request: Request) -> dict[str, Any]:
    """Apply `op` to every queued message matching `{"Filter": {...}}`: hold, release, kick,
    nextattempt (`Set` or `Add`), transport (`Transport`), requiretls (`RequireTLS`), fail or drop."""
    if op not in _OPS:
        raise AdminError(404, "notFound", f"unknown operation {op!r}")
    return await _op(request, op)
