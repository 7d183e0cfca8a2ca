"""The `smtp` relay transport with STARTTLS against a real server with a test CA (issue 2, item 2)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from domain.contracts import MsgState
from tests.support.smtpsink import SMTPSink


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_sink(ca: trustme.CA) -> Iterator[SMTPSink]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    s = SMTPSink(tls_context=ctx).start()
    yield s
    s.stop()


def _relay(sink: SMTPSink, ca_file: str, starttls: str = "required") -> dict:
    return {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "starttls": starttls, "ca_file": ca_file}


async def test_starttls_required_and_verified_delivers(
    stack_factory, tls_sink: SMTPSink, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stack = await stack_factory(transports={"tls": _relay(tls_sink, str(ca_file))}, default_transport="tls")
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "over tls"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED
    assert tls_sink.delivered_to() == ["bob@example.com"] and tls_sink.tls_sessions == 1


async def test_untrusted_certificate_is_a_temporary_failure(
    stack_factory, tls_sink: SMTPSink, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    stack = await stack_factory(
        transports={"tls": _relay(tls_sink, str(other))}, default_transport="tls", max_attempts=2
    )
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    # Retried (temporary), then failed when attempts ran out; nothing was sent in the clear.
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 2
    assert tls_sink.messages() == []
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert "certificate" in body["Results"][-1]["Error"].lower()


async def test_31_certificate_for_another_name_is_a_temporary_tls_failure(
    stack_factory, ca: trustme.CA, tmp_path: Path
) -> None:
    # Trusted CA, but the certificate names mox.example while the relay is configured as 127.0.0.1.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mox.example").configure_cert(ctx)
    server = SMTPSink(tls_context=ctx).start()
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        stack = await stack_factory(
            transports={"tls": _relay(server, str(ca_file))}, default_transport="tls", max_attempts=2
        )
        resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
        msg_id = resp["Submissions"][0]["QueueMsgID"]
        status = await stack.finished(msg_id)
        assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 2
        assert server.messages() == []
        error = (await stack.admin("GET", f"/queue/{msg_id}")).json()["Results"][-1]["Error"]
        assert "tls handshake" in error and "127.0.0.1" in error
    finally:
        server.stop()


async def test_required_starttls_not_offered_sends_nothing(stack_factory, sink: SMTPSink) -> None:
    stack = await stack_factory(transports={"tls": _relay(sink, "")}, default_transport="tls", max_attempts=1)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.FAILED and sink.messages() == []


async def test_40_required_starttls_is_sent_even_when_not_announced(
    stack_factory, tls_sink: SMTPSink, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls_sink.behaviour.ehlo_without = ["STARTTLS"]
    stack = await stack_factory(transports={"tls": _relay(tls_sink, str(ca_file))}, default_transport="tls")
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED and tls_sink.tls_sessions == 1


async def test_40_required_starttls_refused_with_502_is_permanent(stack_factory, sink: SMTPSink) -> None:
    sink.behaviour.ehlo_without = ["STARTTLS"]
    sink.behaviour.starttls_reply = "502 5.5.1 command not implemented"
    stack = await stack_factory(transports={"tls": _relay(sink, "")}, default_transport="tls", max_attempts=3)
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    # One attempt: a 5xx refusal of required TLS is final, and nothing went in the clear.
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    assert sink.messages() == []
    last = (await stack.admin("GET", f"/queue/{msg_id}")).json()["Results"][-1]
    assert last["Code"] == 502 and "not implemented" in last["Error"]


async def test_opportunistic_starttls_uses_tls_when_offered(
    stack_factory, tls_sink: SMTPSink, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stack = await stack_factory(
        transports={"tls": _relay(tls_sink, str(ca_file), "opportunistic")}, default_transport="tls"
    )
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert tls_sink.tls_sessions == 1


async def test_41_starttls_none_sends_no_starttls_even_when_offered(
    stack_factory, tls_sink: SMTPSink
) -> None:
    stack = await stack_factory(transports={"plain": _relay(tls_sink, "", "none")}, default_transport="plain")
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED and tls_sink.tls_sessions == 0


@pytest.fixture
def implicit_tls_sink(ca: trustme.CA) -> Iterator[SMTPSink]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    s = SMTPSink(implicit_tls=ctx).start()
    yield s
    s.stop()


async def test_8_submissions_speaks_tls_from_the_first_byte(
    stack_factory, implicit_tls_sink: SMTPSink, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    relay = {
        "type": "submissions",
        "host": "127.0.0.1",
        "port": implicit_tls_sink.port,
        "ca_file": str(ca_file),
    }
    stack = await stack_factory(transports={"smtps": relay}, default_transport="smtps")
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED and implicit_tls_sink.tls_sessions == 1
