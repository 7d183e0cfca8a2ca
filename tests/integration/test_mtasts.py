"""MTA-STS and RequireTLS in direct delivery, through the real workflow (spec 02 §1.3, §1.4, §2.1–§2.3).

A loopback DNS server publishes `_mta-sts` records, a real HTTPS server serves the policies with a
certificate from a test CA that Tempost is told to trust, and SMTP servers on 127.0.0.x play the MX hosts.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.integration.test_direct import MX1, _common_port
from tests.support.dnsserver import DNSServer
from tests.support.policyserver import PolicyServer
from tests.support.smtpsink import SMTPSink

POLICY_HOST = "127.0.0.5"
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmax_age: 86400\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def port() -> int:
    return _common_port([MX1])


@pytest.fixture
def policies(ca: trustme.CA) -> Iterator[PolicyServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mta-sts.example.com").configure_cert(ctx)
    server = PolicyServer(POLICY_HOST, ctx).start()
    yield server
    server.stop()


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer().start()
    server.add("example.com", "MX", "10 mx1.example.com.").add("mx1.example.com", "A", MX1)
    server.add("mta-sts.example.com", "A", POLICY_HOST)
    yield server
    server.stop()


def _mx(port: int, cert_ca: trustme.CA | None) -> SMTPSink:
    ctx = None
    if cert_ca is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert_ca.issue_cert("mx1.example.com").configure_cert(ctx)
    return SMTPSink(MX1, port=port, tls_context=ctx).start()


@pytest.fixture
def sts_stack(stack_factory, dns: DNSServer, port: int, policies: PolicyServer, ca_file: str) -> Any:
    async def make(**queue: Any) -> Stack:
        direct = {
            "resolvers": [dns.address],
            "smtp_port": port,
            "ca_file": ca_file,
            "mtasts_port": policies.port,
        }
        return await stack_factory(direct=direct, default_transport="direct", **queue)

    return make


def _publish(dns: DNSServer, policies: PolicyServer, policy: str, record_id: str = "20260101") -> None:
    dns.remove("_mta-sts.example.com", "TXT")
    dns.add("_mta-sts.example.com", "TXT", f'"v=STSv1; id={record_id};"')
    policies.policies["mta-sts.example.com"] = policy


async def _send(stack: Stack, **extra: Any) -> tuple[Any, dict[str, Any]]:
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "hello", **extra})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    return status.msgs[0], row


async def test_enforced_policy_delivers_over_verified_tls(
    sts_stack, dns: DNSServer, policies: PolicyServer, ca: trustme.CA, port: int
) -> None:
    _publish(dns, policies, ENFORCE)
    mx = _mx(port, ca)
    try:
        stack = await sts_stack()
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
        # A second message uses the cached policy: the TXT id is unchanged, so no second fetch.
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and policies.requests == ["mta-sts.example.com"]
    finally:
        mx.stop()


async def test_enforced_policy_refuses_an_untrusted_certificate_without_plaintext_fallback(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    _publish(dns, policies, ENFORCE)
    mx = _mx(port, trustme.CA())
    try:
        stack = await sts_stack(max_attempts=2)
        msg, row = await _send(stack)
        assert msg.state == MsgState.FAILED and msg.attempts == 2
        assert mx.messages() == [] and "certificate" in row["Results"][-1]["Error"].lower()
    finally:
        mx.stop()


async def test_enforced_policy_skips_mx_hosts_it_does_not_list(
    sts_stack, dns: DNSServer, policies: PolicyServer, ca: trustme.CA, port: int
) -> None:
    _publish(dns, policies, ENFORCE.replace("mx1.example.com", "other.example.com"))
    mx = _mx(port, ca)
    try:
        stack = await sts_stack(max_attempts=1)
        msg, row = await _send(stack)
        assert msg.state == MsgState.FAILED and mx.messages() == []
        assert "does not match enforced mta-sts policy" in row["Results"][-1]["Error"]
    finally:
        mx.stop()


async def test_testing_mode_delivers_to_unlisted_hosts_opportunistically(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    _publish(dns, policies, ENFORCE.replace("enforce", "testing").replace("mx1.example.com", "other.example"))
    mx = _mx(port, trustme.CA())
    try:
        stack = await sts_stack()
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    finally:
        mx.stop()


async def test_policy_fetch_failure_is_backed_off_and_mail_goes_without_policy(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    _publish(dns, policies, ENFORCE)
    policies.status = 500
    mx = _mx(port, None)
    try:
        stack = await sts_stack()
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED
        msg, _ = await _send(stack)
        # The failed fetch is remembered for five minutes: one request for two messages.
        assert policies.requests == ["mta-sts.example.com"]
        # Both attempts are reported under an STS result with what went wrong (spec 02 §2.3 item 5).
        results = (await stack.admin("GET", "/tlsresults")).json()["Results"]
        [rcpt] = [r["Result"] for r in results if not r["IsHost"] and r["RecipientDomain"] == "example.com"]
        assert rcpt["policy"]["policy-type"] == "sts"
        reasons = {(d["result-type"], d.get("failure-reason-code", "")) for d in rcpt["failure-details"]}
        assert ("sts-policy-fetch-error", "cannot-fetch-policy") in reasons
        assert ("sts-policy-fetch-error", "back-off-after-recent-fetch-error") in reasons
    finally:
        mx.stop()


async def test_mta_sts_dns_failure_aborts_the_attempt(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    dns.fail("_mta-sts.example.com")
    mx = _mx(port, None)
    try:
        stack = await sts_stack(max_attempts=1)
        msg, row = await _send(stack)
        assert msg.state == MsgState.FAILED and mx.messages() == []
        assert "mta-sts" in row["Results"][-1]["Error"]
    finally:
        mx.stop()


async def test_19_requiretls_without_any_policy_fails_permanently_without_dialing(
    sts_stack, port: int
) -> None:
    mx = _mx(port, None)
    try:
        stack = await sts_stack()
        msg, row = await _send(stack, RequireTLS=True)
        assert msg.state == MsgState.FAILED and msg.attempts == 1 and mx.messages() == []
        assert row["Results"][-1]["Code"] == 554 and row["Results"][-1]["Secode"] == "7.30"
    finally:
        mx.stop()


async def test_30_requiretls_with_a_server_lacking_requiretls_fails_with_5_7_30(
    sts_stack, dns: DNSServer, policies: PolicyServer, ca: trustme.CA, port: int
) -> None:
    _publish(dns, policies, ENFORCE)
    mx = _mx(port, ca)
    try:
        stack = await sts_stack()
        msg, row = await _send(stack, RequireTLS=True)
        # Every host lacked REQUIRETLS: permanent at once (spec 02 §1.4).
        assert msg.state == MsgState.FAILED and msg.attempts == 1 and mx.messages() == []
        assert row["Results"][-1]["Secode"] == "7.30"
    finally:
        mx.stop()


async def test_16_tls_required_no_ignores_verification_failures(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    _publish(dns, policies, ENFORCE)
    mx = _mx(port, trustme.CA())
    try:
        stack = await sts_stack()
        msg, _ = await _send(stack, RequireTLS=False)
        assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    finally:
        mx.stop()


async def test_tls_results_record_the_sts_policy_and_mx_mismatches(
    sts_stack, dns: DNSServer, policies: PolicyServer, ca: trustme.CA, port: int
) -> None:
    _publish(dns, policies, ENFORCE.replace("mx1.example.com", "other.example.com"))
    mx = _mx(port, ca)
    try:
        stack = await sts_stack(max_attempts=1)
        await _send(stack)
        [row] = (await stack.admin("GET", "/tlsresults", params={"domain": "example.com"})).json()["Results"]
        result = row["Result"]
        assert result["policy"]["policy-type"] == "sts" and result["policy"]["mx-host"] == [
            "other.example.com"
        ]
        assert "mode: enforce" in result["policy"]["policy-string"]
        assert result["summary"]["total-failure-session-count"] == 1
        assert result["failure-details"][0]["failure-reason-code"] == "mtasts-policy-mx-mismatch"
    finally:
        mx.stop()


async def _rcpt_result(stack: Stack) -> dict[str, Any]:
    [row] = (await stack.admin("GET", "/tlsresults", params={"domain": "example.com"})).json()["Results"]
    return row["Result"]


async def test_mta_sts_dnssec_failure_aborts_the_attempt_and_is_reported_by_its_extended_dns_error(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    # A validating resolver answers SERVFAIL with EDE 6 (DNSSEC Bogus) for the `_mta-sts` record.
    dns.fail("_mta-sts.example.com", ede=6)
    mx = _mx(port, None)
    try:
        stack = await sts_stack(max_attempts=1)
        msg, _ = await _send(stack)
        assert msg.state == MsgState.FAILED and mx.messages() == [] and policies.requests == []
        result = await _rcpt_result(stack)
        # Spec 02 §2.3 items 2 and 5, §1.3: an sts result, the failure named, one failed session.
        assert result["policy"]["policy-type"] == "sts"
        assert result["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
        [detail] = result["failure-details"]
        assert detail["result-type"] == "sts-policy-fetch-error"
        assert detail["failure-reason-code"] == "dns-extended-error-6-dnssec-bogus"
    finally:
        mx.stop()


async def test_tls_required_no_goes_on_after_an_mta_sts_dns_failure_and_reports_it(
    sts_stack, dns: DNSServer, port: int
) -> None:
    dns.fail("_mta-sts.example.com")
    mx = _mx(port, None)
    try:
        stack = await sts_stack()
        msg, _ = await _send(stack, RequireTLS=False)
        assert msg.state == MsgState.DELIVERED
        result = await _rcpt_result(stack)
        # The lookup failed but no session did: the attempt went on without a policy (spec 02 §1.3).
        assert result["policy"]["policy-type"] == "sts"
        assert result["summary"]["total-failure-session-count"] == 0
        details = {(d["result-type"], d["failure-reason-code"]) for d in result["failure-details"]}
        # Next to it: the MX host offered no STARTTLS.
        assert details == {("sts-policy-fetch-error", "dns-lookup"), ("starttls-not-supported", "")}
    finally:
        mx.stop()


async def test_a_cached_unverified_session_never_serves_an_enforced_policy(
    sts_stack, dns: DNSServer, policies: PolicyServer, port: int
) -> None:
    # One MX for two domains, its certificate from a CA nobody trusts: fine for opportunistic TLS to
    # other.example (no policy), not for example.com's enforced policy.
    _publish(dns, policies, ENFORCE)
    dns.add("other.example", "MX", "10 mx1.example.com.")
    mx = _mx(port, trustme.CA())
    try:
        stack = await sts_stack(max_attempts=1, connection_cache_time_limit="30s")

        async def send(to: str) -> Any:
            resp = await stack.send_ok({"To": [{"Address": to}], "Text": "hello"})
            return (await stack.finished(resp["Submissions"][0]["QueueMsgID"])).msgs[0]

        assert (await send("bob@other.example")).state == MsgState.DELIVERED
        # The idle session was set up under another TLS policy: a fresh one fails verification.
        assert (await send("bob@example.com")).state == MsgState.FAILED
        assert (await send("carol@other.example")).state == MsgState.DELIVERED
        assert [t.rcpt_tos for t in mx.messages()] == [["bob@other.example"], ["carol@other.example"]]
        # other.example's second message reused the first's connection.
        assert mx.connections == 2
    finally:
        mx.stop()
