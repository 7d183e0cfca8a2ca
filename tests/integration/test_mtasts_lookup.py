"""MTA-STS policy lookup against real parts: spec 02 §10 scenarios 54 (TXT), 55 (policy fetch), 56 (cache).

`activities/mtasts.py` (MTASTSLookup) runs against the loopback DNS server, a real HTTPS policy server whose
certificates come from a trustme CA that the lookup is told to trust, and PostgreSQL for the policy cache.
The scenarios come from mox's mtasts and mtastsdb tests; mox returns typed errors where Tempost's
`PolicyLookup` carries a reason string (`error`), so "syntax error", "fetch error" etc. are asserted on
that string, on the exception a first-fetch DNS failure raises (`MTASTSDNSError`), and on the cache row.
"""

from __future__ import annotations

import ssl
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme

from activities.dns import DNSNotFound, DNSTemporary, Resolver
from activities.mtasts import BACKOFF_SECONDS, MTASTSDNSError, MTASTSLookup, PolicyLookup
from deploy.embedded import free_port
from domain.mtasts import (
    MAX_POLICY_SIZE,
    Mode,
    Policy,
    PolicySyntaxError,
    RecordSyntaxError,
    parse_policy,
    parse_record,
)
from store import mtasts as cache
from store.db import Pool
from tests.support.dnsserver import DNSServer
from tests.support.mtastsenv import POLICY_HOST, RecursiveDNSServer, policy_tls
from tests.support.policyserver import PolicyServer

DNS_ADDR = "127.0.54.53"
# The address `mta-sts.example.com` resolves to; every policy server of this module listens on it.
POLICY_IP = "127.0.54.56"
DOMAIN = "example.com"
WELL_KNOWN = "/.well-known/mta-sts.txt"
RECORD = '"v=STSv1; id=20160831085700Z;"'
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.mx.example.com\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


class RedirectingServer:
    """HTTPS server answering the policy URL with a 301 to a path on itself that serves a valid policy.

    PolicyServer has no redirects; this one shows a client that followed the redirect would have found a
    policy, so a fetch error can only mean the redirect was not followed.
    """

    def __init__(self, host: str, ctx: ssl.SSLContext, policy: str) -> None:
        self.port = free_port(host)
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.paths.append(self.path)
                if self.path == WELL_KNOWN:
                    self.send_response(301)
                    self.send_header("Location", "/moved/mta-sts.txt")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = policy.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, self.port), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Fixtures ---


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


def _lookup(dns_server: DNSServer, pool: Pool, ca_file: str, port: int) -> MTASTSLookup:
    return MTASTSLookup(Resolver([dns_server.address], timeout=3.0), pool, https_port=port, ca_file=ca_file)


@pytest.fixture
def sts(dns_server: RecursiveDNSServer, pool: Pool, ca_file: str, policies: PolicyServer) -> MTASTSLookup:
    """The lookup as direct delivery builds it, pointed at this module's DNS and policy servers."""
    return _lookup(dns_server, pool, ca_file, policies.port)


async def _row(pool: Pool, domain: str = DOMAIN) -> dict[str, Any] | None:
    # Read the cache without cache.get, which would bump last_use.
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM mtasts_policies WHERE domain = %s", (domain,))
        return await cur.fetchone()


def _publish(dns_server: DNSServer, *txt: str, name: str = f"_mta-sts.{DOMAIN}") -> None:
    dns_server.remove(name, "TXT")
    dns_server.add(name, "TXT", *txt)


def _assert_backoff_row(row: dict[str, Any] | None, now: datetime) -> None:
    """A failed fetch is remembered as mode none for five minutes (spec 02 §2.3 item 2)."""
    assert row is not None
    assert row["backoff"] is True and row["mode"] == "none" and row["mx"] == []
    assert row["max_age"] == BACKOFF_SECONDS == 300
    assert row["valid_until"] == now + timedelta(minutes=5)


# --- Scenario 54: the `_mta-sts` TXT record ---


async def test_54_absent_txt_record_means_no_record(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    with pytest.raises(DNSNotFound):
        await Resolver([dns_server.address], timeout=3.0).txt(f"_mta-sts.{DOMAIN}")
    # No record: no policy, and that answer is fresh; nothing is fetched or cached (spec 02 §2.3 item 2).
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(None, True)
    assert policies.requests == [] and await _row(pool) is None


async def test_54_only_non_sts_txt_strings_mean_no_record(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    # `v=STSv1` without `;` and `v=STSv10` are not STS strings (spec 02 §2.3), so neither is a syntax error.
    _publish(dns_server, '"v=spf1 -all"', '"v=STSv1"', '"v=STSv10; id=1;"', '"unrelated"')
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(None, True)
    assert policies.requests == [] and await _row(pool) is None


async def test_54_one_sts_record_among_junk_is_used(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, '"v=spf1 -all"', RECORD, '"unrelated"')
    policies.policies[POLICY_HOST] = ENFORCE
    result = await sts.lookup(DOMAIN, now)
    assert result == PolicyLookup(parse_policy(ENFORCE), True)
    row = await _row(pool)
    assert row is not None and row["record_id"] == "20160831085700Z" and not row["backoff"]


async def test_54_sts_record_with_a_bogus_field_is_a_syntax_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    with pytest.raises(RecordSyntaxError):
        parse_record("v=STSv1; bogus")
    _publish(dns_server, '"v=STSv1; bogus"')
    policies.policies[POLICY_HOST] = ENFORCE
    result = await sts.lookup(DOMAIN, now)
    assert result.policy is None and not result.fresh
    assert result.error.startswith("record-syntax-error")
    # A broken record is neither fetched behind nor cached: the next attempt looks again.
    assert policies.requests == [] and await _row(pool) is None


async def test_54_two_sts_records_are_multiple_records(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, '"v=STSv1; id=1;"', '"v=STSv1; id=2;"')
    policies.policies[POLICY_HOST] = ENFORCE
    result = await sts.lookup(DOMAIN, now)
    assert result.policy is None and not result.fresh
    # Tempost reports this as a record error whose reason names the spec's "multiple records".
    assert "multiple-mta-sts-records" in result.error
    assert policies.requests == [] and await _row(pool) is None


async def test_54_record_behind_chained_cnames_is_found(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    # A hosted-MTA-STS setup: the domain delegates its record through two CNAMEs.
    dns_server.add(f"_mta-sts.{DOMAIN}", "CNAME", "_mta-sts.hosting.example.")
    dns_server.add("_mta-sts.hosting.example", "CNAME", "_mta-sts.provider.example.")
    _publish(dns_server, RECORD, name="_mta-sts.provider.example")
    policies.policies[POLICY_HOST] = ENFORCE
    assert await Resolver([dns_server.address], timeout=3.0).txt(f"_mta-sts.{DOMAIN}") == [
        "v=STSv1; id=20160831085700Z;"
    ]
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(parse_policy(ENFORCE), True)
    # The policy still comes from mta-sts.<original domain>, not from the CNAME target (RFC 8461 §3.3).
    assert policies.requests == [POLICY_HOST]


async def test_54_servfail_is_a_dns_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    dns_server.fail(f"_mta-sts.{DOMAIN}")
    with pytest.raises(DNSTemporary):
        await Resolver([dns_server.address], timeout=3.0).txt(f"_mta-sts.{DOMAIN}")
    # Without a cached policy a DNS error is raised: the caller aborts the attempt (spec 02 §1.3).
    with pytest.raises(MTASTSDNSError, match="dns-lookup"):
        await sts.lookup(DOMAIN, now)
    assert policies.requests == [] and await _row(pool) is None


async def test_54_servfail_behind_a_cname_is_a_dns_error(
    sts: MTASTSLookup, dns_server: DNSServer, pool: Pool, now: datetime
) -> None:
    dns_server.add(f"_mta-sts.{DOMAIN}", "CNAME", "_mta-sts.provider.example.")
    _publish(dns_server, RECORD, name="_mta-sts.provider.example")
    dns_server.fail("_mta-sts.provider.example")
    with pytest.raises(MTASTSDNSError):
        await sts.lookup(DOMAIN, now)
    assert await _row(pool) is None


# --- Scenario 55: fetching the policy over HTTPS ---


async def test_55_valid_none_policy_is_parsed(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = NONE
    assert parse_policy(NONE) == Policy(Mode.NONE, (), 86400)
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(Policy(Mode.NONE, (), 86400), True)
    # A served policy is cached for its max_age, with the text as served.
    row = await _row(pool)
    assert row is not None and row["mode"] == "none" and not row["backoff"]
    assert row["policy_text"] == NONE and row["valid_until"] == now + timedelta(seconds=86400)


async def test_55_policy_host_with_an_unreachable_first_address_is_fetched_from_the_next(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    # Nothing listens on the first address: like MX hosts, the policy host's other addresses are tried.
    dns_server.remove(POLICY_HOST, "A")
    dns_server.add(POLICY_HOST, "A", "127.0.54.57", POLICY_IP)
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = ENFORCE
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(parse_policy(ENFORCE), True)


async def test_55_get_on_a_domain_without_txt_record_fetches_nothing(
    sts: MTASTSLookup, policies: PolicyServer, now: datetime
) -> None:
    # The policy host serves a policy, but without the TXT record the domain has no MTA-STS.
    policies.policies[POLICY_HOST] = ENFORCE
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(None, True)
    assert policies.requests == []


async def test_55_bogus_policy_is_a_syntax_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = "bogus"
    with pytest.raises(PolicySyntaxError) as syntax:
        parse_policy("bogus")
    result = await sts.lookup(DOMAIN, now)
    # A syntax error, not a fetch error: reported as sts-policy-invalid (spec 02 §2.3 item 5).
    assert result == PolicyLookup(
        None, False, f"policy-syntax-error: {syntax.value}", "sts-policy-invalid", "policy-syntax-error"
    )
    assert policies.requests == [POLICY_HOST]
    _assert_backoff_row(await _row(pool), now)


_PAST = datetime.now(UTC) - timedelta(days=10)


@pytest.mark.parametrize(
    ("name", "validity"),
    [
        pytest.param("mta-sts.other.example", {}, id="wrong-name"),
        pytest.param(
            POLICY_HOST, {"not_before": _PAST, "not_after": _PAST + timedelta(days=9)}, id="expired"
        ),
    ],
)
async def test_55_certificate_not_valid_for_the_policy_host_is_a_fetch_error(
    name: str,
    validity: dict[str, datetime],
    dns_server: DNSServer,
    pool: Pool,
    ca: trustme.CA,
    ca_file: str,
    now: datetime,
) -> None:
    # Same trusted CA as the good server: only the name or the validity period is wrong.
    server = PolicyServer(POLICY_IP, policy_tls(ca, name, **validity)).start()
    try:
        server.policies[POLICY_HOST] = ENFORCE
        _publish(dns_server, RECORD)
        result = await _lookup(dns_server, pool, ca_file, server.port).lookup(DOMAIN, now)
        assert result.policy is None and not result.fresh
        # WebPKI failures are fetch errors with their own reason (spec 02 §2.3 item 5: sts-webpki-invalid).
        assert result.error.startswith("sts-webpki-invalid")
        # The handshake failed, so no request ever reached the server.
        assert server.requests == []
        _assert_backoff_row(await _row(pool), now)
    finally:
        server.stop()


async def test_55_not_found_is_no_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)  # and the policy server has nothing for the host: 404
    result = await sts.lookup(DOMAIN, now)
    assert result == PolicyLookup(
        None, False, "no-policy-served", "sts-policy-fetch-error", "no-policy-served"
    )
    assert policies.requests == [POLICY_HOST]
    # Unlike "no record", a record without a policy is cached as a back-off (spec 02 §2.3 item 2).
    _assert_backoff_row(await _row(pool), now)


async def test_55_unresolvable_policy_host_is_no_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    dns_server.remove(POLICY_HOST, "A")
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = ENFORCE
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(
        None, False, "no-policy-served", "sts-policy-fetch-error", "no-policy-served"
    )
    assert policies.requests == []
    _assert_backoff_row(await _row(pool), now)


async def test_55_redirect_is_a_fetch_error_and_not_followed(
    dns_server: DNSServer, pool: Pool, ca: trustme.CA, ca_file: str, now: datetime
) -> None:
    server = RedirectingServer(POLICY_IP, policy_tls(ca, POLICY_HOST), ENFORCE)
    try:
        _publish(dns_server, RECORD)
        result = await _lookup(dns_server, pool, ca_file, server.port).lookup(DOMAIN, now)
        assert result.policy is None and not result.fresh
        assert result.error.startswith("cannot-fetch-policy") and "301" in result.error
        assert server.paths == [WELL_KNOWN]
        _assert_backoff_row(await _row(pool), now)
    finally:
        server.stop()


async def test_55_server_error_is_a_fetch_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = ENFORCE
    policies.status = 500
    result = await sts.lookup(DOMAIN, now)
    assert result == PolicyLookup(
        None, False, "cannot-fetch-policy: http status 500", "sts-policy-fetch-error", "cannot-fetch-policy"
    )
    _assert_backoff_row(await _row(pool), now)


def _padded_none_policy(size: int) -> str:
    """A valid `none` policy of exactly size bytes, padded with an extension line."""
    pad = size - len(NONE) - len("x: \n")
    return NONE + "x: " + "a" * pad + "\n"


async def test_55_policy_of_64_kib_and_2_bytes_is_a_syntax_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    # Valid apart from its size, so only the 64 KiB read limit can reject it.
    body = _padded_none_policy(MAX_POLICY_SIZE + 2)
    assert len(body.encode()) == 64 * 1024 + 2
    policies.policies[POLICY_HOST] = body
    result = await sts.lookup(DOMAIN, now)
    assert result.policy is None and not result.fresh
    assert result.error.startswith("policy-syntax-error")
    _assert_backoff_row(await _row(pool), now)


async def test_55_policy_of_exactly_64_kib_is_accepted(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    # The limit is inclusive: the boundary case for the scenario above.
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = _padded_none_policy(MAX_POLICY_SIZE)
    result = await sts.lookup(DOMAIN, now)
    assert result.fresh and result.policy is not None and result.policy.mode == Mode.NONE


# --- Scenario 56: the policy cache ---


async def test_56_store_upserts_and_replaces_policies(pool: Pool, now: datetime) -> None:
    assert await cache.get(pool, DOMAIN, now) is None
    mx1 = ["mx1.example.com", "mx2.example.com", "mx.backup-example.com"]
    await cache.put(
        pool, DOMAIN, now, record_id="123", mode="testing", mx=mx1, max_age=1296000, policy_text="p1"
    )
    row = await cache.get(pool, DOMAIN, now)
    assert row is not None and (row["record_id"], row["mode"], row["mx"]) == ("123", "testing", mx1)

    later = now + timedelta(minutes=1)
    await cache.put(
        pool,
        DOMAIN,
        later,
        record_id="124",
        mode="enforce",
        mx=["mx1.example.com"],
        max_age=360000,
        policy_text="p2",
    )
    row = await cache.get(pool, DOMAIN, later)
    assert row == {
        "domain": DOMAIN,
        "valid_until": later + timedelta(seconds=360000),
        "last_update": later,
        "last_use": later,
        "backoff": False,
        "record_id": "124",
        "mode": "enforce",
        "mx": ["mx1.example.com"],
        "max_age": 360000,
        "policy_text": "p2",
    }
    # One row per domain: the second put replaced the first.
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM mtasts_policies")
        assert await cur.fetchone() == {"n": 1}


async def test_56_store_get_bumps_last_use_and_skips_expired_rows(pool: Pool, now: datetime) -> None:
    await cache.put(pool, DOMAIN, now, record_id="1", mode="none", mx=[], max_age=60, policy_text="")
    used = now + timedelta(seconds=30)
    assert await cache.get(pool, DOMAIN, used) is not None
    row = await _row(pool)
    assert row is not None and row["last_use"] == used and row["last_update"] == now
    # Past valid_until the row is not returned (nor touched), though it stays for the refresher.
    assert await cache.get(pool, DOMAIN, now + timedelta(seconds=61)) is None
    row = await _row(pool)
    assert row is not None and row["last_use"] == used


async def test_56_failed_fetch_stores_a_backoff_row_and_lookup_backs_off(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    policies.policies[POLICY_HOST] = ENFORCE
    policies.status = 500
    assert (await sts.lookup(DOMAIN, now)).policy is None
    _assert_backoff_row(await _row(pool), now)
    # Within the five minutes the broken policy host is not asked again.
    soon = now + timedelta(minutes=4)
    assert await sts.lookup(DOMAIN, soon) == PolicyLookup(
        None,
        False,
        "back-off-after-recent-fetch-error",
        "sts-policy-fetch-error",
        "back-off-after-recent-fetch-error",
    )
    assert policies.requests == [POLICY_HOST]
    # After them the row has expired and the (now working) host is asked again.
    policies.status = 200
    later = now + timedelta(minutes=6)
    assert await sts.lookup(DOMAIN, later) == PolicyLookup(parse_policy(ENFORCE), True)
    assert policies.requests == [POLICY_HOST, POLICY_HOST]
    row = await _row(pool)
    assert row is not None and not row["backoff"] and row["mode"] == "enforce"


async def test_56_get_cached_policy_with_same_id_is_fresh(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    # Cached directly (as mox's test upserts), so any fetch would show up at the policy server.
    await cache.put(
        pool,
        DOMAIN,
        now,
        record_id="124",
        mode="enforce",
        mx=["mx1.example.com"],
        max_age=360000,
        policy_text=ENFORCE,
    )
    _publish(dns_server, '"v=STSv1; id=124"')
    policies.policies[POLICY_HOST] = NONE
    result = await sts.lookup(DOMAIN, now + timedelta(hours=1))
    assert result == PolicyLookup(Policy(Mode.ENFORCE, ("mx1.example.com",), 360000), True)
    assert policies.requests == []


async def test_56_get_backoff_row_is_no_policy_not_fresh_no_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    await cache.put(
        pool, DOMAIN, now, record_id="", mode="none", mx=[], max_age=300, policy_text="", backoff=True
    )
    _publish(dns_server, '"v=STSv1; id=1"')
    policies.policies[POLICY_HOST] = ENFORCE
    result = await sts.lookup(DOMAIN, now)
    assert result.policy is None and not result.fresh
    assert result.error == "back-off-after-recent-fetch-error"
    assert policies.requests == []


async def test_56_get_without_txt_record_is_no_policy_fresh_no_error(
    sts: MTASTSLookup, now: datetime
) -> None:
    assert await sts.lookup("absent.example.com", now) == PolicyLookup(None, True, "")


async def test_56_get_with_txt_temporary_error_is_a_dns_error(
    sts: MTASTSLookup, dns_server: DNSServer, pool: Pool, now: datetime
) -> None:
    dns_server.add("_mta-sts.temperror.example.com", "TXT", '""')
    dns_server.fail("_mta-sts.temperror.example.com")
    with pytest.raises(MTASTSDNSError):
        await sts.lookup("temperror.example.com", now)
    assert await _row(pool, "temperror.example.com") is None


async def _cache_enforce(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    """Fetch and cache the enforce policy under record id 124."""
    _publish(dns_server, '"v=STSv1; id=124"')
    policies.policies[POLICY_HOST] = ENFORCE
    assert await sts.lookup(DOMAIN, now) == PolicyLookup(parse_policy(ENFORCE), True)


async def test_56_get_with_txt_temporary_error_and_a_cached_policy_keeps_the_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    # The DNS error of the scenario above applies to a first fetch only; with a cached policy a failing
    # TXT check falls back to the cached policy (spec 02 §2.3 item 4).
    await _cache_enforce(sts, dns_server, policies, now)
    dns_server.fail(f"_mta-sts.{DOMAIN}")
    result = await sts.lookup(DOMAIN, now + timedelta(minutes=1))
    assert result.policy == parse_policy(ENFORCE) and not result.fresh
    assert result.error.startswith("dns-lookup") and result.error.endswith("+fallback-to-cached-policy")


async def test_54_dnssec_failure_of_the_txt_lookup_is_reported_by_its_extended_dns_error(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    # A validating resolver answers SERVFAIL with EDE 6 (DNSSEC Bogus); the report says so instead of the
    # generic dns-lookup (spec 02 §2.3 item 5).
    _publish(dns_server, RECORD)
    dns_server.fail(f"_mta-sts.{DOMAIN}", ede=6)
    with pytest.raises(MTASTSDNSError) as err:
        await sts.lookup(DOMAIN, now)
    assert err.value.reason == "dns-extended-error-6-dnssec-bogus"
    assert policies.requests == [] and await _row(pool) is None


async def test_56_dnssec_failure_of_the_txt_check_with_a_cached_policy_keeps_the_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, now: datetime
) -> None:
    await _cache_enforce(sts, dns_server, policies, now)
    dns_server.fail(f"_mta-sts.{DOMAIN}", ede=7)
    result = await sts.lookup(DOMAIN, now + timedelta(minutes=1))
    assert result.policy == parse_policy(ENFORCE) and not result.fresh
    assert (result.result_type, result.reason) == (
        "sts-policy-fetch-error",
        "dns-extended-error-7-signature-expired+fallback-to-cached-policy",
    )


async def test_54_txt_servfail_with_a_non_dnssec_extended_error_is_a_plain_dns_error(
    sts: MTASTSLookup, dns_server: DNSServer, now: datetime
) -> None:
    _publish(dns_server, RECORD)
    dns_server.fail(f"_mta-sts.{DOMAIN}", ede=22)  # No Reachable Authority
    with pytest.raises(MTASTSDNSError) as err:
        await sts.lookup(DOMAIN, now)
    assert err.value.reason == "dns-lookup"


async def test_56_get_with_changed_id_and_failing_refetch_keeps_the_old_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    await _cache_enforce(sts, dns_server, policies, now)
    _publish(dns_server, '"v=STSv1; id=125"')
    policies.policies[POLICY_HOST] = NONE
    policies.status = 500
    later = now + timedelta(minutes=1)
    result = await sts.lookup(DOMAIN, later)
    assert result == PolicyLookup(
        parse_policy(ENFORCE),
        False,
        "cannot-fetch-policy: http status 500+fallback-to-cached-policy",
        "sts-policy-fetch-error",
        "cannot-fetch-policy+fallback-to-cached-policy",
    )
    assert policies.requests == [POLICY_HOST, POLICY_HOST]
    # The cached policy is kept as it was: no back-off row replaces a good policy.
    row = await _row(pool)
    assert row is not None and row["record_id"] == "124" and row["mode"] == "enforce" and not row["backoff"]


async def test_56_get_with_changed_id_and_working_refetch_replaces_the_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    await _cache_enforce(sts, dns_server, policies, now)
    _publish(dns_server, '"v=STSv1; id=125"')
    policies.policies[POLICY_HOST] = NONE
    later = now + timedelta(minutes=1)
    assert await sts.lookup(DOMAIN, later) == PolicyLookup(Policy(Mode.NONE, (), 86400), True)
    row = await _row(pool)
    assert row is not None and row["record_id"] == "125" and row["policy_text"] == NONE
    assert row["valid_until"] == later + timedelta(seconds=86400)


async def test_56_get_after_the_txt_record_was_removed_keeps_the_old_policy(
    sts: MTASTSLookup, dns_server: DNSServer, policies: PolicyServer, pool: Pool, now: datetime
) -> None:
    await _cache_enforce(sts, dns_server, policies, now)
    dns_server.remove(f"_mta-sts.{DOMAIN}", "TXT")
    result = await sts.lookup(DOMAIN, now + timedelta(minutes=1))
    assert result == PolicyLookup(
        parse_policy(ENFORCE),
        False,
        "no-mta-sts-dns-txt-record+fallback-to-cached-policy",
        "sts-policy-fetch-error",
        "no-mta-sts-dns-txt-record+fallback-to-cached-policy",
    )
    # Only the background refresher deletes rows; a lookup leaves the cached policy in place.
    assert policies.requests == [POLICY_HOST]
    assert await _row(pool) is not None
