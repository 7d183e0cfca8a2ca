"""Routes and relay transports through the real workflow (spec 01 §7.3–§7.4, spec 02 §5; scenarios 6, 7)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    assert submit.authenticated == [("SCRAM-SHA-256", "relayuser"), ("SCRAM-SHA-256", "relayuser")]
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
