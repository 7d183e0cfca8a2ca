"""Direct delivery through the real workflow: a loopback DNS server and SMTP servers on 127.0.0.x.

Scenario numbers refer to spec 02 §10.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trustme

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.support.dnsserver import DNSServer
from tests.support.scriptedsmtp import Script, ScriptedSMTP
from tests.support.smtpsink import SMTPSink

MX1, MX2, DEAD = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def _common_port(hosts: list[str]) -> int:
    """A port free on every loopback address the test uses (direct delivery dials one port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return int(port)
    raise RuntimeError("no common free port")


@pytest.fixture
def port() -> int:
    return _common_port([MX1, MX2, DEAD])


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer().start()
    server.add("mx1.example.com", "A", MX1).add("mx2.example.com", "A", MX2).add(
        "dead.example.com", "A", DEAD
    )
    yield server
    server.stop()


@pytest.fixture
def mx1(port: int) -> Iterator[SMTPSink]:
    s = SMTPSink(MX1, port=port).start()
    yield s
    s.stop()


@pytest.fixture
def mx2(port: int) -> Iterator[SMTPSink]:
    s = SMTPSink(MX2, port=port).start()
    yield s
    s.stop()


@pytest.fixture
def direct_stack(stack_factory, dns: DNSServer, port: int) -> Any:
    async def make(**queue: Any) -> Stack:
        return await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct", **queue
        )

    return make


async def _deliver(stack: Stack, *rcpts: str) -> tuple[Any, dict[str, Any]]:
    resp = await stack.send_ok({"To": [{"Address": r} for r in rcpts], "Subject": "direct", "Text": "hello"})
    first = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(first)
    return status, resp


async def test_46_simple_mx_delivers_to_the_mx_host(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    stack = await direct_stack()
    status, _ = await _deliver(stack, "bob@example.com")
    assert status.msgs[0].state == MsgState.DELIVERED
    assert mx1.delivered_to() == ["bob@example.com"]
    assert mx1.transactions[0].mail_from == "alice@example.org"


async def test_2_two_recipients_same_domain_one_connection_one_transaction(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    stack = await direct_stack()
    await _deliver(stack, "a@example.com", "b@example.com")
    [t] = mx1.transactions
    assert sorted(t.rcpt_tos) == ["a@example.com", "b@example.com"]


async def test_46_unreachable_preferred_mx_falls_back_to_the_next(
    direct_stack, dns: DNSServer, mx2: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 dead.example.com.", "20 mx2.example.com.")
    stack = await direct_stack()
    status, resp = await _deliver(stack, "bob@example.com")
    assert status.msgs[0].state == MsgState.DELIVERED and mx2.delivered_to() == ["bob@example.com"]
    # The address connected to is remembered for later attempts (DialedIPs).
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert row["DialedIPs"] == {"mx2.example.com": [MX2]}


async def test_46_null_mx_fails_permanently_without_connecting(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("nomail.example", "MX", "0 .")
    stack = await direct_stack()
    status, resp = await _deliver(stack, "bob@nomail.example")
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert "does not accept email" in row["Results"][-1]["Error"]
    assert mx1.messages() == []


async def test_46_implicit_mx_uses_the_domains_own_address(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("implicit.example", "A", MX1)
    stack = await direct_stack()
    status, _ = await _deliver(stack, "bob@implicit.example")
    assert status.msgs[0].state == MsgState.DELIVERED and mx1.delivered_to() == ["bob@implicit.example"]


async def test_46_cname_to_a_name_without_mx_makes_the_final_name_the_implicit_mx(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    # alias.example has no address of its own: only the name the CNAME leads to has one.
    dns.add("alias.example", "CNAME", "host.example.").add("host.example", "A", MX1)
    stack = await direct_stack()
    status, _ = await _deliver(stack, "bob@alias.example")
    assert status.msgs[0].state == MsgState.DELIVERED and mx1.delivered_to() == ["bob@alias.example"]


async def test_46_cname_to_an_mx_domain_uses_its_mx(direct_stack, dns: DNSServer, mx2: SMTPSink) -> None:
    dns.add("alias.example", "CNAME", "real.example.").add("real.example", "MX", "10 mx2.example.com.")
    stack = await direct_stack()
    status, _ = await _deliver(stack, "bob@alias.example")
    assert status.msgs[0].state == MsgState.DELIVERED and mx2.delivered_to() == ["bob@alias.example"]


async def test_46_absent_domain_is_retried_then_fails(direct_stack, dns: DNSServer) -> None:
    stack = await direct_stack(max_attempts=2)
    status, resp = await _deliver(stack, "bob@absent.example")
    # No MX and no address: temporary on each attempt, failed when attempts run out.
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 2


async def test_mx_lookup_servfail_is_temporary(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.fail("broken.example")
    stack = await direct_stack(max_attempts=2)
    status, resp = await _deliver(stack, "bob@broken.example")
    assert status.msgs[0].attempts == 2
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert "mx" in row["Results"][0]["Error"].lower()


async def test_46_ip_literal_recipient_is_dialed_directly(direct_stack, mx1: SMTPSink) -> None:
    stack = await direct_stack()
    status, _ = await _deliver(stack, f"bob@[{MX1}]")
    assert status.msgs[0].state == MsgState.DELIVERED and mx1.delivered_to() == [f"bob@[{MX1}]"]


async def test_4_limits_rcptmax_splits_into_transactions_on_one_connection(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.ehlo_extra = ["LIMITS RCPTMAX=1"]
    stack = await direct_stack()
    await _deliver(stack, "a@example.com", "b@example.com")
    assert [t.rcpt_tos for t in mx1.transactions] in (
        [["a@example.com"], ["b@example.com"]],
        [["b@example.com"], ["a@example.com"]],
    )
    assert len({t.session for t in mx1.transactions}) == 1


async def test_5_too_many_recipients_go_in_a_new_transaction(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.max_rcpts_per_transaction = 2
    stack = await direct_stack()
    status, _ = await _deliver(stack, "a@example.com", "b@example.com", "c@example.com")
    assert all(m.state == MsgState.DELIVERED for m in status.msgs)
    assert [len(t.rcpt_tos) for t in mx1.transactions] == [2, 1]
    assert len({t.session for t in mx1.transactions}) == 1


async def test_33_per_recipient_replies_in_one_transaction(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.rcpt_replies = {
        "gone@example.com": "554 5.1.1 no such user",
        "busy@example.com": "451 4.2.1 later",
    }
    stack = await direct_stack(max_attempts=2)
    status, resp = await _deliver(stack, "ok@example.com", "gone@example.com", "busy@example.com")
    by_addr = {s["Address"]: s["QueueMsgID"] for s in resp["Submissions"]}
    states = {m.id: m for m in status.msgs}
    assert states[by_addr["ok@example.com"]].state == MsgState.DELIVERED
    assert states[by_addr["gone@example.com"]].state == MsgState.FAILED
    assert states[by_addr["gone@example.com"]].attempts == 1
    # The temporary refusal was retried, then failed when attempts ran out.
    assert states[by_addr["busy@example.com"]].attempts == 2
    gone = (await stack.admin("GET", f"/queue/{by_addr['gone@example.com']}")).json()
    assert gone["Results"][-1]["Code"] == 554 and gone["Results"][-1]["Secode"] == "1.1"


async def test_22_mail_from_554_is_permanent(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.mail_reply = "554 5.1.0 sender rejected"
    stack = await direct_stack()
    status, resp = await _deliver(stack, "bob@example.com")
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert row["Results"][-1]["Code"] == 554 and row["Results"][-1]["Secode"] == "1.0"


async def test_32_message_over_announced_size_fails_before_mail_from(
    direct_stack, dns: DNSServer, port: int
) -> None:
    small = SMTPSink(MX1, port=port, data_size_limit=100).start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        stack = await direct_stack()
        status, _ = await _deliver(stack, "bob@example.com")
        assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
        assert small.messages() == []
    finally:
        small.stop()


def _tls_sink(port: int, ctx: ssl.SSLContext) -> SMTPSink:
    return SMTPSink(MX1, port=port, tls_context=ctx).start()


async def test_10_opportunistic_starttls_with_untrusted_certificate_delivers(
    direct_stack, dns: DNSServer, port: int
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx1.example.com").configure_cert(ctx)
    sink = _tls_sink(port, ctx)
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        stack = await direct_stack()
        status, _ = await _deliver(stack, "bob@example.com")
        assert status.msgs[0].state == MsgState.DELIVERED and sink.tls_sessions == 1
        # PKIX is evaluated anyway and reported (spec 01 scenario 20): no policy, one successful session,
        # and a certificate-not-trusted detail on the recipient domain's result.
        results = (await stack.admin("GET", "/tlsresults")).json()["Results"]
        results = [r for r in results if r["RecipientDomain"] == "example.com"]
        [rcpt] = [r["Result"] for r in results if not r["IsHost"]]
        assert rcpt["policy"]["policy-type"] == "no-policy-found"
        assert rcpt["summary"]["total-successful-session-count"] == 1
        details = rcpt["failure-details"]
        assert [d["result-type"] for d in details] == ["certificate-not-trusted"]
        assert (
            details[0]["failed-session-count"] == 0
            and details[0]["receiving-mx-hostname"] == "mx1.example.com"
        )
        # Who spoke to whom: the server's greeting names it, and our address on the connection.
        assert (
            details[0]["receiving-mx-helo"].startswith("localhost Python SMTP")
            and details[0]["receiving-ip"] == MX1
        )
        assert details[0]["sending-mta-ip"].startswith("127.")
        [host] = [r["Result"] for r in results if r["IsHost"]]
        assert host["summary"]["total-successful-session-count"] == 1 and not host.get("failure-details")
    finally:
        sink.stop()


async def test_36_opportunistic_starttls_with_an_expired_certificate_delivers_and_reports_it(
    stack_factory, dns: DNSServer, port: int, tmp_path: Any
) -> None:
    # A CA the PKIX check trusts, but a leaf that expired yesterday: unverified TLS still carries the mail.
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    now = datetime.now(UTC)
    leaf = ca.issue_cert(
        "mx1.example.com", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    leaf.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = _tls_sink(port, ctx)
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        stack = await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port, "ca_file": str(ca_file)},
            default_transport="direct",
        )
        status, _ = await _deliver(stack, "bob@example.com")
        assert status.msgs[0].state == MsgState.DELIVERED and sink.tls_sessions == 1
        results = (await stack.admin("GET", "/tlsresults")).json()["Results"]
        [rcpt] = [r["Result"] for r in results if r["RecipientDomain"] == "example.com" and not r["IsHost"]]
        assert [d["result-type"] for d in rcpt["failure-details"]] == ["certificate-expired"]
    finally:
        sink.stop()


async def test_11_broken_tls_falls_back_to_plaintext_on_the_same_host(
    direct_stack, dns: DNSServer, port: int
) -> None:
    # The server only speaks TLS 1.0, which the client refuses to go down to: the server says so in an alert.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx1.example.com").configure_cert(ctx)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    await _assert_tls_refusal_falls_back(
        direct_stack, dns, port, ctx, "tls-remote-alert-70-protocol-version-not-supported"
    )


async def test_tls_refused_by_the_server_right_after_the_handshake_is_a_tls_failure(
    direct_stack, dns: DNSServer, port: int
) -> None:
    # Under TLS 1.3 the client's handshake completes before the server checks for a client certificate;
    # the server's refusal arrives as the first record (spec 02 §3.1 step 5).
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx1.example.com").configure_cert(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    await _assert_tls_refusal_falls_back(
        direct_stack, dns, port, ctx, "tls-remote-alert-116-certificate-required"
    )


async def _assert_tls_refusal_falls_back(
    direct_stack: Any, dns: DNSServer, port: int, refusing: ssl.SSLContext, reason: str
) -> None:
    server = await ScriptedSMTP(Script(extensions=["STARTTLS"], refusing_tls=refusing), MX1, port).start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        stack = await direct_stack()
        status, _ = await _deliver(stack, "bob@example.com")
        # The same host again, in plaintext.
        assert status.msgs[0].state == MsgState.DELIVERED
        await server.idle()
        first, second = server.sessions
        assert first.commands[-1] == "STARTTLS" and "STARTTLS" not in second.commands
        assert len(second.messages) == 1
        # The server's alert names the failure on both results; the plaintext try records nothing.
        results = (await stack.admin("GET", "/tlsresults")).json()["Results"]
        got = [r["Result"] for r in results if r["RecipientDomain"] == "example.com"]
        assert len(got) == 2  # the recipient domain's and the host's
        for result in got:
            assert result["summary"] == {
                "total-successful-session-count": 0,
                "total-failure-session-count": 1,
            }
            [detail] = result["failure-details"]
            assert detail["result-type"] == "validation-failure" and detail["failure-reason-code"] == reason
            assert detail["receiving-mx-helo"] == "scripted ESMTP"
    finally:
        await server.stop()


def _sample(text: str, name: str, **labels: str) -> float:
    """A metric's value from Prometheus text exposition, 0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_delivery_metrics_are_exported(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.add("example.com", "MX", "10 dead.example.com.", "20 mx1.example.com.")
    stack = await direct_stack()
    before = (await stack.http.get("/metrics")).text
    await _deliver(stack, "bob@example.com")
    after = (await stack.http.get("/metrics")).text
    count = "tempost_queue_delivery_duration_seconds_count"
    labels = {"attempt": "1", "transport": "", "tlsmode": "opportunistic"}
    assert _sample(after, count, result="ok", **labels) == _sample(before, count, result="ok", **labels) + 1
    conn = "tempost_queue_connection_total"
    assert _sample(after, conn, result="error") >= _sample(before, conn, result="error") + 1
    assert _sample(after, conn, result="ok") == _sample(before, conn, result="ok") + 1


async def test_9_socks_transport_connects_through_the_proxy(
    stack_factory, dns: DNSServer, mx1: SMTPSink, port: int
) -> None:
    from tests.support.socksproxy import SocksProxy

    proxy = SocksProxy().start()
    try:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        stack = await stack_factory(
            direct={"resolvers": [dns.address], "smtp_port": port},
            transports={
                "socks": {"type": "socks", "address": proxy.address, "remote_hostname": "out.example"}
            },
            default_transport="socks",
        )
        status, _ = await _deliver(stack, "bob@example.com")
        assert status.msgs[0].state == MsgState.DELIVERED and mx1.delivered_to() == ["bob@example.com"]
        # DNS stayed local: the proxy was asked for the MX host's address, not a name.
        assert proxy.connects == [(MX1, port)]
    finally:
        proxy.stop()


async def test_1_dialing_fails_and_the_message_waits_for_the_first_backoff(
    stack_factory, dns: DNSServer, port: int
) -> None:
    dns.add("example.com", "MX", "10 dead.example.com.")
    stack = await stack_factory(
        direct={"resolvers": [dns.address], "smtp_port": port},
        default_transport="direct",
        backoff_base="7m30s",
    )
    sent = datetime.now(UTC)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    # With both cores busy the first attempt can take a while to be recorded: wait for it, not for a count.
    async with asyncio.timeout(120):
        while True:
            row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
            if row["Attempts"] == 1 and row["Results"] and row["Results"][-1]["Error"]:
                break
            await asyncio.sleep(0.1)
    assert "dialing" in row["Results"][-1]["Error"]
    # 7.5 minutes with jitter of -5 to +4 s, counted from the attempt's start in the workflow: after the
    # submission, and before LastAttempt, which the activity stamps a moment (on a slow machine, seconds)
    # later.
    next_attempt = datetime.fromisoformat(row["NextAttempt"])
    assert timedelta(minutes=7, seconds=25) <= next_attempt - sent
    assert next_attempt - datetime.fromisoformat(row["LastAttempt"]) <= timedelta(minutes=7, seconds=35)
    assert (await stack.admin("POST", f"/queue/{msg_id}/drop")).status_code == 200


async def test_3_two_domains_two_deliveries(
    direct_stack, dns: DNSServer, mx1: SMTPSink, mx2: SMTPSink
) -> None:
    dns.add("one.example", "MX", "10 mx1.example.com.").add("two.example", "MX", "10 mx2.example.com.")
    stack = await direct_stack()
    status, _ = await _deliver(stack, "a@one.example", "b@two.example")
    assert all(m.state == MsgState.DELIVERED for m in status.msgs)
    assert mx1.delivered_to() == ["a@one.example"] and mx2.delivered_to() == ["b@two.example"]


async def test_26_ehlo_refused_falls_back_to_helo(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.ehlo_reply = "500 5.5.1 command unrecognized"
    stack = await direct_stack()
    status, _ = await _deliver(stack, "bob@example.com")
    assert status.msgs[0].state == MsgState.DELIVERED and mx1.delivered_to() == ["bob@example.com"]


async def test_28_eight_bit_message_to_a_server_without_8bitmime_is_not_sent(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.ehlo_without = ["8BITMIME"]
    stack = await direct_stack(max_attempts=1)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "grüße"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == MsgState.FAILED and mx1.messages() == []
    row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert "8BITMIME" in row["Results"][-1]["Error"]


async def test_29_smtputf8_message_to_a_server_without_smtputf8_is_not_sent(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.ehlo_without = ["SMTPUTF8"]
    stack = await direct_stack(max_attempts=1)
    status, resp = await _deliver(stack, "δοκιμή@example.com")
    assert status.msgs[0].state == MsgState.FAILED and mx1.messages() == []


async def test_39_data_550_is_permanent(direct_stack, dns: DNSServer, mx1: SMTPSink) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.data_reply = "550 5.7.1 content rejected"
    stack = await direct_stack()
    status, resp = await _deliver(stack, "bob@example.com")
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert row["Results"][-1]["Code"] == 550 and row["Results"][-1]["Secode"] == "7.1"


async def test_44_all_recipients_refused_temporarily_sends_no_data(
    direct_stack, dns: DNSServer, mx1: SMTPSink
) -> None:
    dns.add("example.com", "MX", "10 mx1.example.com.")
    mx1.behaviour.rcpt_replies = {"a@example.com": "451 4.3.0 later", "b@example.com": "451 4.3.0 later"}
    stack = await direct_stack(max_attempts=1)
    status, _ = await _deliver(stack, "a@example.com", "b@example.com")
    assert all(m.state == MsgState.FAILED for m in status.msgs) and mx1.data_commands == 0
