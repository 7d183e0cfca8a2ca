"""Routes and relay transports through the real workflow (spec 01 §7.3–§7.4, spec 02 §5; scenarios 6, 7)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.support.smtpsink import SMTPSink

USERS = {"relayuser": "relay-secret"}


@pytest.fixture
def submit() -> Iterator[SMTPSink]:
    s = SMTPSink(auth_users=USERS).start()
    yield s
    s.stop()


@pytest.fixture
def secret(tmp_path: Path) -> str:
    path = tmp_path / "relay-password"
    path.write_text("relay-secret\n")
    return str(path)


def _submission(sink: SMTPSink, secret: str, mechanisms: list[str] | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"username": "relayuser", "password_file": secret}
    if mechanisms is not None:
        auth["mechanisms"] = mechanisms
    return {"type": "submission", "host": sink.host, "port": sink.port, "starttls": "none", "auth": auth}


async def _send(stack: Stack, rcpts: list[str], **extra: Any) -> tuple[Any, dict[str, Any]]:
    resp = await stack.send_ok({"To": [{"Address": r} for r in rcpts], "Text": "hello", **extra})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    return status, resp


async def test_6_route_by_recipient_domain_to_submission_with_scram(
    stack_factory, submit: SMTPSink, sink: SMTPSink, secret: str
) -> None:
    # Routes come from configuration; build a stack whose global route sends *.submit.example to the relay.
    stack = await stack_factory(
        transports={"submit": _submission(submit, secret)},
        routes=[{"to_domain": [".submit.example"], "transport": "submit"}],
    )
    status, _ = await _send(stack, ["a@submit.example", "b@mail.submit.example"])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED, MsgState.DELIVERED]
    # Each connection logged in once: two, or one when the second domain's delivery reused the first's
    # session from the connection cache (keyed by the login too).
    assert submit.authenticated == [("SCRAM-SHA-256", "relayuser")] * submit.connections
    assert submit.connections in (1, 2)
    # Not matching the route: the default transport (the plain sink).
    status, _ = await _send(stack, ["c@badsubmit.example"])
    assert sink.delivered_to() == ["c@badsubmit.example"]


async def test_7_two_recipients_one_transaction_through_submission(
    stack_factory, submit: SMTPSink, secret: str
) -> None:
    stack = await stack_factory(
        transports={"submit": _submission(submit, secret, ["SCRAM-SHA-1", "CRAM-MD5"])},
        default_transport="submit",
    )
    await _send(stack, ["a@x.example", "b@x.example"])
    [t] = submit.transactions
    assert sorted(t.rcpt_tos) == ["a@x.example", "b@x.example"]
    assert submit.authenticated == [("SCRAM-SHA-1", "relayuser")]


@pytest.mark.parametrize("mech", ["CRAM-MD5", "PLAIN"])
async def test_other_mechanisms_when_configured(
    stack_factory, submit: SMTPSink, secret: str, mech: str
) -> None:
    stack = await stack_factory(
        transports={"submit": _submission(submit, secret, [mech])}, default_transport="submit"
    )
    status, _ = await _send(stack, ["a@x.example"])
    assert status.msgs[0].state == MsgState.DELIVERED and submit.authenticated == [(mech, "relayuser")]


async def test_wrong_password_is_a_permanent_failure(stack_factory, submit: SMTPSink, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    stack = await stack_factory(
        transports={"submit": _submission(submit, str(bad), ["PLAIN"])}, default_transport="submit"
    )
    status, resp = await _send(stack, ["a@x.example"])
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    assert submit.messages() == []


async def test_fail_transport_fails_at_once_with_its_code(stack_factory, sink: SMTPSink) -> None:
    stack = await stack_factory(
        transports={"nope": {"type": "fail", "smtp_code": 550, "smtp_message": "policy says no"}},
        routes=[{"from_domain": ["example.org"], "transport": "nope"}],
    )
    status, resp = await _send(stack, ["a@x.example"])
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1 and sink.messages() == []
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert row["Results"][-1]["Code"] == 550 and row["Results"][-1]["Secode"] == "7.0"


async def test_minimum_attempts_switches_to_a_smarthost_after_failures(stack_factory, sink: SMTPSink) -> None:
    # First attempt through a transport that fails temporarily; from the second on, the route to the sink.
    stack = await stack_factory(
        transports={"flaky": {"type": "fail", "smtp_code": 451}},
        default_transport="flaky",
        routes=[{"minimum_attempts": 1, "transport": "sink"}],
    )
    status, _ = await _send(stack, ["a@x.example"])
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 2
    assert sink.delivered_to() == ["a@x.example"]


async def test_requiretls_over_an_unverified_relay_fails_permanently(stack_factory, sink: SMTPSink) -> None:
    stack = await stack_factory()
    status, resp = await _send(stack, ["a@x.example"], RequireTLS=True)
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1 and sink.messages() == []
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    assert row["Results"][-1]["Secode"] == "7.30"


@pytest.mark.parametrize("tls_version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
async def test_35_scram_plus_binds_authentication_to_the_tls_channel(
    stack_factory, secret: str, tmp_path: Path, mech: str, tls_version: str
) -> None:
    # Channel binding: tls-unique up to TLS 1.2, tls-exporter on TLS 1.3 (RFC 9266); the server checks the
    # client's binding data against its own view of the connection, so a relaying attacker would fail.
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    version = getattr(ssl.TLSVersion, tls_version)
    ctx.minimum_version = ctx.maximum_version = version
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = SMTPSink(auth_users=USERS, tls_context=ctx).start()
    try:
        relay = _submission(server, secret, [mech, "SCRAM-SHA-256"])
        relay.update(starttls="required", ca_file=str(ca_file))
        stack = await stack_factory(transports={"submit": relay}, default_transport="submit")
        status, _ = await _send(stack, ["a@x.example"])
        assert status.msgs[0].state == MsgState.DELIVERED
        assert server.authenticated == [(mech, "relayuser")]
        binding = "tls-exporter" if tls_version == "TLSv1_3" else "tls-unique"
        assert server.scram_flags == [f"p={binding}"]
    finally:
        server.stop()


async def test_scram_plus_offered_but_not_configured_says_the_client_could_bind(
    stack_factory, secret: str, tmp_path: Path
) -> None:
    # RFC 5802 §6: with TLS and a -PLUS mechanism configured but not offered, "y" lets a server that did offer
    # it notice the offer was stripped on the way.
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    plus = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS")
    server = SMTPSink(auth_users=USERS, tls_context=ctx, auth_exclude=plus).start()
    try:
        relay = _submission(server, secret, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        relay.update(starttls="required", ca_file=str(ca_file))
        stack = await stack_factory(transports={"submit": relay}, default_transport="submit")
        status, _ = await _send(stack, ["a@x.example"])
        assert status.msgs[0].state == MsgState.DELIVERED
        assert server.scram_flags == ["y"]
    finally:
        server.stop()
