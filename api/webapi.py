"""The application API, compatible with mox's webapi v0 (spec 03 §5, spec 04 §1)."""

from __future__ import annotations

import html
import json
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from api.auth import Login
from api.state import AppState
from domain.addresses import AddressError, parse_address
from domain.errors import WebAPIError
from domain.fromid import sender_localpart
from domain.holdrules import holds_new
from domain.send import AccountIdentity, UploadedFile, compose_send, decode_object, decode_send_request
from domain.suppression import base_address, original_address
from store import holdrules, suppressions
from store import queue as q
from workflows.client import delivery_input, delivery_summary, start_delivery

log = logging.getLogger("tempost.webapi")

router = APIRouter()

METHODS = ["Send", "SuppressionList", "SuppressionAdd", "SuppressionRemove", "SuppressionPresent"]


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=400)


def _unauthorized() -> Response:
    return PlainTextResponse(
        "401 - unauthorized - use http basic auth with email address as username",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="webapi"'},
    )


@router.get("/webapi")
@router.get("/webapi/")
async def webapi_root() -> Response:
    """Point browsers at the versioned index."""
    return RedirectResponse("/webapi/v0/", status_code=303)


@router.api_route("/webapi/v0/", methods=["GET", "POST", "HEAD"])
async def webapi_index() -> Response:
    """A plain index of the methods."""
    items = "".join(f'<li><a href="{m}">{m}</a></li>' for m in METHODS)
    return Response(f"<!doctype html><title>webapi v0</title><ul>{items}</ul>", media_type="text/html")


async def _request_object(request: Request) -> tuple[Any, list[UploadedFile], list[UploadedFile]]:
    """The JSON request object and uploaded files, from a form field `request` or a JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        # Tempost extension (spec 04 §1): the request object as the whole body.
        body = await request.body()
        return body, [], []
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise WebAPIError("protocol", f"unsupported content-type {ctype!r}")
    try:
        form = await request.form()
    except Exception as err:  # noqa: BLE001 - any parse failure is the caller's protocol error
        raise WebAPIError("protocol", f"parsing form: {err}") from None
    raw = form.get("request")
    if not isinstance(raw, str) or not raw:
        raise WebAPIError("protocol", "missing or empty form field request")
    inline: list[UploadedFile] = []
    attached: list[UploadedFile] = []
    for field, out in (("inlinefile", inline), ("attachedfile", attached)):
        for f in form.getlist(field):
            if isinstance(f, UploadFile):
                out.append(
                    UploadedFile(
                        name=f.filename or "",
                        content_type=f.headers.get("content-type", ""),
                        content_id=f.headers.get("content-id", ""),
                        data=await f.read(),
                    )
                )
    return raw, inline, attached


_EXAMPLES = {
    "Send": {"To": [{"Name": "", "Address": "bob@example.com"}], "Subject": "hi", "Text": "hello"},
    "SuppressionList": {},
    "SuppressionAdd": {"EmailAddress": "bob@example.com", "Manual": True, "Reason": "asked to stop"},
    "SuppressionRemove": {"EmailAddress": "bob@example.com"},
    "SuppressionPresent": {"EmailAddress": "bob@example.com"},
}


@router.get("/webapi/v0/{method}")
async def method_page(method: str) -> Response:
    """A page with an example request and a form to try the method; needs no authentication."""
    if method not in METHODS:
        return PlainTextResponse("404 - not found", status_code=404)
    example = html.escape(json.dumps(_EXAMPLES.get(method, {}), indent="\t"))
    page = (
        f"<!doctype html><title>webapi v0 {method}</title><h1>{method}</h1>"
        f'<form method="post" enctype="multipart/form-data">'
        f'<textarea name="request" rows="12" cols="80">{example}</textarea><br>'
        f'<button type="submit">call</button></form>'
    )
    return Response(page, media_type="text/html")


@router.post("/webapi/v0/{method}")
async def call(method: str, request: Request) -> Response:
    """Authenticate and run one webapi method."""
    st: AppState = request.app.state.tempost
    if method not in METHODS:
        return PlainTextResponse("404 - not found", status_code=404)
    authorization = request.headers.get("authorization")
    if not authorization:
        # Missing credentials are a client asking how to log in, not an attack: not counted.
        return _unauthorized()
    ip = request.client.host if request.client else ""
    now = datetime.now(UTC)
    if not st.auth_limiter.allowed(ip, now):
        return PlainTextResponse("429 - too many auth attempts", status_code=429)
    login = st.auth.basic(authorization)
    if login is None:
        st.auth_limiter.failed(ip, now)
        return _unauthorized()
    st.auth_limiter.succeeded(ip, now)
    try:
        raw, inline, attached = await _request_object(request)
        if method == "Send":
            return JSONResponse(await _send(st, login, raw, inline, attached))
        text = raw if not isinstance(raw, bytes) else raw.decode("utf-8", "replace")
        return JSONResponse(await _suppression(st, login, method, text))
    except WebAPIError as err:
        return _error(err.code, err.message)
    except Exception:  # noqa: BLE001 - internal failures are the `server` code, details in the log only
        log.exception("webapi %s", method)
        return _error("server", "unhandled error")
    return PlainTextResponse("404 - not found", status_code=404)


def suppression_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": r["id"],
        "Created": r["created"].isoformat(),
        "Account": r["account"],
        "BaseAddress": r["base_address"],
        "OriginalAddress": r["original_address"],
        "Manual": r["manual"],
        "Reason": r["reason"],
    }


async def _suppression(st: AppState, login: Login, method: str, raw: str) -> dict[str, Any]:
    """The Suppression* methods (spec 03 §5.5), always on the caller's own account."""
    account = login.account.name
    fields = {"SuppressionList": set(), "SuppressionAdd": {"EmailAddress", "Manual", "Reason"}}.get(
        method, {"EmailAddress"}
    )
    req = decode_object(raw, fields)
    if method == "SuppressionList":
        return {
            "Suppressions": [suppression_json(r) for r in await suppressions.list_account(st.pool, account)]
        }
    try:
        addr = parse_address(str(req.get("EmailAddress", "")))
    except AddressError as err:
        raise WebAPIError("badAddress", f"parsing address: {err}") from None
    base = base_address(addr)
    if method == "SuppressionPresent":
        return {"Present": await suppressions.present(st.pool, account, base)}
    if method == "SuppressionAdd":
        try:
            await suppressions.add(
                st.pool,
                account,
                base,
                original_address(addr),
                manual=bool(req.get("Manual", False)),
                reason=str(req.get("Reason", "")),
            )
        except suppressions.DuplicateSuppression as err:
            raise WebAPIError("error", str(err)) from None
        return {}
    try:
        await suppressions.remove(st.pool, account, base)
    except suppressions.AbsentSuppression:
        raise WebAPIError("error", "absent") from None
    return {}


async def _send(
    st: AppState, login: Login, raw: Any, inline: list[UploadedFile], attached: list[UploadedFile]
) -> dict[str, Any]:
    req = decode_send_request(raw if not isinstance(raw, bytes) else raw.decode("utf-8", "replace"))
    now = datetime.now(UTC)
    acc = login.account
    msg = compose_send(
        req,
        login_address=login.address,
        account=AccountIdentity(name=acc.name, full_name=acc.full_name, addresses=list(acc.addresses)),
        hostname=st.config.hostname,
        now=now,
        max_message_size=st.config.api.max_message_size,
        random_token=lambda: secrets.token_urlsafe(16),
        inline_uploads=inline,
        attached_uploads=attached,
    )
    next_attempt = msg.future_release or now
    # A login listed for FromID gets a unique MAIL FROM per recipient, so bounces can be matched.
    use_fromid = login.address.lower() in (a.lower() for a in acc.fromid_login_addresses)
    separator = st.config.separator(msg.sender.domain) if use_fromid else ""
    if use_fromid and not separator:
        raise WebAPIError("user", "from address domain has no catch-all separator for fromid")
    from_ids = [secrets.token_urlsafe(16) if use_fromid else "" for _ in msg.recipients]
    try:
        # One connection for the hold rules and the insert: this is the hot path of every Send.
        async with st.pool.connection() as conn, conn.transaction():
            rules = await holdrules.list_rules(conn)
            held = [
                any(holds_new(r, acc.name, msg.sender.domain_unicode, rcpt.domain_unicode) for r in rules)
                for _, rcpt in msg.recipients
            ]
            new = [
                q.NewMsg(
                    sender_localpart=(
                        sender_localpart(msg.sender.localpart, separator, fid)
                        if fid
                        else msg.sender.localpart
                    ),
                    sender_domain=msg.sender.domain,
                    sender_domain_str=msg.sender.domain_unicode,
                    recipient_localpart=rcpt.localpart,
                    recipient_domain=rcpt.domain,
                    recipient_domain_str=rcpt.domain_unicode,
                    next_attempt=next_attempt,
                    size=len(msg.data),
                    message_id=msg.message_id,
                    subject=msg.subject,
                    has8bit=msg.has8bit,
                    smtputf8=msg.smtputf8,
                    require_tls=msg.require_tls,
                    future_release_request=msg.future_release_request,
                    extra=msg.extra,
                    from_id=fid,
                    hold=h,
                )
                for (_, rcpt), fid, h in zip(msg.recipients, from_ids, held, strict=True)
            ]
            base_id, ids = await q.insert_submission(conn, acc.name, msg.data, now, new)
    except Exception as err:
        log.exception("queueing submission")
        raise WebAPIError("server", "queueing message failed") from err
    inp = delivery_input(
        base_id,
        acc.name,
        [(mid, rcpt.domain_unicode) for mid, (_, rcpt) in zip(ids, msg.recipients, strict=True)],
        st.config.queue,
        release_at=msg.future_release,
        separate=use_fromid,
        held_ids=[mid for mid, h in zip(ids, held, strict=True) if h],
    )
    summary = delivery_summary(msg.sender.unicode, [r.unicode for _, r in msg.recipients])
    try:
        await start_delivery(st.client, st.config.temporal.task_queue, inp, summary)
        await q.mark_workflow_started(st.pool, base_id)
    except Exception:  # noqa: BLE001 - the message is durably queued; the worker's sweeper starts it
        log.exception("starting delivery of submission %d; the worker will start it later", base_id)
    return {
        "MessageID": msg.message_id,
        "Submissions": [
            {"Address": given, "QueueMsgID": mid, "FromID": fid}
            for mid, (given, _), fid in zip(ids, msg.recipients, from_ids, strict=True)
        ],
    }
