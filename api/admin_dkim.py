"""Admin API for DKIM: every configured selector with the DNS record that publishes its key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api import adminmodels as m
from api.admin import _state

router = APIRouter(prefix="/admin/v0", tags=["admin"])


@router.get("/dkim", response_model=list[m.DKIMRecord])
async def dkim_records(request: Request) -> list[dict[str, Any]]:
    """One object per configured selector: where to publish its key, the TXT value as one string, and
    whether it signs now (a selector being rotated in or out is listed too)."""
    st = _state(request)
    return [
        {
            "Domain": s.domain,
            "Selector": s.name,
            "Algorithm": s.key.algorithm,
            "RecordName": s.record_name,
            "RecordValue": s.record_value,
            "Signing": s.signing,
        }
        for s in st.dkim.selectors
    ]
