"""Rules of the MTA-STS cache's background refresher (spec 02 §2.3 item 6; RFC 8461 §10.2).

Pure decisions: which rows a run looks at, what to do with a row given its domain's TXT record now, and
when each refresh of a run starts. The refreshing itself lives in activities/mtastsrefresh.py.
"""

from __future__ import annotations

import random
from datetime import timedelta
from enum import StrEnum

from domain.mtasts import Mode, Record

# A row nobody looked up for this long is deleted rather than refreshed.
UNUSED_FOR = timedelta(days=180)
# A row updated longer ago than this is refreshed by the next run.
REFRESH_AFTER = timedelta(hours=12)
# One run's refreshes are spread over this long, so policy hosts do not all hear from us at once.
REFRESH_SPREAD = timedelta(hours=3)


class RefreshAction(StrEnum):
    """What the refresher does with one cached policy."""

    # The published id is the cached one: the policy is unchanged, only its validity is extended.
    EXTEND = "extend"
    # A mode-none policy whose record is gone: the domain gave up MTA-STS, stop refreshing it.
    DELETE = "delete"
    # A mode-none policy whose record could not be looked up: not worth an operator's attention.
    KEEP = "keep"
    # Fetch the policy again and replace the row (or log the failure and keep the row).
    REFETCH = "refetch"


def refresh_action(
    mode: Mode, cached_id: str, published: Record | None, *, lookup_failed: bool
) -> RefreshAction:
    """What to do with a cached policy of mode and record id, given the record published now.

    published is None when no STS record is published (lookup_failed False) or when the lookup failed
    (DNS error, broken or doubled record: lookup_failed True). A policy that is not mode none is refetched
    even without a record: DNS may be what is broken, and the policy must not expire meanwhile.
    """
    if published is not None:
        return RefreshAction.EXTEND if published.id == cached_id else RefreshAction.REFETCH
    if mode == Mode.NONE:
        return RefreshAction.KEEP if lookup_failed else RefreshAction.DELETE
    return RefreshAction.REFETCH


def refresh_offsets(count: int, spread: timedelta, rng: random.Random) -> list[timedelta]:
    """When each of count refreshes starts, counted from the run's start.

    The first starts at once (so an operator sees problems in the logs right away), the others evenly over
    spread with up to half a step of jitter either way, in order and never past spread.
    """
    if count < 2:
        return [timedelta(0)] * count
    step = spread / (count - 1)
    return [timedelta(0)] + [min(spread, step * (i + rng.uniform(-0.5, 0.5))) for i in range(1, count)]
