"""The admin API (spec 04 §3): inspect the queue and steer single messages through their workflow."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from api import adminmodels as m
from api import views
from api.body import BodyTooLarge, read_body
from api.openapi import query
from api.state import AppState
from domain.apiinput import ADMIN_JSON_LIMIT, InputError, load_json
from domain.contracts import AdminOp, MsgStatus, delivery_workflow_id
from domain.durations import parse_duration
from domain.filters import (
    MAX_ID,
    FilterError,
    QueueFilter,
    parse_bool,
    parse_int,
    parse_retired_sort,
    parse_sort,
    parse_time,
    queue_filter,
    retired_filter,
)
from store import dsns, tlsresults
from store import queue as q
from workflows.delivery import Delivery

log = logging.getLogger("tempost.admin")
_RFC822: dict[int | str, dict[str, Any]] = {
    200: {"description": "The message.", "content": {"message/rfc822": {"schema": {"type": "string"}}}}
}
_RPC_TIMEOUT = timedelta(seconds=10)

router = APIRouter(prefix="/admin/v0", tags=["admin"])

# A record id in a path: a positive PostgreSQL bigint; anything else is a 400, not a database error.
RecordID = Annotated[int, Path(ge=1, le=MAX_ID)]


class AdminError(Exception):
    """An admin API error with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(err: AdminError) -> JSONResponse:
    """The JSON body of an admin error."""
    return JSONResponse({"Code": err.code, "Message": err.message}, status_code=err.status)


def _state(request: Request) -> AppState:
    """The app state for an admin call whose bearer token checks out; wrong tokens count against the
    caller's address in the failed-auth limiter, as wrong webapi passwords do (spec 03 §5.2)."""
    st: AppState = request.app.state.tempost
    authorization = request.headers.get("authorization")
    if not authorization:
        raise AdminError(401, "unauthorized", "admin bearer token required")
    ip = request.client.host if request.client else ""
    now = datetime.now(UTC)
    if not st.auth_limiter.attempt(ip, now):
        raise AdminError(429, "tooManyAuthAttempts", "too many failed authentication attempts; wait")
    if not st.auth.admin(authorization):
        raise AdminError(401, "unauthorized", "admin bearer token required")
    st.auth_limiter.succeeded(ip, now)
    return st


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (strings without NUL, which PostgreSQL cannot store), or a 400
    badRequest; 413 requestTooLarge past ADMIN_JSON_LIMIT."""
    try:
        body = load_json(await read_body(request, ADMIN_JSON_LIMIT))
    except BodyTooLarge as err:
        raise AdminError(413, "requestTooLarge", str(err)) from None
    except InputError as err:
        raise AdminError(400, "badRequest", f"body must be a JSON object: {err}") from None
    if not isinstance(body, dict):
        raise AdminError(400, "badRequest", "body must be a JSON object")
    if _has_nul(body):
        raise AdminError(400, "badRequest", "strings must not contain NUL")
    return body


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


# The error code of a body field of the wrong type, where it is not badRequest.
_FIELD_CODES = {
    "Filter": "badFilter",
    "SenderDomain": "badDomain",
    "RecipientDomain": "badDomain",
    "EmailAddress": "badAddress",
}


def checked(model: type[BaseModel], body: dict[str, Any]) -> None:
    """Refuse a body whose fields do not fit `model`, the schema /openapi.json shows for it: 400 with the
    field's code (badFilter for the Filter, badDomain, badAddress), badRequest otherwise."""
    try:
        model.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        code = _FIELD_CODES.get(str(first["loc"][0]) if first["loc"] else "", "badRequest")
        raise AdminError(400, code, f"{where}: {first['msg']}") from None


def _bool(name: str, v: str | None) -> bool | None:
    try:
        return parse_bool(name, v)
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None


def parse_queue_filter(raw: Any) -> QueueFilter:
    """A queue filter from query parameters or a POST body's `Filter` (domain.filters.queue_filter)."""
    try:
        return queue_filter(raw)
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None


def parse_reschedule(body: Mapping[str, Any]) -> tuple[datetime | None, timedelta | None]:
    """`{"Set": time}` or `{"Add": duration}` of a next-attempt change: (time, None) or (None, duration)."""
    if "Set" in body:
        try:
            return parse_time("Set", body["Set"]), None
        except FilterError as err:
            raise AdminError(400, "badRequest", str(err)) from None
    if "Add" in body:
        if not isinstance(body["Add"], str):
            raise AdminError(400, "badRequest", 'Add: must be a duration string such as "1h30m"')
        try:
            return None, parse_duration(body["Add"])
        except ValueError as err:
            raise AdminError(400, "badRequest", f"Add: {err}") from None
    raise AdminError(400, "badRequest", "need Set (a time) or Add (a duration)")


def _sort_position(p: Mapping[str, str]) -> tuple[bool, int, str]:
    """asc, lastid and last of a listing's query parameters."""
    try:
        asc = parse_bool("asc", p.get("asc")) or False
        return asc, parse_int("lastid", p.get("lastid") or 0), p.get("last", "")
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None


@router.get(
    "/queue",
    response_model=m.Messages,
    openapi_extra={
        "parameters": [*m.QUEUE_FILTER_PARAMS, query("sort", "nextattempt or queued."), *m.SORT_PARAMS]
    },
)
async def list_queue(request: Request) -> dict[str, Any]:
    """Queued messages matching the filter, sorted, with keyset paging."""
    st = _state(request)
    f = parse_queue_filter(request.query_params)
    p = request.query_params
    try:
        sort = parse_sort(p.get("sort", ""), *_sort_position(p))
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None
    rows = await q.list_msgs(st.pool, f, sort, datetime.now(UTC))
    return {"Messages": [views.queued_msg(r) for r in rows]}


@router.get(
    "/retired",
    response_model=m.RetiredMessages,
    openapi_extra={
        "parameters": [
            *m.QUEUE_FILTER_PARAMS,
            query("lastactivity", "`<` or `>` a duration or now."),
            query("success", "true or false."),
            query("sort", "lastactivity or queued."),
            *m.SORT_PARAMS,
        ]
    },
)
async def list_retired(request: Request) -> dict[str, Any]:
    """Retired messages (kept per the account's keep period), filtered and keyset paged (spec 01 §6.5)."""
    st = _state(request)
    p = request.query_params
    now = datetime.now(UTC)
    try:
        f = retired_filter(p)
        sort = parse_retired_sort(p.get("sort", ""), *_sort_position(p))
    except FilterError as err:
        raise AdminError(400, "badFilter", str(err)) from None
    rows = await q.list_retired(st.pool, f, sort, now)
    return {"Messages": [views.retired_msg(r) for r in rows]}


@router.get("/retired/{msg_id}", response_model=m.MsgRetired)
async def get_retired(msg_id: RecordID, request: Request) -> dict[str, Any]:
    """One retired message with its Results."""
    row = await q.get_retired(_state(request).pool, msg_id)
    if row is None:
        raise AdminError(404, "notFound", f"retired message {msg_id} not found")
    return views.retired_msg(row)


@router.get("/dsns", response_model=m.DSNs, openapi_extra={"parameters": [query("account", "Account.")]})
async def list_dsns(request: Request) -> dict[str, Any]:
    """DSNs composed about outgoing messages, newest first (`account` filters)."""
    st = _state(request)
    rows = await dsns.list_dsns(st.pool, request.query_params.get("account", ""))
    return {
        "DSNs": [
            {
                "ID": r["id"],
                "Created": r["created"].isoformat(),
                "Account": r["account"],
                "QueueMsgID": r["msg_id"],
                "Kind": r["kind"],
                "Sender": r["sender"],
                "Recipient": r["recipient"],
                "DeliveryBaseID": r["queue_base_id"],
            }
            for r in rows
        ]
    }


@router.get("/dsns/{dsn_id}/raw", response_class=Response, responses=_RFC822)
async def raw_dsn(dsn_id: RecordID, request: Request) -> Response:
    """The DSN message as composed."""
    data = await dsns.raw_dsn(_state(request).pool, dsn_id)
    if data is None:
        raise AdminError(404, "notFound", f"dsn {dsn_id} not found")
    return Response(data, media_type="message/rfc822")


@router.get(
    "/tlsresults",
    response_model=m.TLSResults,
    openapi_extra={"parameters": [query("day", "UTC day, yyyymmdd."), query("domain", "Policy domain.")]},
)
async def tls_results(request: Request) -> dict[str, Any]:
    """TLS results recorded by direct delivery, for TLS reports (spec 02 §6); filter by day, domain."""
    st = _state(request)
    p = request.query_params
    rows = await tlsresults.list_results(st.pool, p.get("day", ""), p.get("domain", ""))
    return {
        "Results": [
            {
                "PolicyDomain": r["policy_domain"],
                "DayUTC": r["day"],
                "RecipientDomain": r["recipient_domain"],
                "IsHost": r["is_host"],
                "SendReport": r["send_report"],
                "Result": r["result"],
            }
            for r in rows
        ]
    }


@router.get("/queue/count", response_model=m.Count, openapi_extra={"parameters": m.QUEUE_FILTER_PARAMS})
async def count_queue(request: Request) -> dict[str, Any]:
    """Number of queued messages matching the filter."""
    st = _state(request)
    return {"Count": await q.count_msgs(st.pool, parse_queue_filter(request.query_params), datetime.now(UTC))}


async def _live(st: AppState, base_id: int, msg_id: int) -> MsgStatus | None:
    try:
        status = await st.client.get_workflow_handle(delivery_workflow_id(base_id)).query(
            Delivery.status, rpc_timeout=_RPC_TIMEOUT
        )
    except Exception:  # noqa: BLE001 - the live view is a bonus; PostgreSQL still answers
        return None
    return next((m for m in status.msgs if m.id == msg_id), None)


async def message_view(st: AppState, msg_id: int) -> dict[str, Any] | None:
    """A queued message with its live state from the workflow, or a retired message; None if neither.

    Shared by the admin API and the webapi's MessageStatus, which checks the account itself.
    """
    row = await q.get_msg(st.pool, msg_id)
    if row is None:
        retired = await q.get_retired(st.pool, msg_id)
        return views.retired_msg(retired) if retired is not None else None
    out = views.queued_msg(row)
    live = await _live(st, row["base_id"], msg_id)
    if live is not None:
        out["State"] = live.state.value
        out["Attempts"] = max(out["Attempts"], live.attempts)
        out["Hold"] = live.hold
        out["NextAttempt"] = live.next_attempt.isoformat() if live.next_attempt else None
    return out


@router.get("/queue/{msg_id}", response_model=m.Msg | m.MsgRetired, response_model_exclude_unset=True)
async def get_msg(msg_id: RecordID, request: Request) -> dict[str, Any]:
    """One queued message with its Results and NextAttempt, and its live state from the workflow."""
    out = await message_view(_state(request), msg_id)
    if out is None:
        raise AdminError(404, "notFound", f"message {msg_id} not queued")
    return out


@router.get("/queue/{msg_id}/raw", response_class=Response, responses=_RFC822)
async def raw_message(msg_id: RecordID, request: Request) -> Response:
    """The message exactly as it will be sent."""
    st = _state(request)
    data = await q.raw_message(st.pool, msg_id)
    if data is None:
        raise AdminError(404, "notFound", f"message {msg_id} not queued")
    return Response(data, media_type="message/rfc822")


_OPS = {
    "hold": Delivery.hold,
    "release": Delivery.release,
    "fail": Delivery.fail,
    "drop": Delivery.drop,
    "kick": Delivery.kick,
}


_ONE_DOES = {
    "hold": "Hold one message: no attempts until released.",
    "release": "Release one held message.",
    "fail": "Fail one message: failure DSN and `failed` webhook, then retired.",
    "drop": "Drop one message: no DSN, `canceled` webhook, then retired.",
    "kick": "Make one message's next attempt now.",
}
# The answer: the message as it is after the operation, queued, retired, or gone.
_ONE_RESULT = m.Msg | m.MsgRetiredAfterOp | m.MsgGoneAfterOp


def _one_route(op: str) -> None:
    async def endpoint(msg_id: RecordID, request: Request) -> dict[str, Any]:
        return await _one(request, msg_id, op)

    router.add_api_route(
        f"/queue/{{msg_id}}/{op}",
        endpoint,
        methods=["POST"],
        name=f"message_{op}",
        summary=_ONE_DOES[op],
        description="A validated update of the message's workflow, answered once the workflow took it.",
        response_model=_ONE_RESULT,
        response_model_exclude_unset=True,
        responses={
            409: {"model": m.AdminErrorResponse, "description": "Not allowed in the message's state."}
        },
    )


for _op in _OPS:
    _one_route(_op)


# Hidden: not an operation, only the API's 404 for an operation name that does not exist.
@router.post("/queue/{msg_id}/{op}", include_in_schema=False)
async def unknown_one(msg_id: RecordID, op: str, request: Request) -> dict[str, Any]:
    """An unknown single-message operation."""
    _state(request)
    raise AdminError(404, "notFound", f"unknown operation {op!r}")


async def _one(request: Request, msg_id: int, op: str) -> dict[str, Any]:
    """Hold, release, fail, drop or kick one message: a validated update of its workflow."""
    st = _state(request)
    update = _OPS[op]
    row = await q.get_msg(st.pool, msg_id)
    if row is None:
        raise AdminError(404, "notFound", f"message {msg_id} not queued")
    handle = st.client.get_workflow_handle(delivery_workflow_id(row["base_id"]))
    try:
        status = await handle.execute_update(
            update,
            AdminOp(msg_id=msg_id),
            result_type=MsgStatus,
            rpc_timeout=_RPC_TIMEOUT,  # type: ignore[call-overload]
        )
    except WorkflowUpdateFailedError as err:
        raise AdminError(409, "conflict", str(err.cause or err)) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise AdminError(503, "unavailable", "no worker answered in time; try again") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise AdminError(404, "notFound", f"message {msg_id} no longer queued") from None
        raise AdminError(503, "unavailable", f"temporal: {err.message}") from None
    row = await q.get_msg(st.pool, msg_id) or await q.get_retired(st.pool, msg_id)
    if row is None:
        out: dict[str, Any] = {"ID": msg_id}
    else:
        out = views.queued_msg(row) if "hold" in row else views.retired_msg(row)
    # The workflow's answer is the truth at the moment of the update; the row may already have moved on
    # (a released message can be delivered and retired before we read it).
    out["State"] = status.state.value
    out["Hold"] = status.hold
    return out
