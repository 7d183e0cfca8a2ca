"""The MTA-STS cache's background refresher (spec 02 §2.3 item 6, RFC 8461 §10.2).

Deletes cached policies no lookup used for 180 days and refreshes those not updated for 12 hours, so a
domain's policy does not lapse between deliveries and a changed policy is known before mail goes out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from temporalio import activity

from activities.dns import Resolver
from activities.heartbeat import heartbeating
from activities.mtasts import MTASTSDNSError, MTASTSLookup, PolicyFetchError
from domain.config import DirectConfig
from domain.contracts import ACTIVITY_REFRESH_MTASTS, MTASTSRefreshResult
from domain.mtasts import Mode, RecordSyntaxError
from domain.mtastsrefresh import (
    REFRESH_AFTER,
    REFRESH_SPREAD,
    UNUSED_FOR,
    RefreshAction,
    refresh_action,
    refresh_offsets,
)
from store import mtasts as cache
from store.db import Pool

# Well inside the workflow's heartbeat timeout, so Temporal only declares a worker dead that is.
HEARTBEAT_EVERY = timedelta(seconds=30)


class _Outcome(StrEnum):
    """What became of one row; the values name the fields of MTASTSRefreshResult."""

    EXTENDED = "extended"
    UPDATED = "updated"
    DELETED = "deleted"
    FAILED = "failed"
    SKIPPED = "skipped"


class MTASTSRefresher:
    """The refresh activity, looking up records and policies as direct delivery does."""

    def __init__(self, pool: Pool, direct: DirectConfig) -> None:
        self._pool = pool
        self._sts = MTASTSLookup(
            Resolver(direct.resolvers), pool, https_port=direct.mtasts_port, ca_file=direct.ca_file
        )

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.refresh_policies]

    @activity.defn(name=ACTIVITY_REFRESH_MTASTS)
    async def refresh_policies(self) -> MTASTSRefreshResult:
        """Delete policies unused for 180 days, then refresh the ones not updated for 12 hours over 3 hours.

        A retry after a crash needs no checkpoint: rows already extended or updated have a new last_update
        and deleted ones are gone, so listing the rows not updated for 12 hours again leaves the ones still
        to do (and those left as they were, which cost one more look).
        """
        now = datetime.now(UTC)
        unused = await cache.delete_unused(self._pool, now - UNUSED_FOR)
        updated_before = now - REFRESH_AFTER
        domains = await cache.stale_domains(self._pool, updated_before)
        rng = random.Random()
        rng.shuffle(domains)
        offsets = refresh_offsets(len(domains), REFRESH_SPREAD, rng)
        refreshes: list[asyncio.Task[_Outcome]] = []

        def progress() -> str:
            return f"{len(refreshes)} of {len(domains)} refreshes started"

        async with heartbeating(HEARTBEAT_EVERY, progress):
            # Each refresh runs as its own task, so one slow policy host does not delay the ones after it.
            async with asyncio.TaskGroup() as group:
                start = time.monotonic()
                for domain, offset in zip(domains, offsets, strict=True):
                    await asyncio.sleep(max(0.0, start + offset.total_seconds() - time.monotonic()))
                    refreshes.append(group.create_task(self._refresh_logged(domain, updated_before)))
        counts = Counter(t.result().value for t in refreshes)
        result = MTASTSRefreshResult(unused_deleted=unused, **counts)
        if unused or domains:
            activity.logger.info("mta-sts refresh: %s", result)
        return result

    async def _refresh_logged(self, domain: str, updated_before: datetime) -> _Outcome:
        """Refresh one domain; any failure is logged and leaves the row as it was."""
        try:
            return await self._refresh(domain, updated_before)
        except Exception:  # noqa: BLE001 - one domain's trouble must not stop the others' refresh
            activity.logger.exception("mta-sts refresh of %s", domain)
            return _Outcome.FAILED

    async def _refresh(self, domain: str, updated_before: datetime) -> _Outcome:
        """Refresh the cached policy of one domain unless a lookup did since the run started."""
        row = await cache.stale(self._pool, domain, updated_before)
        if row is None:
            return _Outcome.SKIPPED
        mode, seen = Mode(row["mode"]), row["last_update"]
        try:
            record = await self._sts.published_record(domain)
            lookup_error = ""
        except (MTASTSDNSError, RecordSyntaxError) as err:
            record, lookup_error = None, str(err)
        action = refresh_action(mode, row["record_id"], record, lookup_failed=bool(lookup_error))
        if action == RefreshAction.EXTEND:
            done = await cache.extend(self._pool, domain, seen, datetime.now(UTC))
            return _Outcome.EXTENDED if done else _Outcome.SKIPPED
        if action == RefreshAction.DELETE:
            done = await cache.delete(self._pool, domain, seen)
            return _Outcome.DELETED if done else _Outcome.SKIPPED
        if action == RefreshAction.KEEP:
            return _Outcome.SKIPPED
        if lookup_error:
            activity.logger.warning("mta-sts refresh of %s: record lookup: %s", domain, lookup_error)
        try:
            policy, text = await self._sts.served_policy(domain)
            if policy is None:
                raise PolicyFetchError("no-policy-served")
        except PolicyFetchError as err:
            # A mode-none domain that stopped serving a policy is no news for an operator (as in mox).
            quiet = mode == Mode.NONE and str(err) == "no-policy-served"
            level = logging.DEBUG if quiet else logging.WARNING
            activity.logger.log(level, "mta-sts refresh of %s: keeping the cached policy: %s", domain, err)
            return _Outcome.FAILED
        done = await cache.replace(
            self._pool,
            domain,
            seen,
            datetime.now(UTC),
            # Without a record (DNS failing) the policy is still the one of the id we knew.
            record_id=record.id if record is not None else row["record_id"],
            mode=policy.mode.value,
            mx=list(policy.mx),
            max_age=policy.max_age,
            policy_text=text,
        )
        return _Outcome.UPDATED if done else _Outcome.SKIPPED
