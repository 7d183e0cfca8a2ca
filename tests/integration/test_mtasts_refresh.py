"""The MTA-STS cache's background refresher against real parts (spec 02 §2.3 item 6).

The refresh activity runs against the loopback DNS server, a real HTTPS policy server (certificates from a
trustme CA the refresher is told to trust; it counts requests) and PostgreSQL holding the cache. Every test
leaves at most one row due for a refresh, so the run's three-hour spread never makes it wait. The last
test goes through the Temporal schedule the worker creates and the MTASTSRefresh workflow it starts.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import ScheduleActionExecutionStartWorkflow, ScheduleIntervalSpec
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.dns import Resolver
from activities.mtasts import MTASTSLookup, PolicyLookup
from activities.mtastsrefresh import MTASTSRefresher
from domain.config import DirectConfig
from domain.contracts import MTASTSRefreshResult, mtasts_refresh_schedule_id
from domain.mtasts import parse_policy
from store.db import Pool
from tests.conftest import Stack
from tests.support.dnsserver import DNSServer
from tests.support.mtastsenv import POLICY_HOST
from tests.support.policyserver import PolicyServer
from worker.schedules import ensure_mtasts_refresh_schedule

DNS_ADDR = "127.0.56.53"
POLICY_IP = "127.0.56.56"
DOMAIN = "example.com"
STS_NAME = f"_mta-sts.{DOMAIN}"
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx2.example.com\nmax_age: 604800\n"
# Last updated long enough ago that the next run refreshes the row.
STALE = timedelta(hours=13)


@pytest.fixture
def direct(dns_server: DNSServer, policies: PolicyServer, ca_file: str) -> DirectConfig:
    """Direct delivery's settings pointing at this module's DNS and policy servers."""
    return DirectConfig(resolvers=[dns_server.address], ca_file=ca_file, mtasts_port=policies.port)


async def _refresh(pool: Pool, direct: DirectConfig) -> MTASTSRefreshResult:
    """One refresh run, as the MTASTSRefresh workflow's activity does it."""
    return await ActivityEnvironment().run(MTASTSRefresher(pool, direct).refresh_policies)


async def _insert(
    pool: Pool,
    *,
    domain: str = DOMAIN,
    updated: datetime,
    used: datetime,
    record_id: str = "1",
    policy: str = ENFORCE,
    backoff: bool = False,
) -> dict[str, Any]:
    """Put a cached policy as a lookup at `updated` would have stored it; returns the row."""
    p = parse_policy(policy)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO mtasts_policies (domain, valid_until, last_update, last_use, backoff, record_id,"
            " mode, mx, max_age, policy_text) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (
                domain,
                updated + timedelta(seconds=p.max_age),
                updated,
                used,
                backoff,
                record_id,
                p.mode.value,
                list(p.mx),
                p.max_age,
                "" if backoff else policy,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return row


async def _row(pool: Pool, domain: str = DOMAIN) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM mtasts_policies WHERE domain = %s", (domain,))
        return await cur.fetchone()


def _publish(dns_server: DNSServer, record_id: str) -> None:
    dns_server.add(STS_NAME, "TXT", f'"v=STSv1; id={record_id};"')


async def test_policy_with_unchanged_record_id_stays_valid_without_fetching_it(
    pool: Pool, direct: DirectConfig, dns_server: DNSServer, policies: PolicyServer
) -> None:
    now = datetime.now(UTC)
    before = await _insert(pool, updated=now - STALE, used=now - timedelta(days=3))
    _publish(dns_server, "1")
    # Served now but never asked for: the unchanged id says the cached policy is current.
    policies.policies[POLICY_HOST] = TESTING
    result = await _refresh(pool, direct)
    after = await _row(pool)
    assert result == MTASTSRefreshResult(extended=1)
    assert policies.requests == []
    assert after is not None and after["last_update"] > now
    assert after["valid_until"] == after["last_update"] + timedelta(seconds=86400)
    # Only the validity moved; a refresh is not a use, so the 180-day clock keeps running.
    unchanged = {k: v for k, v in after.items() if k not in ("valid_until", "last_update")}
    assert unchanged == {k: v for k, v in before.items() if k not in ("valid_until", "last_update")}


async def test_changed_record_id_replaces_a_backed_off_policy_with_the_one_now_served(
    pool: Pool, direct: DirectConfig, dns_server: DNSServer, policies: PolicyServer
) -> None:
    now = datetime.now(UTC)
    used = now - timedelta(days=3)
    # A fetch failed 13 hours ago: the row is the five-minute back-off of mode none.
    await _insert(
        pool,
        updated=now - STALE,
        used=used,
        policy="version: STSv1\nmode: none\nmax_age: 300\n",
        backoff=True,
    )
    _publish(dns_server, "2")
    policies.policies[POLICY_HOST] = ENFORCE
    assert await _refresh(pool, direct) == MTASTSRefreshResult(updated=1)
    row = await _row(pool)
    assert row is not None and policies.requests == [POLICY_HOST]
    assert row["backoff"] is False and row["record_id"] == "2"
    assert (row["mode"], row["mx"], row["max_age"], row["policy_text"]) == (
        "enforce",
        ["mx1.example.com"],
        86400,
        ENFORCE,
    )
    assert row["last_update"] > now and row["valid_until"] == row["last_update"] + timedelta(seconds=86400)
    assert row["last_use"] == used
    # The next delivery finds the policy cached and current: no fetch of its own.
    sts = MTASTSLookup(
        Resolver(direct.resolvers), pool, https_port=direct.mtasts_port, ca_file=direct.ca_file
    )
    assert await sts.lookup(DOMAIN, datetime.now(UTC)) == PolicyLookup(parse_policy(ENFORCE), True)
    assert policies.requests == [POLICY_HOST]


async def test_mode_none_policy_is_forgotten_once_its_record_is_gone(
    pool: Pool, direct: DirectConfig, policies: PolicyServer
) -> None:
    now = datetime.now(UTC)
    await _insert(pool, updated=now - STALE, used=now, policy="version: STSv1\nmode: none\nmax_age: 86400\n")
    assert await _refresh(pool, direct) == MTASTSRefreshResult(deleted=1)
    assert await _row(pool) is None and policies.requests == []


async def test_mode_none_policy_is_left_alone_while_its_record_lookup_fails(
    pool: Pool, direct: DirectConfig, dns_server: DNSServer, policies: PolicyServer
) -> None:
    now = datetime.now(UTC)
    before = await _insert(
        pool, updated=now - STALE, used=now, policy="version: STSv1\nmode: none\nmax_age: 86400\n"
    )
    _publish(dns_server, "2")
    dns_server.fail(STS_NAME)
    assert await _refresh(pool, direct) == MTASTSRefreshResult(skipped=1)
    assert await _row(pool) == before and policies.requests == []


async def test_enforced_policy_whose_record_is_gone_is_fetched_again_and_kept_current(
    pool: Pool, direct: DirectConfig, policies: PolicyServer
) -> None:
    # The record may be missing through a DNS mishap; an enforced policy must not lapse meanwhile.
    now = datetime.now(UTC)
    await _insert(pool, updated=now - STALE, used=now)
    policies.policies[POLICY_HOST] = TESTING
    assert await _refresh(pool, direct) == MTASTSRefreshResult(updated=1)
    row = await _row(pool)
    assert row is not None and policies.requests == [POLICY_HOST]
    assert (row["mode"], row["record_id"], row["policy_text"]) == ("testing", "1", TESTING)
    assert row["valid_until"] == row["last_update"] + timedelta(seconds=604800)


async def test_failing_refetch_keeps_the_cached_policy_and_logs_why(
    pool: Pool,
    direct: DirectConfig,
    dns_server: DNSServer,
    policies: PolicyServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = datetime.now(UTC)
    before = await _insert(pool, updated=now - STALE, used=now)
    _publish(dns_server, "2")
    policies.policies[POLICY_HOST] = TESTING
    policies.status = 500
    with caplog.at_level(logging.WARNING):
        assert await _refresh(pool, direct) == MTASTSRefreshResult(failed=1)
    assert policies.requests == [POLICY_HOST]
    # Untouched, so the next run (or a delivery) tries again.
    assert await _row(pool) == before
    assert f"mta-sts refresh of {DOMAIN}: keeping the cached policy: cannot-fetch-policy" in caplog.text


async def test_policy_unused_for_180_days_is_deleted_and_a_recently_updated_one_untouched(
    pool: Pool, direct: DirectConfig, dns_server: DNSServer, policies: PolicyServer
) -> None:
    now = datetime.now(UTC)
    await _insert(
        pool, domain="gone.example", updated=now - timedelta(days=181), used=now - timedelta(days=181)
    )
    kept = await _insert(pool, updated=now - timedelta(hours=11), used=now - timedelta(days=179))
    assert await _refresh(pool, direct) == MTASTSRefreshResult(unused_deleted=1)
    assert await _row(pool, "gone.example") is None
    assert await _row(pool) == kept
    assert dns_server.queries == [] and policies.requests == []


async def test_worker_creates_a_daily_refresh_schedule_whose_first_run_comes_at_once(
    stack_factory: Any, direct: DirectConfig, dns_server: DNSServer, policies: PolicyServer
) -> None:
    stack: Stack = await stack_factory(direct=direct.model_dump())
    handle = stack.client.get_schedule_handle(mtasts_refresh_schedule_id(stack.config.temporal.task_queue))
    # The tests' configuration turns the schedule off ("0s").
    assert not await ensure_mtasts_refresh_schedule(stack.client, stack.config)
    with pytest.raises(RPCError):
        await handle.describe()
    worker = stack.config.worker.model_copy(update={"mtasts_refresh_interval": timedelta(hours=24)})
    config = stack.config.model_copy(update={"worker": worker})
    now = datetime.now(UTC)
    await _insert(stack.pool, updated=now - STALE, used=now)
    _publish(dns_server, "1")
    assert await ensure_mtasts_refresh_schedule(stack.client, config)
    # Created once: a second worker starting finds it.
    assert not await ensure_mtasts_refresh_schedule(stack.client, config)
    try:
        described = await handle.describe()
        assert described.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(hours=24))]
        async with asyncio.timeout(60):
            while not described.info.recent_actions:
                await asyncio.sleep(0.1)
                described = await handle.describe()
            action = described.info.recent_actions[0].action
            assert isinstance(action, ScheduleActionExecutionStartWorkflow)
            run = stack.client.get_workflow_handle(action.workflow_id, result_type=MTASTSRefreshResult)
            assert await run.result() == MTASTSRefreshResult(extended=1)
        row = await _row(stack.pool)
        assert row is not None and row["last_update"] > now and policies.requests == []
    finally:
        await handle.delete()
