"""Search attributes of Delivery workflows, for operators filtering in the Temporal UI (DESIGN §3).

Few and small, within SQL visibility's limits (10 Keyword, 3 each of the other types): state, account,
the recipient domains still pending, held, next attempt, attempts. Domains only, never addresses: search
attributes are stored unencrypted.

Queries an operator types in the UI, for example:
  TempostHeld = true AND TempostRcptDomains = 'example.com'
  TempostState = 'deferred' AND TempostAttempts >= 3
  TempostNextAttempt < '2026-12-01T00:00:00Z' AND ExecutionStatus = 'Running'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair

from domain.contracts import DeliveryInput

STATE = SearchAttributeKey.for_keyword("TempostState")
ACCOUNT = SearchAttributeKey.for_keyword("TempostAccount")
RCPT_DOMAINS = SearchAttributeKey.for_keyword_list("TempostRcptDomains")
HELD = SearchAttributeKey.for_bool("TempostHeld")
NEXT_ATTEMPT = SearchAttributeKey.for_datetime("TempostNextAttempt")
ATTEMPTS = SearchAttributeKey.for_int("TempostAttempts")

ALL = (STATE, ACCOUNT, RCPT_DOMAINS, HELD, NEXT_ATTEMPT, ATTEMPTS)

# Temporal refuses a search attribute value over 2 KB (limit.searchAttributeValueSize), and with it the
# workflow start or the workflow task that sets it; keep clear of it with room for encoding differences.
_VALUE_BUDGET = 1900


def domains_value(domains: Iterable[str]) -> list[str]:
    """The TempostRcptDomains value: the domains in order, as many as fit in one attribute value.

    A fan-out to hundreds of domains lists its first ones; the queue listing has them all.
    """
    out: list[str] = []
    size = 2  # the JSON brackets
    for domain in sorted(set(domains)):
        size += len(json.dumps(domain).encode()) + 2  # the separator
        if size > _VALUE_BUDGET:
            break
        out.append(domain)
    return out


def at_start(inp: DeliveryInput, now: datetime) -> list[SearchAttributePair[Any]]:
    """The attributes a Delivery workflow starts with (all but the account).

    From revision 1 on, a fresh submission starts with every attribute as its workflow would first publish
    it, so the workflow upserts only when something changes; released revisions published on their own.
    """
    ids = [i for g in inp.groups for i in g.msg_ids]
    held = [inp.hold or i in inp.held_ids for i in ids]
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(STATE, "held" if all(held) else "queued"),
        SearchAttributePair(RCPT_DOMAINS, domains_value(g.domain for g in inp.groups)),
    ]
    if inp.revision >= 1 and not inp.prior_attempts:
        pairs += [SearchAttributePair(HELD, any(held)), SearchAttributePair(ATTEMPTS, 0)]
        if not all(held):
            pairs.append(SearchAttributePair(NEXT_ATTEMPT, inp.release_at or now))
    return pairs


# The temporal CLI's names for the types, for `temporal server start-dev --search-attribute NAME=TYPE`.
CLI_TYPES = {
    STATE.name: "Keyword",
    ACCOUNT.name: "Keyword",
    RCPT_DOMAINS.name: "KeywordList",
    HELD.name: "Bool",
    NEXT_ATTEMPT.name: "Datetime",
    ATTEMPTS.name: "Int",
}
