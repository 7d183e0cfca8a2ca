"""One-click unsubscribe links (RFC 8058): a POST puts the recipient on the account's suppression list, a
GET shows a page with a button that makes that POST. Neither needs a login: the signed token is the proof."""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.adminmodels import AdminErrorResponse
from api.body import BodyTooLarge, read_form
from api.openapi import schema_ref
from api.state import AppState
from domain import unsubscribe
from domain.addresses import AddressError, parse_address
from domain.apiinput import InputError
from domain.config import Config
from domain.suppression import base_address, original_address
from domain.webhooks import Event, Outgoing
from store import hooks, suppressions
from store import queue as q
from workflows.client import signal_webhook, start_webhook

log = logging.getLogger("tempost.unsubscribe")

router = APIRouter(tags=["unsubscribe"])

# The one-click body is 26 bytes; a browser's form post a little more. Anything far larger is not one.
_BODY_LIMIT = 4096
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_WANT_BODY = f"want a form body {unsubscribe.POST_FIELD}={unsubscribe.POST_VALUE} (RFC 8058 §3.2)"


def load_secret(config: Config) -> bytes:
    """The token secret for the API process; ValueError at startup when an account needs one and there is
    none, or when it cannot be read."""
    try:
        secret = config.api.unsubscribe_secret()
    except OSError as err:
        raise ValueError(f"api.unsubscribe_secret_file: {err}") from None
    wanting = [a.name for a in config.accounts if a.list_unsubscribe]
    if wanting and not secret:
        raise ValueError(
            f"accounts {', '.join(wanting)} have list_unsubscribe: set api.unsubscribe_secret_file or "
            "TEMPOST_UNSUBSCRIBE_SECRET"
        )
    return secret


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=status)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A minimal page; every value in `body` is escaped by the caller."""
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>",
        status_code=status,
        # Nothing on this page is worth caching, and no other site may frame the button.
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"},
    )


def _checked(request: Request, token: str) -> unsubscribe.Unsubscribe | Response:
    """The token's unsubscribe request, or the response refusing the call (rate limit, bad token)."""
    st: AppState = request.app.state.tempost
    ip = request.client.host if request.client else ""
    if not st.unsubscribe_limiter.attempt(ip, datetime.now(UTC)):
        return _error(429, "rateLimited", "too many unsubscribe requests; try again in a minute")
    sub = unsubscribe.read_token(st.unsubscribe_secret, token)
    if sub is None:
        return _error(404, "notFound", "unknown or invalid unsubscribe link")
    return sub


_HTML = {"description": "A page for people.", "content": {"text/html": {"schema": {"type": "string"}}}}
# Errors are JSON though the pages are HTML, so each names its content type.
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/json": {"schema": schema_ref(AdminErrorResponse)}},
    }
    for status, description in (
        (400, "badRequest: not a one-click body."),
        (404, "notFound: unknown or invalid link."),
        (413, "requestTooLarge."),
        (429, "rateLimited."),
        (503, "unavailable."),
    )
}


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses={200: _HTML, **_ERRORS})
async def unsubscribe_page(request: Request, token: str) -> Response:
    """A page asking for confirmation; link scanners follow GETs, so this changes nothing (RFC 8058 §3.2)."""
    sub = _checked(request, token)
    if isinstance(sub, Response):
        return sub
    return _page(
        "Unsubscribe",
        f"<p>Stop mail to <b>{html.escape(sub.recipient)}</b> from this sender?</p>"
        f'<form method="post"><input type="hidden" name="{unsubscribe.POST_FIELD}" '
        f'value="{unsubscribe.POST_VALUE}"><button type="submit">Unsubscribe</button></form>',
    )


@router.post(
    "/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses={200: _HTML, **_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                ctype: {
                    "schema": {
                        "type": "object",
                        "required": [unsubscribe.POST_FIELD],
                        "properties": {unsubscribe.POST_FIELD: {"const": unsubscribe.POST_VALUE}},
                    }
                }
                for ctype in _FORM_TYPES
            },
        }
    },
)
async def unsubscribe_post(request: Request, token: str) -> Response:
    """Put the token's recipient on its account's suppression list; repeating it changes nothing more."""
    st: AppState = request.app.state.tempost
    sub = _checked(request, token)
    if isinstance(sub, Response):
        return sub
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _FORM_TYPES:
        return _error(400, "badRequest", _WANT_BODY)
    try:
        form = await read_form(request, _BODY_LIMIT)
    except BodyTooLarge as err:
        return _error(413, "requestTooLarge", str(err))
    except InputError as err:
        return _error(400, "badRequest", f"parsing form: {err}")
    fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    await form.close()
    if not unsubscribe.one_click_body(fields):
        return _error(400, "badRequest", _WANT_BODY)
    try:
        addr = parse_address(sub.recipient)
    except AddressError:
        # Only tokens this server signed get here, and it signs parsed addresses.
        return _error(404, "notFound", "unknown or invalid unsubscribe link")
    now = datetime.now(UTC)
    async with st.pool.connection() as conn, conn.transaction():
        facts = await q.message_facts(conn, sub.msg_id)
        if facts is not None and facts["sender_account"] != sub.account:
            # A valid MAC over a message of another account: never made by this server; refuse it anyway.
            return _error(404, "notFound", "unknown or invalid unsubscribe link")
        added = await suppressions.add_automatic(
            conn, sub.account, base_address(addr), original_address(addr), unsubscribe.reason(sub.msg_id)
        )
        queued = None
        if added:
            out = Outgoing(
                event=Event.UNSUBSCRIBED,
                queue_msg_id=sub.msg_id,
                from_id=facts["from_id"] if facts else "",
                message_id=facts["message_id"] if facts else "",
                subject=facts["subject"] if facts else "",
                queued=now,
                suppressing=True,
                extra=facts["extra"] if facts else {},
            )
            hook = hooks.event_hook(st.config, sub.account, out)
            if hook is not None:
                queued = await hooks.insert(conn, hook, now, st.config.retired_webhook_keep(sub.account))
    if added:
        log.info("unsubscribed %s from account %s (message %d)", base_address(addr), sub.account, sub.msg_id)
    if queued is not None:
        await _start_hook(st, queued)
    return _page("Unsubscribed", f"<p>{html.escape(sub.recipient)} is unsubscribed.</p>")


async def _start_hook(st: AppState, queued: hooks.Queued) -> None:
    """After commit, best effort: start the hook's workflow and stop the one it superseded; the worker's
    sweeper starts any hook left unstarted."""
    try:
        if queued.superseded:
            await signal_webhook(st.client, queued.superseded, "stop")
        await start_webhook(st.client, st.config.temporal.task_queue, queued.id, None, f"hook {queued.id}")
        await hooks.mark_workflow_started(st.pool, [queued.id])
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("starting webhook %d; the worker will start it later", queued.id, exc_info=True)
