"""Admin API for incoming bounces (spec 03 §4): hand over a raw DSN addressed to a FromID address.

The message is stored first and matched by a Bounce workflow on the worker, so a bounce accepted here is
never lost; the call waits briefly for the outcome and says what the bounce was taken for.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import adminmodels as m
from api.admin import AdminError, _state
from api.body import BodyTooLarge, read_body
from api.openapi import query
from domain.addresses import AddressError, parse_address
from domain.apiinput import request_body_limit
from domain.contracts import BounceResult
from domain.webhooks import enhanced_code
from store import bounces
from workflows.client import start_bounce

router = APIRouter(prefix="/admin/v0", tags=["admin"])

# How long the call waits for the worker's verdict before answering 202 with the bounce id.
_WAIT = timedelta(seconds=15)


def result_json(r: BounceResult) -> dict[str, Any]:
    """A bounce outcome in the API's CamelCase."""
    return {
        "ID": r.bounce_id,
        "Matched": r.matched,
        "Event": r.event,
        "QueueMsgID": r.queue_msg_id,
        "FromID": r.from_id,
        "DSN": r.dsn,
        "SMTPCode": r.code,
        "SMTPEnhancedCode": enhanced_code(r.code, r.secode),
        "Suppressing": r.suppressing,
        "Detail": r.detail,
    }


@router.post(
    "/bounces",
    response_model=m.BounceOutcome,
    responses={202: {"model": m.BounceStored, "description": "Stored; the worker is still matching it."}},
    openapi_extra={
        "parameters": [
            {
                "name": "rcpt",
                "in": "query",
                "required": True,
                "description": "The FromID address the bounce was sent to.",
                "schema": {"type": "string", "examples": ["alice+fromid@example.org"]},
            },
            query("mailfrom", "The bounce's MAIL FROM, if known."),
        ],
        "requestBody": {
            "required": True,
            "content": {"message/rfc822": {"schema": {"type": "string"}}},
        },
    },
)
async def post_bounce(request: Request) -> Any:
    """Take a raw message (the body) sent to `rcpt` (the FromID address), from `mailfrom` if known."""
    st = _state(request)
    rcpt = request.query_params.get("rcpt", "")
    try:
        parse_address(rcpt)
    except AddressError as err:
        raise AdminError(400, "badAddress", f"rcpt: {err}") from None
    try:
        data = await read_body(request, request_body_limit(st.config.api.max_message_size))
    except BodyTooLarge as err:
        raise AdminError(413, "messageTooLarge", str(err)) from None
    if not data:
        raise AdminError(400, "missingBody", "the raw message is the request body")
    bounce_id = await bounces.store(st.pool, request.query_params.get("mailfrom", ""), rcpt, bytes(data))
    try:
        handle = await start_bounce(st.client, st.config.temporal.task_queue, bounce_id)
        async with asyncio.timeout(_WAIT.total_seconds()):
            result = await handle.result()
    except Exception:  # noqa: BLE001 - a timeout or Temporal away: stored, the worker's sweeper finishes it
        return JSONResponse({"ID": bounce_id, "Matched": None}, status_code=202)
    return result_json(result)
