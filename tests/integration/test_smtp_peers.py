"""Broken and hostile SMTP peers through the relay transport and the real workflow (spec 02 scenarios 37, 38,
42, 43): how each failure is classified decides whether Tempost retries."""

from __future__ import annotations

from typing import Any

import pytest

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.support.scriptedsmtp import Script, ScriptedSMTP


async def deliver(stack_factory: Any, server: ScriptedSMTP, attempts: int = 2) -> tuple[Any, dict[str, Any]]:
    relay = {"type": "smtp", "host": "127.0.0.1", "port": server.port, "starttls": "none"}
    stack: Stack = await stack_factory(
        transports={"raw": relay}, default_transport="raw", max_attempts=attempts
    )
    resp = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(msg_id)
    await server.idle()
    row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    return status.msgs[0], row


@pytest.mark.parametrize("greeting", ["bogus", "2200 too many digits", ""])
async def test_37_malformed_greeting_or_hangup_is_temporary(
    stack_factory: Any, peer: Any, greeting: str
) -> None:
    server = await peer(Script(greeting=greeting))
    msg, row = await deliver(stack_factory, server)
    # Retried until attempts ran out: a broken greeting may be a passing fault.
    assert msg.state == MsgState.FAILED and msg.attempts == 2
    assert row["Results"][-1]["Error"]


async def test_37_greeting_521_is_permanent(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(greeting="521 5.3.2 we do not accept mail"))
    msg, row = await deliver(stack_factory, server, attempts=3)
    assert msg.state == MsgState.FAILED and msg.attempts == 1
    assert row["Results"][-1]["Code"] == 521


async def test_38_ehlo_reply_with_mixed_codes_is_temporary(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(replies={"EHLO": "250-first line\n500 second line with another code"}))
    msg, _ = await deliver(stack_factory, server)
    assert msg.state == MsgState.FAILED and msg.attempts == 2


async def test_42_data_550_after_rcpt_is_permanent(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(replies={"DATA": "550 5.7.1 content rejected"}))
    msg, row = await deliver(stack_factory, server, attempts=3)
    assert msg.state == MsgState.FAILED and msg.attempts == 1
    assert row["Results"][-1]["Code"] == 550


async def test_43_mail_550_then_hangup_is_permanent(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(replies={"MAIL": "550 5.7.1 sender refused", "RCPT": ""}))
    msg, row = await deliver(stack_factory, server, attempts=3)
    # The reply decides, not the closed connection after it.
    assert msg.state == MsgState.FAILED and msg.attempts == 1
    assert row["Results"][-1]["Code"] == 550
