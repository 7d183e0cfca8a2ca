"""Admin API for the webhook queue (spec 03 §3.9, spec 04 §3): list, retired list, schedule, cancel.

The hook rows are changed first, then each hook's workflow is signalled, so a listing right after an
operation already shows its effect and a workflow that is not running misses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from api import adminmodels as m
from api.admin import AdminError, RecordID, _bool, _state, checked, json_body, parse_reschedule
from api.openapi import json_body as body_schema
from domain.filters import FilterError, parse_ids, parse_int, parse_str, parse_time, parse_time_condition
from store import hooks
from workflows.client import signal_webhook

router = APIRouter(prefix="/admin/v0", tags=["admin"])

_SORTS = {"nextattempt": "next_attempt", "submitted": "submitted", "lastactivity": "last_activity"}


def _time(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def hook_json(r: dict[str, Any], retired: bool) -> dict[str, Any]:
    """A hook in mox's field names; the Authorization value itself never leaves the database."""
    out = {
        "ID": r["id"],
        "QueueMsgID": r["queue_msg_id"],
        "FromID": r["from_id"],
        "MessageID": r["message_id"],
        "Subject": r["subject"],
        "Extra": r["extra"],
        "Account": r["account"],
        "URL": r["url"],
        "Authorization": r["has_auth"] if retired else bool(r["auth_header"]),
        "IsIncoming": r["is_incoming"],
        "OutgoingEvent": r["outgoing_event"],
        "Payload": r["payload"],
        "Submitted": _time(r["submitted"]),
        "Attempts": r["attempts"],
        "Results": r["results"],
    }
    if retired:
        out.update(
            SupersededByID=r["superseded_by_id"],
            Success=r["success"],
            LastActivity=_time(r["last_activity"]),
            KeepUntil=_time(r["keep_until"]),
        )
    else:
        out["NextAttempt"] = _time(r["next_attempt"])
    return out


def _filter(raw: Any, now: datetime) -> hooks.HookFilter:
    """A hook filter from query parameters or a POST body's Filter (mox names, any case)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise AdminError(400, "badFilter", "Filter must be an object")
    f = {str(k).lower(): v for k, v in raw.items() if v not in (None, "")}

    def cond(name: str) -> tuple[str, datetime] | None:
        if name not in f:
            return None
        c = parse_time_condition(name, f[name])
        return ("<" if c.before else ">", c.reference(now))

    try:
        return hooks.HookFilter(
            ids=parse_ids(f.get("ids")),
            account=parse_str("account", f.get("account")),
            event=parse_str("event", f.get("event")),
            submitted=cond("submitted"),
            next_attempt=cond("nextattempt"),
            last_activity=cond("lastactivity"),
            max=parse_int("max", f.get("max", 0)),
        )
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None


async def _list(request: Request, retired: bool) -> dict[str, Any]:
    st = _state(request)
    p = request.query_params
    now = datetime.now(UTC)
    f = _filter(dict(p), now)
    default = "lastactivity" if retired else "nextattempt"
    sort = (p.get("sort") or default).lower()
    allowed = ("lastactivity", "submitted") if retired else ("nextattempt", "submitted")
    if sort not in allowed:
        raise AdminError(400, "badFilter", f"sort: must be one of {', '.join(allowed)}")
    last = None
    if p.get("lastid"):
        try:
            last = (parse_time("last", p.get("last", "")), parse_int("lastid", p["lastid"]))
        except FilterError as err:
            raise AdminError(400, "badFilter", f"{err} (lastid needs last)") from None
    rows = await hooks.list_hooks(
        st.pool, f, retired=retired, sort=_SORTS[sort], asc=_bool("asc", p.get("asc")) or False, last=last
    )
    return {"Hooks": [hook_json(r, retired) for r in rows]}


@router.get("/hooks", response_model=m.Hooks, openapi_extra={"parameters": m.HOOK_FILTER_PARAMS})
async def list_hooks(request: Request) -> dict[str, Any]:
    """Pending webhooks, by next attempt (newest first unless asc=true), with keyset paging."""
    return await _list(request, retired=False)


@router.get("/hooks/count", response_model=m.Count)
async def count_hooks(request: Request) -> dict[str, Any]:
    """Number of pending webhooks."""
    return {"Count": await hooks.count(_state(request).pool)}


@router.get(
    "/hooks/retired", response_model=m.RetiredHooks, openapi_extra={"parameters": m.HOOK_FILTER_PARAMS}
)
async def list_retired_hooks(request: Request) -> dict[str, Any]:
    """Delivered, failed, superseded and canceled webhooks kept by their account's keep period."""
    return await _list(request, retired=True)


@router.get("/hooks/{hook_id}", response_model=m.Hook | m.HookRetired)
async def get_hook(hook_id: RecordID, request: Request) -> dict[str, Any]:
    """One hook, pending or retired."""
    st = _state(request)
    row = await hooks.get(st.pool, hook_id)
    if row is not None:
        return hook_json(row, retired=False)
    row = await hooks.get_retired(st.pool, hook_id)
    if row is not None:
        return hook_json(row, retired=True)
    raise AdminError(404, "notFound", f"hook {hook_id} not found")


async def _reschedule(request: Request, at: datetime | None, add: timedelta | None) -> dict[str, Any]:
    st = _state(request)
    body = await json_body(request)
    checked(m.HookNextAttemptChange, body)
    now = datetime.now(UTC)
    f = _filter(body.get("Filter"), now)
    if at is None and add is None:
        at, add = parse_reschedule(body)
    rows = await hooks.schedule(st.pool, f, at=at, add=add)
    for r in rows:
        await signal_webhook(st.client, r["id"], "reschedule", r["next_attempt"])
    return {"Affected": len(rows)}


@router.post("/hooks/kick", response_model=m.Affected, openapi_extra=body_schema(m.HookSelection))
async def kick_hooks(request: Request) -> dict[str, Any]:
    """Make matching hooks due now."""
    return await _reschedule(request, datetime.now(UTC), None)


@router.post(
    "/hooks/nextattempt", response_model=m.Affected, openapi_extra=body_schema(m.HookNextAttemptChange)
)
async def schedule_hooks(request: Request) -> dict[str, Any]:
    """Set (`Set`: time) or shift (`Add`: duration, may be negative) the next attempt of matching hooks."""
    return await _reschedule(request, None, None)


@router.post("/hooks/cancel", response_model=m.Affected, openapi_extra=body_schema(m.HookSelection))
async def cancel_hooks(request: Request) -> dict[str, Any]:
    """Remove matching hooks from the queue; kept as retired with "canceled by admin" where retained."""
    st = _state(request)
    body = await json_body(request)
    checked(m.HookSelection, body)
    now = datetime.now(UTC)
    f = _filter(body.get("Filter"), now)
    ids = await hooks.cancel(st.pool, f, now, st.config.retired_webhook_keep)
    for i in ids:
        await signal_webhook(st.client, i, "stop")
    return {"Affected": len(ids)}
