"""Making sure the Temporal namespace knows Tempost's search attributes before any workflow upserts them.

A workflow that upserts an unregistered search attribute fails every workflow task until it is
registered, so the worker checks (and where allowed, registers) them at startup.
"""

from __future__ import annotations

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client

from workflows.searchattrs import ALL


class SearchAttributesMissing(RuntimeError):
    """The namespace lacks search attributes and they could not be added."""


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register the search attributes the namespace lacks; returns the names added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = {k.name: k.indexed_value_type for k in ALL if k.name not in known}
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)  # type: ignore[arg-type]
        )
    except Exception as err:
        raise SearchAttributesMissing(
            f"namespace {namespace!r} lacks search attributes {sorted(missing)} and adding them failed:"
            f" {err}; add them with `temporal operator search-attribute create`"
        ) from err
    return sorted(missing)
