"""Admin API for hold rules (spec 01 §4, spec 04 §3)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import adminmodels as m
from api.admin import AdminError, RecordID, _state, checked, json_body
from api.admin_bulk import signal_all
from api.openapi import json_body as body_schema
from domain.addresses import AddressError, parse_domain
from domain.contracts import BulkOp
from domain.filters import FilterError, parse_str
from domain.holdrules import HoldRule
from store import holdrules

router = APIRouter(prefix="/admin/v0", tags=["admin"])


def rule_json(r: HoldRule) -> dict[str, Any]:
    """A rule in mox's field names."""
    return {
        "ID": r.id,
        "Account": r.account,
        "SenderDomainStr": r.sender_domain_str,
        "RecipientDomainStr": r.recipient_domain_str,
    }


def _domain(body: dict[str, Any], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise AdminError(400, "badDomain", f"{name}: must be a string")
        if value:
            try:
                return parse_domain(value)
            except AddressError as err:
                raise AdminError(400, "badDomain", f"{name}: {err}") from None
    return None


@router.get("/holdrules", response_model=m.HoldRules)
async def list_holdrules(request: Request) -> dict[str, Any]:
    """Every hold rule, in id order."""
    st = _state(request)
    async with st.pool.connection() as conn:
        rules = await holdrules.list_rules(conn)
    return {"HoldRules": [rule_json(r) for r in rules]}


@router.post("/holdrules", response_model=m.HoldRuleAdded, openapi_extra=body_schema(m.NewHoldRule))
async def add_holdrule(request: Request) -> dict[str, Any]:
    """Add `{"Account", "SenderDomain", "RecipientDomain"}` (all empty: hold everything); the queued
    messages it matches are held at once, and `Affected` says how many."""
    st = _state(request)
    body = await json_body(request)
    checked(m.NewHoldRule, body)
    sender = _domain(body, "SenderDomain", "SenderDomainStr")
    recipient = _domain(body, "RecipientDomain", "RecipientDomainStr")
    try:
        account = parse_str("Account", body.get("Account"))
    except FilterError as err:
        raise AdminError(400, "badRequest", str(err)) from None
    rule = await holdrules.add(st.pool, account, sender, recipient)
    rows = await holdrules.queued_matches(st.pool, rule)
    affected = await signal_all(st, [r["id"] for r in rows], BulkOp(op="hold"), "hold", True)
    return {"HoldRule": rule_json(rule), "Affected": affected}


@router.delete("/holdrules/{rule_id}", status_code=204, response_class=Response)
async def remove_holdrule(rule_id: RecordID, request: Request) -> Response:
    """Remove a rule; messages it held stay held until released."""
    if not await holdrules.remove(_state(request).pool, rule_id):
        raise AdminError(404, "notFound", f"hold rule {rule_id} not found")
    return Response(status_code=204)
