"""DANE in direct delivery through the real workflow (spec 02 §1.5 step 3, §2.1, §2.4; scenarios 12–19).

The loopback DNS server marks example.com as signed (the AD bit Tempost trusts) and publishes TLSA records
for the MX host; the MX host is an aiosmtpd server with a certificate from a CA Tempost does not trust, so
only DANE can verify it. The last tests break names the way a validating resolver reports a failed DNSSEC
validation: SERVFAIL with an Extended DNS Error (RFC 8914), and check the TLS results users get to see.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import REGISTRY

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.integration.test_direct import MX1, MX2, _common_port, _sample
from tests.support.dnsserver import DNSServer
from tests.support.scriptedsmtp import Script, ScriptedSMTP
from tests.support.smtpsink import SMTPSink

TLSA_NAME = "_25._tcp.mx1.example.com"


@pytest.fixture
def port() -> int:
    return _common_port([MX1])


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer().start()
    server.add("example.com", "MX", "10 mx1.example.com.").add("mx1.example.com", "A", MX1)
    server.sign("example.com")
    yield server
    server.stop()


@pytest.fixture
def cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("mx1.example.com")


def _spki_sha256(cert: trustme.LeafCert) -> str:
    c = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return hashlib.sha256(
        c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


@pytest.fixture
def mx(port: int, cert: trustme.LeafCert) -> Iterator[SMTPSink]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    s = SMTPSink(MX1, port=port, tls_context=ctx).start()
    yield s
    s.stop()


@pytest.fixture
def dane_stack(stack_factory, dns: DNSServer, port: int) -> Any:
    async def make(**queue: Any) -> Stack:
        return await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct", **queue
        )

    return make


async def _send(stack: Stack, **extra: Any) -> tuple[Any, dict[str, Any]]:
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "hello", **extra})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    return status.msgs[0], (await stack.admin("GET", f"/queue/{msg_id}")).json()


async def test_12_dane_ee_match_delivers_over_tls_the_ca_would_not_verify(
    dane_stack,
    dns: DNSServer,
    mx: SMTPSink,
    cert: trustme.LeafCert,
    port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns.add(TLSA_NAME, "TLSA", f"3 1 1 {_spki_sha256(cert)}")
    stack = await dane_stack()
    before = (await stack.http.get("/metrics")).text
    caplog.set_level(logging.INFO, logger="tempost.delivery")
    msg, _ = await _send(stack)
    assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    # The mail log names the MX host, its address and the TLS version.
    [line] = [r for r in caplog.records if getattr(r, "msg_id", None) == msg.id]
    assert line.relay == f"mx1.example.com[{MX1}]:{port} TLSv1.3"  # type: ignore[attr-defined]
    after = (await stack.http.get("/metrics")).text
    name, labels = "tempost_queue_delivery_duration_seconds_count", {"tlsmode": "requiredstarttls+dane"}
    assert _sample(after, name, result="ok", **labels) == _sample(before, name, result="ok", **labels) + 1


async def test_50_host_behind_a_secure_cname_uses_the_tlsa_records_of_its_final_name(
    stack_factory, port: int, mx: SMTPSink, cert: trustme.LeafCert
) -> None:
    # The MX name is a CNAME to host1; only host1's records match the certificate, while the MX name itself
    # publishes a record that matches nothing. Delivery succeeds only if host1's records are used (spec 02
    # §2.4: the expanded name first, when the expansion is secure).
    dns = DNSServer().start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        dns.add("mx1.example.com", "CNAME", "host1.example.com.").add("host1.example.com", "A", MX1)
        dns.add("_25._tcp.host1.example.com", "TLSA", f"3 1 1 {_spki_sha256(cert)}")
        dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "00" * 32)
        dns.sign("example.com")
        stack = await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct"
        )
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    finally:
        dns.stop()


async def test_57_host_behind_an_insecure_intermediate_cname_uses_the_tlsa_records_of_its_own_name(
    stack_factory, port: int, mx: SMTPSink, cert: trustme.LeafCert
) -> None:
    # mx1 (signed) -> mid.unsigned.test (unsigned) -> host1 (signed): the first hop and the addresses are
    # authentic, the chain is not. DANE applies with mx1's own records (RFC 7672 §2.2.2), never host1's:
    # only mx1's record matches the certificate here.
    dns = DNSServer().start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        dns.add("mx1.example.com", "CNAME", "mid.unsigned.test.")
        dns.add("mid.unsigned.test", "CNAME", "host1.example.com.").add("host1.example.com", "A", MX1)
        dns.add(TLSA_NAME, "TLSA", f"3 1 1 {_spki_sha256(cert)}")
        dns.add("_25._tcp.host1.example.com", "TLSA", "3 1 1 " + "00" * 32)
        dns.sign("example.com")
        stack = await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct"
        )
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
        results = (await stack.admin("GET", "/tlsresults")).json()["Results"]
        [host] = [r["Result"] for r in results if r["IsHost"]]
        assert (
            host["policy"]["policy-type"] == "tlsa" and host["policy"]["policy-domain"] == "mx1.example.com"
        )
    finally:
        dns.stop()


async def test_20_dane_mismatch_fails_without_plaintext_fallback(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "00" * 32)
    stack = await dane_stack(max_attempts=2)
    msg, row = await _send(stack)
    assert msg.state == MsgState.FAILED and msg.attempts == 2
    assert mx.messages() == [] and "dane" in row["Results"][-1]["Error"]


async def test_15_tlsa_without_dnssec_is_ignored_and_tls_stays_opportunistic(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.zones.signed.clear()
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "00" * 32)
    stack = await dane_stack()
    msg, _ = await _send(stack)
    assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1


DANE_COUNTERS = (
    "tempost_queue_destinations_authentic_total",
    "tempost_queue_destination_dane_required_total",
    "tempost_queue_destination_dane_starttlsunverified_total",
)


async def test_14_only_unusable_tlsa_records_require_starttls_without_verification(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.add(TLSA_NAME, "TLSA", "1 1 1 " + "00" * 32)  # PKIX-EE: not usable for SMTP
    stack = await dane_stack()
    before = {n: REGISTRY.get_sample_value(n) or 0 for n in DANE_COUNTERS}
    msg, _ = await _send(stack)
    assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    # Counted as DANE-required with STARTTLS left unverified (spec 01 §9).
    assert all((REGISTRY.get_sample_value(n) or 0) == before[n] + 1 for n in DANE_COUNTERS)


async def test_tlsa_lookup_failure_is_temporary_and_sends_nothing(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail(TLSA_NAME)
    stack = await dane_stack(max_attempts=1)
    msg, row = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == []
    assert "tlsa" in row["Results"][-1]["Error"]


async def test_17_tls_required_no_ignores_a_dane_mismatch(dane_stack, dns: DNSServer, mx: SMTPSink) -> None:
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "00" * 32)
    stack = await dane_stack()
    msg, _ = await _send(stack, RequireTLS=False)
    assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1


async def test_13_requiretls_with_dane_delivers_with_requiretls_in_mail_from(
    dane_stack, dns: DNSServer, mx: SMTPSink, cert: trustme.LeafCert
) -> None:
    dns.add(TLSA_NAME, "TLSA", f"3 1 1 {_spki_sha256(cert)}")
    mx.behaviour.ehlo_extra = ["REQUIRETLS"]
    stack = await dane_stack()
    msg, _ = await _send(stack, RequireTLS=True)
    assert msg.state == MsgState.DELIVERED and mx.transactions[0].requiretls


async def test_18_requiretls_with_only_unusable_tlsa_fails_permanently_before_dialing(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.add(TLSA_NAME, "TLSA", "1 1 1 " + "00" * 32)
    stack = await dane_stack()
    msg, row = await _send(stack, RequireTLS=True)
    assert msg.state == MsgState.FAILED and msg.attempts == 1 and mx.messages() == []
    assert row["Results"][-1]["Code"] == 554 and row["Results"][-1]["Secode"] == "7.30"


async def test_tls_results_are_recorded_for_reports(
    dane_stack, dns: DNSServer, mx: SMTPSink, cert: trustme.LeafCert
) -> None:
    dns.add(TLSA_NAME, "TLSA", f"3 1 1 {_spki_sha256(cert)}")
    # Without the connection cache: the second message would reuse the first one's session, and RFC 8460
    # §4.3 counts negotiated sessions, not messages.
    stack = await dane_stack(connection_cache_time_limit="0s")
    await _send(stack)
    await _send(stack)
    results = {r["PolicyDomain"]: r for r in (await stack.admin("GET", "/tlsresults")).json()["Results"]}
    host = results["mx1.example.com"]
    assert host["IsHost"] and host["RecipientDomain"] == "example.com" and host["SendReport"]
    policy, summary = host["Result"]["policy"], host["Result"]["summary"]
    assert policy["policy-type"] == "tlsa" and policy["policy-string"] == [f"3 1 1 {_spki_sha256(cert)}"]
    # Two attempts on the same day merge into one row.
    assert summary == {"total-successful-session-count": 2, "total-failure-session-count": 0}
    domain = results["example.com"]
    assert not domain["IsHost"] and domain["Result"]["policy"]["policy-type"] == "no-policy-found"


async def test_tls_results_record_a_dane_mismatch_on_the_host(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "00" * 32)
    stack = await dane_stack(max_attempts=1)
    await _send(stack)
    results = {r["PolicyDomain"]: r for r in (await stack.admin("GET", "/tlsresults")).json()["Results"]}
    host = results["mx1.example.com"]["Result"]
    assert host["summary"]["total-failure-session-count"] == 1
    [detail] = host["failure-details"]
    assert detail["result-type"] == "validation-failure" and detail["failure-reason-code"] == "dane-no-match"
    assert detail["receiving-mx-hostname"] == "mx1.example.com" and detail["receiving-ip"] == MX1


# --- DNSSEC failures reported by the resolver as Extended DNS Errors (RFC 8914; spec 02 §1.2, §1.5, §6) ---


async def _tls_results(stack: Stack) -> dict[str, dict[str, Any]]:
    """The stored TLS results of deliveries to example.com by policy domain, as the admin API shows them.

    A failed message's DSN goes to the sender's domain and may record its own results while a test reads;
    those are not what the tests look at.
    """
    rows = (await stack.admin("GET", "/tlsresults")).json()["Results"]
    return {r["PolicyDomain"]: r["Result"] for r in rows if r["RecipientDomain"] == "example.com"}


def _details(result: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [
        (d["result-type"], d["failure-reason-code"], d["failed-session-count"])
        for d in result["failure-details"]
    ]


async def test_mx_lookup_dnssec_failure_is_reported_on_the_domain_and_no_host_is_tried(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail("example.com", ede=6)
    stack = await dane_stack(max_attempts=1)
    msg, row = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == [] and mx.tls_sessions == 0
    assert "mx records" in row["Results"][-1]["Error"]
    results = await _tls_results(stack)
    # Spec 02 §1.2 step 3: the recipient domain's result, with no host result since no host was tried.
    assert list(results) == ["example.com"]
    domain = results["example.com"]
    assert domain["policy"]["policy-type"] == "no-policy-found"
    assert domain["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    assert _details(domain) == [("validation-failure", "dns-extended-error-6-dnssec-bogus", 1)]


async def test_mx_lookup_failure_with_a_non_dnssec_extended_error_is_not_reported(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail("example.com", ede=22)  # No Reachable Authority: trouble, not a failed validation
    stack = await dane_stack(max_attempts=1)
    msg, _ = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == []
    domain = (await _tls_results(stack))["example.com"]
    assert domain["summary"]["total-failure-session-count"] == 0 and domain["failure-details"] == []


async def test_ip_lookup_dnssec_failure_is_reported_as_a_tlsa_result_of_the_host(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail("mx1.example.com", ede=7)
    stack = await dane_stack(max_attempts=1)
    msg, row = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == []
    assert "looking up mx1.example.com" in row["Results"][-1]["Error"]
    results = await _tls_results(stack)
    # Spec 02 §1.5 step 3: a tlsa result for the host with the failure, one failed session on both results.
    host = results["mx1.example.com"]
    assert host["policy"]["policy-type"] == "tlsa" and host["policy"]["policy-string"] == []
    assert host["summary"]["total-failure-session-count"] == 1
    assert _details(host) == [("validation-failure", "dns-extended-error-7-signature-expired", 1)]
    domain = results["example.com"]
    assert domain["summary"]["total-failure-session-count"] == 1 and domain["failure-details"] == []


async def test_tlsa_lookup_dnssec_failure_is_dnssec_invalid_on_the_host_and_fails_the_attempt(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail(TLSA_NAME, ede=6)
    stack = await dane_stack(max_attempts=1)
    msg, row = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == [] and mx.tls_sessions == 0
    assert "tlsa" in row["Results"][-1]["Error"]
    results = await _tls_results(stack)
    host = results["mx1.example.com"]
    assert host["policy"]["policy-type"] == "tlsa" and host["policy"]["policy-string"] == []
    assert host["summary"]["total-failure-session-count"] == 1
    # Spec 02 §1.5 step 3: this reason puts "extended" first, unlike the others.
    assert _details(host) == [("dnssec-invalid", "extended-dns-error-6-dnssec-bogus", 1)]
    assert results["example.com"]["summary"]["total-failure-session-count"] == 1


@pytest.mark.parametrize(
    "ede,reason",
    [(22, "extended-dns-error-22-no-reachable-authority"), (None, "")],
)
async def test_tlsa_lookup_error_without_a_dnssec_failure_is_tlsa_invalid_without_a_failed_session(
    dane_stack, dns: DNSServer, mx: SMTPSink, ede: int | None, reason: str
) -> None:
    dns.fail(TLSA_NAME, ede=ede)
    stack = await dane_stack(max_attempts=1)
    msg, _ = await _send(stack)
    assert msg.state == MsgState.FAILED and mx.messages() == []
    results = await _tls_results(stack)
    host = results["mx1.example.com"]
    assert host["policy"]["policy-type"] == "tlsa"
    assert host["summary"]["total-failure-session-count"] == 0
    assert _details(host) == [("tlsa-invalid", reason, 1)]
    assert results["example.com"]["summary"]["total-failure-session-count"] == 0


async def test_tls_required_no_delivers_past_a_tlsa_dnssec_failure_and_still_reports_it(
    dane_stack, dns: DNSServer, mx: SMTPSink
) -> None:
    dns.fail(TLSA_NAME, ede=6)
    stack = await dane_stack()
    before = (await stack.http.get("/metrics")).text
    msg, _ = await _send(stack, RequireTLS=False)
    assert msg.state == MsgState.DELIVERED and mx.tls_sessions == 1
    after = (await stack.http.get("/metrics")).text
    name = "tempost_queue_tlsrequiredno_ignored_total"
    assert _sample(after, name, ignored="badtlsa") == _sample(before, name, ignored="badtlsa") + 1
    host = (await _tls_results(stack))["mx1.example.com"]
    assert host["policy"]["policy-type"] == "tlsa"
    # The failed lookup and the TLS session that followed without DANE verification.
    assert host["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert _details(host) == [("dnssec-invalid", "extended-dns-error-6-dnssec-bogus", 1)]


# --- No plaintext fallback for a host DANE applies to, whatever the TLS failure (RFC 7672 §2.2; spec 02 §1.4
# step 5, §2.1) ---

UNUSABLE = "1 1 1 " + "00" * 32  # PKIX-EE: not usable for SMTP, but still makes STARTTLS mandatory


def _no_tls_sink(port: int, starttls_reply: str = "") -> SMTPSink:
    """An MX host that cannot do TLS: aiosmtpd without a certificate neither announces STARTTLS nor takes it
    (it answers 454); with `starttls_reply` it answers that instead."""
    sink = SMTPSink(MX1, port=port)
    sink.behaviour.starttls_reply = starttls_reply
    return sink.start()


@pytest.mark.parametrize(
    "starttls_reply",
    ["", "454 4.7.0 TLS not available due to local problem"],
    ids=["starttls-not-offered", "starttls-454"],
)
async def test_unusable_tlsa_and_no_tls_at_the_host_defers_without_plaintext(
    dane_stack, dns: DNSServer, port: int, starttls_reply: str
) -> None:
    dns.add(TLSA_NAME, "TLSA", UNUSABLE)
    sink = _no_tls_sink(port, starttls_reply)
    try:
        stack = await dane_stack(max_attempts=2)
        msg, row = await _send(stack)
        # Temporary: tried again at the next attempt, and never delivered in plaintext.
        assert msg.state == MsgState.FAILED and msg.attempts == 2
        assert sink.messages() == [] and sink.rcpts_seen == []
        assert row["Results"][-1]["Code"] == 454
    finally:
        sink.stop()


async def test_unusable_tlsa_and_a_5xx_to_starttls_fails_without_plaintext(
    dane_stack, dns: DNSServer, port: int
) -> None:
    # Spec 02 §2.1: under DANE a 5xx reply to STARTTLS is a permanent failure (as mox has it), not a reason
    # to deliver in the clear.
    dns.add(TLSA_NAME, "TLSA", UNUSABLE)
    sink = _no_tls_sink(port, "502 5.5.1 command not implemented")
    try:
        stack = await dane_stack(max_attempts=2)
        msg, row = await _send(stack)
        assert msg.state == MsgState.FAILED and msg.attempts == 1
        assert sink.messages() == [] and sink.rcpts_seen == []
        assert row["Results"][-1]["Code"] == 502
    finally:
        sink.stop()


async def test_unusable_tlsa_on_the_first_mx_makes_delivery_go_to_the_next_one(
    stack_factory, cert: trustme.LeafCert
) -> None:
    # mx1 has only unusable TLSA records and refuses STARTTLS: the host fails (temporarily) and mx2 gets
    # the message over TLS; mx1 never sees a recipient.
    port = _common_port([MX1, MX2])
    dns = DNSServer().start()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    mx1 = _no_tls_sink(port, "454 4.7.0 TLS not available due to local problem")
    mx2 = SMTPSink(MX2, port=port, tls_context=ctx).start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.").add("example.com", "MX", "20 mx2.example.com.")
        dns.add("mx1.example.com", "A", MX1).add("mx2.example.com", "A", MX2)
        dns.add(TLSA_NAME, "TLSA", UNUSABLE)
        dns.sign("example.com")
        stack = await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct"
        )
        msg, _ = await _send(stack)
        assert msg.state == MsgState.DELIVERED and msg.attempts == 1
        assert mx1.rcpts_seen == [] and len(mx2.messages()) == 1 and mx2.tls_sessions == 1
    finally:
        mx1.stop()
        mx2.stop()
        dns.stop()


def _tls10_only(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context that only speaks TLS 1.0, which the client refuses: the handshake fails."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    return ctx


@pytest.mark.parametrize("usable", [True, False], ids=["usable-tlsa", "unusable-tlsa"])
async def test_tls_handshake_failure_under_dane_defers_without_plaintext(
    dane_stack, dns: DNSServer, port: int, cert: trustme.LeafCert, usable: bool
) -> None:
    dns.add(TLSA_NAME, "TLSA", f"3 1 1 {_spki_sha256(cert)}" if usable else UNUSABLE)
    server = await ScriptedSMTP(
        Script(extensions=["STARTTLS"], refusing_tls=_tls10_only(cert)), MX1, port
    ).start()
    try:
        stack = await dane_stack(max_attempts=2)
        msg, row = await _send(stack)
        assert msg.state == MsgState.FAILED and msg.attempts == 2
        await server.idle()
        # Every connection ended at STARTTLS: no session went on in plaintext.
        assert [s.commands[-1] for s in server.sessions] == ["STARTTLS", "STARTTLS"]
        assert all(s.messages == [] for s in server.sessions)
        assert "tls" in row["Results"][-1]["Error"].lower()
    finally:
        await server.stop()
