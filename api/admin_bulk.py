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

from api.admin import AdminError, _state, json_body
from api.state import AppState
from domain.contracts import BulkOp, delivery_workflow_id
from domain.durations import parse_duration
from domain.filters import FilterError, QueueFilter, parse_time_condition
from store import queue as q
from workflows.delivery import Delivery

router = APIRouter(prefix="/admin/v0")

# Signals in flight at once: enough to reach thousands of workflows quickly without flooding the frontend.
_SIGNAL_CONCURRENCY = 64


def filter_from_json(raw: Any) -> QueueFilter:
    """A queue filter from a POST body's `Filter` object, in mox's field names (any case)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AdminError(400, "badFilter", "Filter must be an object")
    f = {k.lower(): v for k, v in raw.items() if v is not None}

    def cond(name: str) -> Any:
        v = f.get(name)
        return parse_time_condition(name, str(v)) if v not in (None, "") else None

    try:
        ids = f.get("ids") or []
        if isinstance(ids, str):
            ids = [x for x in ids.split(",") if x.strip()]
        hold = f.get("hold")
        if hold is not None and not isinstance(hold, bool):
            raise FilterError("Hold: must be true, false or null")
        return QueueFilter(
            ids=tuple(int(x) for x in ids),
            account=str(f.get("account", "")),
            from_=str(f.get("from", "")),
            to=str(f.get("to", "")),
            hold=hold,
            submitted=cond("submitted"),
            next_attempt=cond("nextattempt"),
            transport=None if f.get("transport") is None else str(f["transport"]),
            max=int(f.get("max", 0) or 0),
        )
    except (FilterError, ValueError, TypeError) as err:
        raise AdminError(400, "badFilter", str(err)) from None


async def signal_all(st: AppState, rows: Sequence[dict[str, Any]], make: Any) -> int:
    """Send one BulkOp signal per submission; returns how many messages were reached."""
    by_base: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        by_base[r["base_id"]].append(r["id"])
    sem = asyncio.Semaphore(_SIGNAL_CONCURRENCY)

    async def one(base_id: int, ids: list[int]) -> int:
        async with sem:
            try:
                await st.client.get_workflow_handle(delivery_workflow_id(base_id)).signal(
                    Delivery.bulk, make(ids)
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
    f = filter_from_json(body.get("Filter"))
    now = datetime.now(UTC)
    rows = await q.matching(st.pool, f, now)
    ids = [r["id"] for r in rows]
    if op in ("hold", "release"):
        rows = await q.update_rows(st.pool, ids, "hold", op == "hold")
        return {"Affected": await signal_all(st, rows, lambda i: BulkOp(op=op, msg_ids=i))}
    if op == "kick":
        rows = await q.update_rows(st.pool, ids, "next_attempt", now)
        return {"Affected": await signal_all(st, rows, lambda i: BulkOp(op="kick", msg_ids=i))}
    if op == "nextattempt":
        if "Set" in body:
            try:
                at = datetime.fromisoformat(str(body["Set"]).replace("Z", "+00:00"))
            except ValueError:
                raise AdminError(400, "badRequest", "Set: not an RFC 3339 time") from None
            if at.tzinfo is None:
                raise AdminError(400, "badRequest", "Set: needs a time zone")
            rows = await q.update_rows(st.pool, ids, "next_attempt", at)
            bulk = lambda i: BulkOp(op="set_next", msg_ids=i, next_attempt=at)  # noqa: E731
        elif "Add" in body:
            try:
                add = parse_duration(str(body["Add"]))
            except ValueError as err:
                raise AdminError(400, "badRequest", f"Add: {err}") from None
            rows = await q.update_rows(st.pool, ids, "add_next_attempt", add)
            bulk = lambda i: BulkOp(op="add_next", msg_ids=i, add_s=add.total_seconds())  # noqa: E731
        else:
            raise AdminError(400, "badRequest", "need Set (a time) or Add (a duration)")
        return {"Affected": await signal_all(st, rows, bulk)}
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
    return {"Affected": await signal_all(st, rows, lambda i: BulkOp(op=op, msg_ids=i))}


def _route(op: str) -> Any:
    async def handler(request: Request) -> dict[str, Any]:
        return await _op(request, op)

    handler.__name__ = f"bulk_{op}"
    handler.__doc__ = f'{op.capitalize()} every queued message matching {{"Filter": {{...}}}}.'
    return handler


for _name in ("hold", "release", "kick", "nextattempt", "transport", "requiretls", "fail", "drop"):
    router.add_api_route(f"/queue/{_name}", _route(_name), methods=["POST"])
