"""Admin API for suppression lists (spec 04 §3): any account's list, with the webapi's shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import adminmodels as m
from api.admin import AdminError, _state, checked, json_body
from api.openapi import json_body as body_schema
from api.openapi import query
from api.webapi import suppression_json
from domain.addresses import AddressError, parse_address
from domain.filters import FilterError, parse_str
from domain.suppression import base_address, original_address
from store import suppressions

router = APIRouter(prefix="/admin/v0", tags=["admin"])


def _base(address: Any) -> tuple[str, str]:
    if not isinstance(address, str):
        raise AdminError(400, "badAddress", "address must be a string")
    try:
        addr = parse_address(address)
    except AddressError as err:
        raise AdminError(400, "badAddress", f"parsing address: {err}") from None
    return base_address(addr), original_address(addr)


def _text(name: str, value: Any) -> str:
    try:
        return parse_str(name, value)
    except FilterError as err:
        raise AdminError(400, "badRequest", str(err)) from None


def _account(value: Any) -> str:
    account = _text("account", value).strip()
    if not account:
        raise AdminError(400, "badRequest", "account is required")
    return account


@router.get(
    "/suppressions",
    response_model=m.SuppressionsPage | m.Present,
    openapi_extra={
        "parameters": [
            query("account", "The account whose list to show (all accounts' when empty)."),
            query("address", "Answer only whether this address is on the account's list (needs account)."),
        ]
    },
)
async def list_suppressions(request: Request) -> dict[str, Any]:
    """One account's entries (`account`), or every account's; `address` asks whether one is listed."""
    st = _state(request)
    p = request.query_params
    if p.get("address"):
        base, _ = _base(p["address"])
        return {"Present": await suppressions.present(st.pool, _account(p.get("account")), base)}
    rows = (
        await suppressions.list_account(st.pool, _account(p["account"]))
        if p.get("account")
        else await suppressions.list_all(st.pool)
    )
    return {"Suppressions": [suppression_json(r) for r in rows]}


@router.post(
    "/suppressions",
    response_model=m.Suppression,
    openapi_extra=body_schema(m.NewSuppression),
    responses={409: {"model": m.AdminErrorResponse, "description": "duplicate: the base address is listed."}},
)
async def add_suppression(request: Request) -> dict[str, Any]:
    """Add `{"Account", "EmailAddress", "Manual", "Reason"}`; 409 when the base address is listed."""
    st = _state(request)
    body = await json_body(request)
    checked(m.NewSuppression, body)
    account = _account(body.get("Account"))
    base, original = _base(body.get("EmailAddress", ""))
    manual = body.get("Manual", True)
    if not isinstance(manual, bool):
        raise AdminError(400, "badRequest", "Manual: must be true or false")
    reason = _text("Reason", body.get("Reason", ""))
    try:
        row = await suppressions.add(st.pool, account, base, original, manual=manual, reason=reason)
    except suppressions.DuplicateSuppression as err:
        raise AdminError(409, "duplicate", str(err)) from None
    return suppression_json(row)


@router.delete(
    "/suppressions",
    status_code=204,
    response_class=Response,
    responses={404: {"model": m.AdminErrorResponse, "description": "notFound: the address is not listed."}},
    openapi_extra={
        "parameters": [
            {"name": "account", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "address", "in": "query", "required": True, "schema": {"type": "string"}},
        ]
    },
)
async def remove_suppression(request: Request) -> Response:
    """Remove the entry of `account` for `address` (any variant of the base address); 404 when absent."""
    st = _state(request)
    p = request.query_params
    account = _account(p.get("account"))
    base, _ = _base(p.get("address", ""))
    try:
        await suppressions.remove(st.pool, account, base)
    except suppressions.AbsentSuppression:
        raise AdminError(404, "notFound", f"no suppression of {base} for account {account}") from None
    return Response(status_code=204)
