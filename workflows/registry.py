"""Making sure the Temporal namespace knows Tempost's search attributes before any workflow sets them.

A workflow started with, or upserting, a search attribute the namespace does not know fails (the start, or
every workflow task). The worker registers them at startup where it may (a self-hosted cluster). Where it
may not (Temporal Cloud, or an identity without operator rights) it logs the missing ones with the commands
that create them and delivers anyway: starts and workflows then set only the attributes that exist, so the
UI's filters lack those, and delivery does not depend on them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client

from workflows.searchattrs import ALL, CLI_TYPES

log = logging.getLogger("tempost.worker")

# How long a process trusts its list of the namespace's attributes: attributes created meanwhile are set
# by workflows started after that.
_REFRESH_SECONDS = 300.0
_known: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}


@dataclass(frozen=True)
class Registration:
    """What the worker found at startup: attributes it added, and those still missing."""

    added: list[str]
    missing: list[str]


async def _list(client: Client, namespace: str) -> set[str]:
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return set(existing.custom_attributes) | set(existing.system_attributes)


def create_commands(namespace: str, names: list[str]) -> list[str]:
    """The commands that create the named attributes: Temporal's CLI (self-hosted), then tcld (Cloud)."""
    cli = [
        f"temporal operator search-attribute create --namespace {namespace} --name {n} --type {CLI_TYPES[n]}"
        for n in names
    ]
    cloud = (
        "tcld namespace search-attributes add --namespace "
        + namespace
        + "".join(f' --search-attribute "{n}={CLI_TYPES[n]}"' for n in names)
    )
    return [*cli, cloud]


async def ensure_search_attributes(client: Client, namespace: str) -> Registration:
    """Register the search attributes the namespace lacks; those it may not add are logged, with the
    commands that create them, and left out of every start and upsert of this process."""
    known = await _list(client, namespace)
    missing = {k.name: k.indexed_value_type for k in ALL if k.name not in known}
    if not missing:
        _known[(client.service_client.config.target_host, namespace)] = (time.monotonic(), frozenset(known))
        return Registration([], [])
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)  # type: ignore[arg-type]
        )
    except Exception as err:  # noqa: BLE001 - any refusal: deliver without them
        names = sorted(missing)
        _known[(client.service_client.config.target_host, namespace)] = (time.monotonic(), frozenset(known))
        log.warning(
            "namespace %s lacks search attributes %s and this worker may not add them (%s); delivering"
            " without them (the Temporal UI cannot filter on them). Create them with:\n  %s",
            namespace,
            ", ".join(names),
            " ".join(str(err).split())[:200],
            "\n  ".join(create_commands(namespace, names)),
        )
        return Registration([], names)
    _known.pop((client.service_client.config.target_host, namespace), None)
    return Registration(sorted(missing), [])


async def available_search_attributes(client: Client) -> list[str] | None:
    """Tempost's search attributes the client's namespace has, or None when it has all of them (or the
    list cannot be had: then they are assumed, as before this check existed)."""
    key = (client.service_client.config.target_host, client.namespace)
    cached = _known.get(key)
    if cached is None or time.monotonic() - cached[0] > _REFRESH_SECONDS:
        try:
            names = frozenset(await _list(client, client.namespace))
        except Exception:  # noqa: BLE001 - a start goes on with every attribute, as it always did
            log.warning(
                "listing the search attributes of namespace %s failed", client.namespace, exc_info=True
            )
            return None
        cached = (time.monotonic(), names)
        _known[key] = cached
    have = [k.name for k in ALL if k.name in cached[1]]
    return None if len(have) == len(ALL) else have
