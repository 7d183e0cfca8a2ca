"""The application API, compatible with mox's webapi v0 (spec 03 §5, spec 04 §1)."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from api import openapi
from api.admin import message_view
from api.auth import AuthBusy, AuthLimited, Login
from api.body import BodyTooLarge, read_body, read_form
from api.state import AppState, NotConnected
from domain import idempotency as idem
from domain import unsubscribe
from domain.addresses import MAX_LOCALPART, AddressError, parse_address
from domain.apiinput import InputError, request_body_limit
from domain.config import AccountConfig
from domain.contracts import MsgState, RetireEvent
from domain.dkim import SigningError
from domain.dkim import sign as dkim_sign
from domain.errors import WebAPIError
from domain.filters import MAX_ID
from domain.fromid import sender_localpart
from domain.holdrules import holds_new
from domain.send import (
    AccountIdentity,
    ComposedMessage,
    SendRequest,
    UploadedFile,
    compose_send,
    decode_send_request,
    received_header,
)
from domain.sendraw import SendRawRequest, check_send_raw, decode_send_raw_request
from domain.suppression import base_address, original_address
from domain.webapimodels import (
    EmptyResult,
    MessageStatusRequest,
    MessageStatusResult,
    SendResult,
    SuppressionAddRequest,
    SuppressionAddressRequest,
    SuppressionListRequest,
    SuppressionListResult,
    SuppressionPresentResult,
    WebAPIErrorResponse,
    decode_model,
)
from store import holdrules, idempotency, suppressions
from store import queue as q
from workflows.client import delivery_input, delivery_summary, start_delivery

log = logging.getLogger("tempost.webapi")
# Workflow starts in flight at once for a Send split into a submission per recipient.
_CONCURRENT_STARTS = 16

router = APIRouter(tags=["webapi"])

METHODS = [
    "Send",
    "SendRaw",
    "MessageStatus",
    "SuppressionList",
    "SuppressionAdd",
    "SuppressionRemove",
    "SuppressionPresent",
]
# Methods that queue mail, and so honour an Idempotency-Key header (spec 04 §1).
_QUEUEING = ("Send", "SendRaw")


def _error(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=status)


def _unauthorized() -> Response:
    return PlainTextResponse(
        "401 - unauthorized - use http basic auth with email address as username",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="webapi"'},
    )


# The HTML pages under /webapi are for people trying the API in a browser, not API operations: they are
# left out of /openapi.json.
@router.get("/webapi", include_in_schema=False)
@router.get("/webapi/", include_in_schema=False)
async def webapi_root() -> Response:
    """Point browsers at the versioned index."""
    return RedirectResponse("/webapi/v0/", status_code=303)


@router.api_route("/webapi/v0/", methods=["GET", "POST", "HEAD"], include_in_schema=False)
async def webapi_index() -> Response:
    """A plain index of the methods."""
    items = "".join(f'<li><a href="{m}">{m}</a></li>' for m in METHODS)
    return Response(f"<!doctype html><title>webapi v0</title><ul>{items}</ul>", media_type="text/html")


@dataclass(frozen=True)
class _Call:
    """What a webapi call carries: the JSON request object and any files sent along with it."""

    request: str
    inline: list[UploadedFile] = field(default_factory=list)
    attached: list[UploadedFile] = field(default_factory=list)
    # SendRaw's message, from the file part `message`; None when there is none.
    message: bytes | None = None

    def digest_parts(self) -> list[bytes]:
        """Everything that makes two calls the same request, for Idempotency-Key comparison."""
        parts = [self.request.encode()]
        for group, files in ((b"inline", self.inline), (b"attached", self.attached)):
            for f in files:
                parts += [group, f.name.encode(), f.content_type.encode(), f.content_id.encode(), f.data]
        if self.message is not None:
            parts += [b"message", self.message]
        return parts


async def _upload(f: UploadFile) -> UploadedFile:
    return UploadedFile(
        name=f.filename or "",
        content_type=f.headers.get("content-type", ""),
        content_id=f.headers.get("content-id", ""),
        data=await f.read(),
    )


async def _request_object(request: Request, limit: int) -> _Call:
    """The JSON request object and uploaded files, from a form field `request` or a JSON body of at most
    `limit` bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            # Tempost extension (spec 04 §1): the request object as the whole body.
            body = await read_body(request, limit)
            try:
                return _Call(body.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise WebAPIError("protocol", f"body is not valid UTF-8 at byte {err.start}") from None
        if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise WebAPIError("protocol", f"unsupported content-type {ctype!r}")
        form = await read_form(request, limit)
    except BodyTooLarge as err:
        raise WebAPIError("messageTooLarge", str(err)) from None
    except InputError as err:
        raise WebAPIError("protocol", f"parsing form: {err}") from None
    raw = form.get("request")
    if not isinstance(raw, str) or not raw:
        raise WebAPIError("protocol", "missing or empty form field request")
    inline = [await _upload(f) for f in form.getlist("inlinefile") if isinstance(f, UploadFile)]
    attached = [await _upload(f) for f in form.getlist("attachedfile") if isinstance(f, UploadFile)]
    # SendRaw's message is a file part; a plain field is taken too, for hand-made urlencoded calls.
    part = form.get("message")
    message: bytes | None = None
    if isinstance(part, UploadFile):
        message = await part.read()
    elif part:
        message = part.encode()
    await form.close()
    return _Call(raw, inline, attached, message)


_EXAMPLES: dict[str, dict[str, Any]] = {
    "Send": {"To": [{"Name": "", "Address": "bob@example.com"}], "Subject": "hi", "Text": "hello"},
    "SendRaw": {
        "MailFrom": "alice@example.org",
        "RcptTo": ["bob@example.com"],
        "RequireTLS": None,
        "FutureRelease": None,
        "Extra": {},
        "DKIMSign": True,
    },
    "MessageStatus": {"QueueMsgID": 1},
    "SuppressionList": {},
    "SuppressionAdd": {"EmailAddress": "bob@example.com", "Manual": True, "Reason": "asked to stop"},
    "SuppressionRemove": {"EmailAddress": "bob@example.com"},
    "SuppressionPresent": {"EmailAddress": "bob@example.com"},
}


@router.get("/webapi/v0/{method}", include_in_schema=False)
async def method_page(method: str) -> Response:
    """A page with an example request and a form to try the method; needs no authentication."""
    if method not in METHODS:
        return PlainTextResponse("404 - not found", status_code=404)
    example = html.escape(json.dumps(_EXAMPLES.get(method, {}), indent="\t"))
    page = (
        f"<!doctype html><title>webapi v0 {method}</title><h1>{method}</h1>"
        f'<form method="post" enctype="multipart/form-data">'
        f'<textarea name="request" rows="12" cols="80">{example}</textarea><br>'
        + ('message (RFC 5322): <input type="file" name="message"><br>' if method == "SendRaw" else "")
        + '<button type="submit">call</button></form>'
    )
    return Response(page, media_type="text/html")


_FILES = {
    "inlinefile": "Inline files (multipart only); Content-ID from the part's header.",
    "attachedfile": "Attached files (multipart only).",
}
# Each method: what it does, its request object, the file parts it takes, its answer.
_OPERATIONS: dict[str, tuple[str, type[Any], dict[str, str], type[Any]]] = {
    "Send": ("Compose and queue a message.", SendRequest, _FILES, SendResult),
    "SendRaw": (
        "Queue a ready-made RFC 5322 message (Tempost extension).",
        SendRawRequest,
        {"message": "The RFC 5322 message, as is (required)."},
        SendResult,
    ),
    "MessageStatus": (
        "State, attempts and results of one of the account's messages (Tempost extension).",
        MessageStatusRequest,
        {},
        MessageStatusResult,
    ),
    "SuppressionList": ("The account's suppression list.", SuppressionListRequest, {}, SuppressionListResult),
    "SuppressionAdd": ("Add an address to the suppression list.", SuppressionAddRequest, {}, EmptyResult),
    "SuppressionRemove": (
        "Remove an address from the suppression list; `error` when absent.",
        SuppressionAddressRequest,
        {},
        EmptyResult,
    ),
    "SuppressionPresent": (
        "Whether an address is on the suppression list.",
        SuppressionAddressRequest,
        {},
        SuppressionPresentResult,
    ),
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": WebAPIErrorResponse, "description": "The request failed; `Code` says why."},
    401: openapi.TEXT_401,
    429: openapi.TEXT_429,
    503: {
        "model": WebAPIErrorResponse,
        "description": "serverBusy (retry after Retry-After) or unavailable.",
    },
}


def _method_route(method: str) -> None:
    summary, request_model, files, result = _OPERATIONS[method]
    errors = dict(_ERRORS)
    if method in _QUEUEING:
        errors[409] = {"model": WebAPIErrorResponse, "description": "idempotencyKeyReused."}
    extra = openapi.webapi_body(request_model, files, _EXAMPLES.get(method))
    if method in _QUEUEING:
        extra["parameters"] = [
            {
                "name": idem.HEADER,
                "in": "header",
                "required": False,
                "description": "A repeat within 24 h is answered as the first call was.",
                "schema": {"type": "string", "maxLength": 200},
            }
        ]

    async def endpoint(request: Request) -> Response:
        return await call(method, request)

    router.add_api_route(
        f"/webapi/v0/{method}",
        endpoint,
        methods=["POST"],
        name=method,
        operation_id=method,
        summary=summary,
        response_model=result,
        responses=errors,
        openapi_extra=extra,
    )


for _method in METHODS:
    _method_route(_method)


# Hidden: only the 404 of a method that does not exist (mox's plain-text answer).
@router.post("/webapi/v0/{method}", include_in_schema=False)
async def unknown_method(method: str) -> Response:
    """A method the webapi does not have."""
    return PlainTextResponse("404 - not found", status_code=404)


async def call(method: str, request: Request) -> Response:
    """Authenticate and run one webapi method."""
    st: AppState = request.app.state.tempost
    authorization = request.headers.get("authorization")
    if not authorization:
        # Missing credentials are a client asking how to log in, not an attack: not counted.
        return _unauthorized()
    ip = request.client.host if request.client else ""
    now = datetime.now(UTC)
    too_many = PlainTextResponse("429 - too many auth attempts", status_code=429)
    if not st.auth_limiter.allowed(ip, now):
        return too_many
    # Only a request that starts a password check counts as an attempt while it runs (so checks running
    # at once cannot pass the limit together); one that joins a running check of the same credentials
    # or fails without a check counts once it failed.
    counted = False

    def admit() -> bool:
        nonlocal counted
        counted = st.auth_limiter.attempt(ip, now)
        return counted

    try:
        login = await st.auth.basic(authorization, admit)
    except AuthLimited:
        return too_many
    except AuthBusy:
        # Not the caller's failure: take the attempt back and ask for a retry.
        if counted:
            st.auth_limiter.succeeded(ip, now)
        return JSONResponse(
            {"Code": "serverBusy", "Message": "too many logins being checked; try again"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    if login is None:
        if not counted:
            st.auth_limiter.failed(ip, now)
        return _unauthorized()
    if counted:
        st.auth_limiter.succeeded(ip, now)
    try:
        limit = request_body_limit(st.config.api.max_message_size)
        form = await _request_object(request, limit)
        if method in _QUEUEING:
            client = _Client(ip, request.url.scheme.upper())
            return JSONResponse(
                await _queueing(st, login, client, method, form, request.headers.get(idem.HEADER))
            )
        if method == "MessageStatus":
            return JSONResponse(await _message_status(st, login, form.request))
        return JSONResponse(await _suppression(st, login, method, form.request))
    except WebAPIError as err:
        return _error(err.code, err.message, err.status)
    except Exception:  # noqa: BLE001 - internal failures are the `server` code, details in the log only
        log.exception("webapi %s", method)
        return _error("server", "unhandled error")


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
    if method == "SuppressionList":
        decode_model(raw, SuppressionListRequest)
        return {
            "Suppressions": [suppression_json(r) for r in await suppressions.list_account(st.pool, account)]
        }
    req: SuppressionAddRequest | SuppressionAddressRequest
    if method == "SuppressionAdd":
        req = decode_model(raw, SuppressionAddRequest)
    else:
        req = decode_model(raw, SuppressionAddressRequest)
    try:
        addr = parse_address(req.EmailAddress)
    except AddressError as err:
        raise WebAPIError("badAddress", f"parsing address: {err}") from None
    base = base_address(addr)
    if method == "SuppressionPresent":
        return {"Present": await suppressions.present(st.pool, account, base)}
    if isinstance(req, SuppressionAddRequest):
        manual, reason = req.Manual, req.Reason
        if "\0" in reason:
            raise WebAPIError("user", "Reason contains a NUL byte")
        try:
            await suppressions.add(
                st.pool, account, base, original_address(addr), manual=manual, reason=reason
            )
        except suppressions.DuplicateSuppression as err:
            raise WebAPIError("error", str(err)) from None
        return {}
    try:
        await suppressions.remove(st.pool, account, base)
    except suppressions.AbsentSuppression:
        raise WebAPIError("error", "absent") from None
    return {}


@dataclass(frozen=True)
class _KeyUse:
    """An Idempotency-Key on a call: the key and the digest of the request it came with."""

    key: str
    request_hash: str


class _KeyTaken(Exception):
    """A concurrent call with the same Idempotency-Key committed its messages first."""


@dataclass(frozen=True)
class _Client:
    """Where a submission came from, for its Received field: the peer's IP address and HTTP or HTTPS."""

    ip: str
    protocol: str


async def _queueing(
    st: AppState, login: Login, client: _Client, method: str, form: _Call, key_header: str | None
) -> dict[str, Any]:
    """Send or SendRaw, answering a repeated Idempotency-Key with the first call's response."""
    now = datetime.now(UTC)
    key_use = None
    if key_header is not None:
        key_use = _KeyUse(idem.check_key(key_header), idem.request_hash(method, form.digest_parts()))
        earlier = await _earlier_response(st, login.account.name, key_use, now)
        if earlier is not None:
            return earlier
    acc = login.account
    identity = AccountIdentity(name=acc.name, full_name=acc.full_name, addresses=list(acc.addresses))
    unsubscribe_links = False
    if method == "SendRaw":
        if form.message is None:
            raise WebAPIError("protocol", "missing file part message with the RFC 5322 message")
        msg = check_send_raw(
            decode_send_raw_request(form.request),
            form.message,
            login_address=login.address,
            account=identity,
            now=now,
            max_message_size=st.config.api.max_message_size,
        )
    else:
        req = decode_send_request(form.request)
        msg = compose_send(
            req,
            login_address=login.address,
            account=identity,
            hostname=st.config.hostname,
            now=now,
            max_message_size=st.config.api.max_message_size,
            random_token=lambda: secrets.token_urlsafe(16),
            inline_uploads=form.inline,
            attached_uploads=form.attached,
        )
        unsubscribe_links = _list_unsubscribe(st, acc, req)
    # The bodies to store, each a submission of its own; whatever is added to the bytes from here on (a
    # signature) goes into each copy.
    copies = (
        await _unsubscribe_copies(st, acc.name, msg)
        if unsubscribe_links
        else [_Copy(msg.data, list(range(len(msg.recipients))))]
    )
    try:
        return await _queue(st, login, client, msg, copies, key_use, now)
    except _KeyTaken:
        assert key_use is not None  # only raised when recording a key
        earlier = await _earlier_response(st, acc.name, key_use, now)
        if earlier is None:
            raise WebAPIError("server", "idempotency key vanished; try again") from None
        return earlier


async def _earlier_response(
    st: AppState, account: str, key_use: _KeyUse, now: datetime
) -> dict[str, Any] | None:
    """The response of the key's first use within the window; `idempotencyKeyReused` for another request."""
    stored = await idempotency.find(st.pool, account, key_use.key, now - idem.WINDOW)
    if stored is None:
        return None
    if stored.request_hash != key_use.request_hash:
        raise WebAPIError(
            "idempotencyKeyReused", f"{idem.HEADER} was used for a different request within 24h", status=409
        )
    return stored.response


def _list_unsubscribe(st: AppState, acc: AccountConfig, req: SendRequest) -> bool:
    """Whether a Send's message gets one-click unsubscribe headers: the request's ListUnsubscribe, else the
    account's setting, except that a List-Unsubscribe header of the application's own wins over the
    account's setting."""
    wanted = acc.list_unsubscribe if req.ListUnsubscribe is None else req.ListUnsubscribe
    if not wanted:
        return False
    if any(name.lower() in ("list-unsubscribe", "list-unsubscribe-post") for name, _ in req.Headers):
        if req.ListUnsubscribe:
            raise WebAPIError("user", "ListUnsubscribe and a List-Unsubscribe header of your own: pick one")
        return False
    if not st.config.api.public_url or not st.unsubscribe_secret:
        raise WebAPIError(
            "user", "one-click unsubscribe is not set up here: it needs api.public_url and a secret"
        )
    return True


@dataclass(frozen=True)
class _Copy:
    """A body stored for some of a submission's recipients: indexes into its recipients and, when the
    bytes name them, the message ids reserved for them."""

    data: bytes
    recipients: list[int]
    ids: list[int] | None = None


async def _unsubscribe_copies(st: AppState, account: str, msg: ComposedMessage) -> list[_Copy]:
    """One copy of the message per recipient, each with its own List-Unsubscribe link (RFC 8058 §3.1).

    The link names the recipient, so the copies differ; each is queued as a submission of its own, so a
    signature over the header section (DKIM, computed per stored body) covers its recipient's link, as
    RFC 8058 §4 requires. The ids are reserved first because the token names the message.
    """
    n = len(msg.recipients)
    limit = st.config.api.max_message_size
    if n * len(msg.data) > limit:
        raise WebAPIError(
            "messageTooLarge",
            f"one-click unsubscribe stores a copy per recipient: {n} x {len(msg.data)} bytes is over"
            f" {limit}; send fewer recipients per Send",
        )
    ids = await q.reserve_ids(st.pool, n)
    copies = []
    for i, (mid, (_, rcpt)) in enumerate(zip(ids, msg.recipients, strict=True)):
        named = unsubscribe.Unsubscribe(account=account, recipient=rcpt.unicode, msg_id=mid)
        token = unsubscribe.make_token(st.unsubscribe_secret, named)
        try:
            fields = unsubscribe.header_fields(unsubscribe.unsubscribe_url(st.config.api.public_url, token))
        except ValueError as err:
            raise WebAPIError("user", f"one-click unsubscribe: {err}") from None
        data = unsubscribe.add_header_fields(msg.data, fields)
        if len(data) > limit:
            raise WebAPIError("messageTooLarge", f"message too large, {len(data)} > {limit} bytes")
        copies.append(_Copy(data, [i], [mid]))
    return copies


# Messages bigger than this are signed in a thread, so the event loop keeps serving other requests while
# the body is canonicalized and hashed.
_SIGN_INLINE_MAX = 256 * 1024


async def _signatures(st: AppState, msg: ComposedMessage, data: bytes) -> bytes:
    """The DKIM-Signature fields over `data` (the message or one stored copy of it) by the From domain's
    signing selectors (spec 03 §5.4 step 11); failing to sign is the `server` error, and nothing is
    queued."""
    selectors = st.dkim.signers(msg.dkim_domain) if msg.dkim_domain else []
    if not selectors:
        return b""
    try:
        if len(data) > _SIGN_INLINE_MAX:
            return await asyncio.to_thread(dkim_sign, data, selectors)
        return dkim_sign(data, selectors)
    except SigningError as err:
        log.error("dkim signing failed: %s", err)
        raise WebAPIError("server", "dkim signing failed") from None


async def _queue(
    st: AppState,
    login: Login,
    client: _Client,
    msg: ComposedMessage,
    copies: list[_Copy],
    key_use: _KeyUse | None,
    now: datetime,
) -> dict[str, Any]:
    """Queue a checked message: each copy of its body once with its prefix (Received, DKIM-Signature), as
    a submission with a row per recipient of that copy, then start the Delivery workflow of each."""
    acc = login.account
    # Each stored copy is signed over its own bytes: a copy's List-Unsubscribe link is covered (RFC 8058 §4).
    signatures = [await _signatures(st, msg, c.data) for c in copies]

    def prefix(c: _Copy, sig: bytes) -> Callable[[int], bytes]:
        def of(base_id: int) -> bytes:
            # Received on top, as the latest trace field (RFC 5321 §4.4), then the signatures; "for" names
            # the recipient only when the submission has one (spec 03 §5.4 step 12).
            return (
                received_header(
                    hostname=st.config.hostname,
                    client_ip=client.ip,
                    login=login.address,
                    protocol=client.protocol,
                    trace_id=str(base_id),
                    recipients=[msg.recipients[i][1] for i in c.recipients],
                    smtputf8=msg.smtputf8,
                    now=now,
                )
                + sig
            )

        return of

    next_attempt = msg.future_release or now
    # A login listed for FromID gets a unique MAIL FROM per recipient, so bounces can be matched.
    use_fromid = login.address.lower() in (a.lower() for a in acc.fromid_login_addresses)
    separator = st.config.separator(msg.sender.domain) if use_fromid else ""
    if use_fromid and not separator:
        raise WebAPIError("user", "from address domain has no catch-all separator for fromid")
    from_ids = [secrets.token_urlsafe(16) if use_fromid else "" for _ in msg.recipients]
    fromid_localpart = sender_localpart(msg.sender.localpart, separator, from_ids[0]) if use_fromid else ""
    if len(fromid_localpart.encode()) > MAX_LOCALPART:
        # The bounce listener could not take replies to such a MAIL FROM (RFC 5321 §4.5.3.1.1).
        raise WebAPIError("user", "from localpart too long to add a fromid within 64 octets")
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
            ids: list[int] = [0] * len(new)
            submissions: list[tuple[int, list[int]]] = []
            for c, sig in zip(copies, signatures, strict=True):
                rows = [new[i] for i in c.recipients]
                if len(c.data) != len(msg.data):
                    rows = [replace(r, size=len(c.data)) for r in rows]
                base_id, copy_ids = await q.insert_submission(
                    conn, acc.name, c.data, now, rows, ids=c.ids, prefix=prefix(c, sig)
                )
                for i, mid in zip(c.recipients, copy_ids, strict=True):
                    ids[i] = mid
                submissions.append((base_id, c.recipients))
            response = {
                "MessageID": msg.message_id,
                "Submissions": [
                    {"Address": given, "QueueMsgID": mid, "FromID": fid}
                    for mid, (given, _), fid in zip(ids, msg.recipients, from_ids, strict=True)
                ],
            }
            # The key is written with the messages, so a crash leaves both or neither.
            if key_use is not None and not await idempotency.record(
                conn, acc.name, key_use.key, key_use.request_hash, response, now, now - idem.WINDOW
            ):
                raise _KeyTaken
    except (_KeyTaken, NotConnected):
        raise
    except Exception as err:
        log.exception("queueing submission")
        raise WebAPIError("server", "queueing message failed") from err
    starts = asyncio.Semaphore(_CONCURRENT_STARTS)

    async def start(base_id: int, members: list[int]) -> None:
        inp = delivery_input(
            base_id,
            acc.name,
            [(ids[i], msg.recipients[i][1].domain_unicode) for i in members],
            st.config.queue,
            release_at=msg.future_release,
            separate=use_fromid,
            held_ids=[ids[i] for i in members if held[i]],
        )
        summary = delivery_summary(msg.sender.unicode, [msg.recipients[i][1].unicode for i in members])
        async with starts:
            try:
                await start_delivery(st.client, st.config.temporal.task_queue, inp, summary)
                await q.mark_workflow_started(st.pool, base_id)
            except Exception:  # noqa: BLE001 - the message is durably queued; the worker's sweeper starts it
                log.exception("starting delivery of submission %d; the worker will start it later", base_id)

    await asyncio.gather(*(start(b, members) for b, members in submissions))
    return response


# A retired message's event as a MessageStatus state: a suppressed recipient failed.
_RETIRED_STATES = {
    RetireEvent.DELIVERED: MsgState.DELIVERED,
    RetireEvent.FAILED: MsgState.FAILED,
    RetireEvent.SUPPRESSED: MsgState.FAILED,
    RetireEvent.CANCELED: MsgState.CANCELED,
}


async def _message_status(st: AppState, login: Login, raw: str) -> dict[str, Any]:
    """MessageStatus (spec 04 §1): state, attempts and results of one of the caller's own messages."""
    msg_id = decode_model(raw, MessageStatusRequest).QueueMsgID
    # Ids are positive bigints: anything else names no message.
    view = await message_view(st, msg_id) if 0 < msg_id <= MAX_ID else None
    # Another account's message is answered exactly like an unknown one, so ids reveal nothing.
    if view is None or view["SenderAccount"] != login.account.name:
        raise WebAPIError("messageNotFound", f"message {msg_id} not found")
    if "Event" in view:
        return {
            "State": _RETIRED_STATES[RetireEvent(view["Event"])].value,
            "Attempts": view["Attempts"],
            "NextAttempt": None,
            "Results": view["Results"],
        }
    # Without the workflow's live state (not yet started, or Temporal unreachable) the row decides.
    state = view.get("State") or (MsgState.HELD if view["Hold"] else MsgState.QUEUED).value
    return {
        "State": state,
        "Attempts": view["Attempts"],
        "NextAttempt": view["NextAttempt"],
        "Results": view["Results"],
    }
