"""Bulk admin operations over a queue filter (spec 01 §5.3, spec 04 §3): hold, release, kick, reschedule,
transport, requiretls, fail and drop.

The queue rows are written first (so a listing right after shows the effect), together with one pending
signal per affected submission (store.signals), in one transaction; then every signal is sent. Signals are
accepted even while no worker runs, and are sent with bounded concurrency, so thousands of workflows are
reached in seconds; `Affected` counts the messages whose workflow was told. A signal Temporal refuses is
sent again by the workers' sweeper until it lands: the answer is then 503, and the change still happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from api import adminmodels as m
from api.admin import AdminError, _state, checked, json_body, parse_queue_filter, parse_reschedule
from api.openapi import json_body as body_schema
from api.state import AppState
from domain.contracts import BulkOp
from store import queue as q
from store import signals
from workflows.client import signal_bulk

router = APIRouter(prefix="/admin/v0", tags=["admin"])


async def signal_all(
    st: AppState, ids: Sequence[int], change: BulkOp, column: str | None = None, value: Any = None
) -> int:
    """Write `column` on the queued rows among `ids` and tell each of their submissions `change`; returns
    how many messages were reached. 503 when some workflows could not be told now (they will be)."""
    pending = await signals.change_and_queue(
        st.pool,
        ids,
        change.model_dump(mode="json", exclude={"msg_ids", "op_id"}),
        datetime.now(UTC),
        column,
        value,
    )
    changes = [signals.bulk_op(p) for p in pending]
    ok = await signal_bulk(st.client, [(p.base_id, c) for p, c in zip(pending, changes, strict=True)])
    done = [p.id for p, landed in zip(pending, ok, strict=True) if landed]
    reached = sum(len(c.msg_ids) for c, landed in zip(changes, ok, strict=True) if landed)
    await signals.landed(st.pool, done)
    if len(done) < len(pending):
        raise AdminError(
            503,
            "unavailable",
            f"temporal did not take {len(pending) - len(done)} of {len(pending)} signals; the change is "
            "recorded and the workers send them again until they land",
        )
    return reached


async def _op(request: Request, op: str) -> dict[str, Any]:
    st = _state(request)
    body = await json_body(request)
    checked(_BODIES[op], body)
    f = parse_queue_filter(body.get("Filter"))
    now = datetime.now(UTC)
    rows = await q.matching(st.pool, f, now)
    ids = [r["id"] for r in rows]
    if op in ("hold", "release"):
        return {"Affected": await signal_all(st, ids, BulkOp(op=op), "hold", op == "hold")}
    if op == "kick":
        return {"Affected": await signal_all(st, ids, BulkOp(op="kick"), "next_attempt", now)}
    if op == "nextattempt":
        at, add = parse_reschedule(body)
        if at is not None:
            change = BulkOp(op="set_next", next_attempt=at)
            return {"Affected": await signal_all(st, ids, change, "next_attempt", at)}
        assert add is not None
        change = BulkOp(op="add_next", add_s=add.total_seconds())
        return {"Affected": await signal_all(st, ids, change, "add_next_attempt", add)}
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
    return {"Affected": await signal_all(st, ids, BulkOp(op=op))}


# What each operation does and the body it takes.
_DOES = {
    "hold": "Hold every queued message matching the filter.",
    "release": "Release every held message matching the filter.",
    "kick": "Make the next attempt of every matching message now.",
    "nextattempt": "Set (`Set`: a time) or shift (`Add`: a duration) the next attempt of matches.",
    "transport": 'Deliver matches through a named transport ("": by routing).',
    "requiretls": "Set RequireTLS of matches: true, false or null.",
    "fail": "Fail matches: failure DSN and `failed` webhook, then retired.",
    "drop": "Drop matches: no DSN, `canceled` webhook, then retired.",
}
_BODIES: dict[str, type[m.QueueSelection]] = {
    "hold": m.QueueSelection,
    "release": m.QueueSelection,
    "kick": m.QueueSelection,
    "nextattempt": m.NextAttemptChange,
    "transport": m.TransportChange,
    "requiretls": m.RequireTLSChange,
    "fail": m.QueueSelection,
    "drop": m.QueueSelection,
}


def _bulk_route(op: str) -> None:
    async def endpoint(request: Request) -> dict[str, Any]:
        return await _op(request, op)

    router.add_api_route(
        f"/queue/{op}",
        endpoint,
        methods=["POST"],
        name=f"queue_{op}",
        summary=_DOES[op],
        response_model=m.Affected,
        openapi_extra=body_schema(_BODIES[op]),
    )


for _name in _DOES:
    _bulk_route(_name)


# Hidden: not an operation, only the API's 404 for an operation name that does not exist.
@router.post("/queue/{op}", include_in_schema=False)
async def unknown_bulk(op: str, request: Request) -> dict[str, Any]:
    """An unknown bulk operation."""
    _state(request)
    raise AdminError(404, "notFound", f"unknown operation {op!r}")
