"""Debian's real Postfix as the receiving SMTP server (issue 3's interoperability run).

Tempost's relay transport delivers to a private Postfix instance (tests/support/postfix.py), whose smtpd
speaks to Tempost's SMTP client with its own replies, PIPELINING, SMTPUTF8 and ENHANCEDSTATUSCODES; Postfix
then relays to the test's sink, so what it accepted can be checked end to end. Skipped, saying why, where
Postfix is not installed or the tests do not run as root.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deploy.embedded import free_port
from domain.contracts import MsgState
from tests.integration.test_webhooks import until
from tests.support.postfix import PostfixInstance, skip_reason
from tests.support.smtpsink import SMTPSink

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture
def postfix(sink: SMTPSink) -> Iterator[PostfixInstance]:
    instance = PostfixInstance(free_port(), relay_port=sink.port, bounce_port=free_port())
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


async def stack_via(stack_factory: Any, postfix: PostfixInstance) -> Any:
    relay = {"type": "smtp", "host": postfix.host, "port": postfix.port, "starttls": "none"}
    return await stack_factory(transports={"postfix": relay}, default_transport="postfix")


async def test_postfix_accepts_a_multi_recipient_transaction_and_relays_it(
    stack_factory: Any, postfix: PostfixInstance, sink: SMTPSink
) -> None:
    stack = await stack_via(stack_factory, postfix)
    resp = await stack.send_ok(
        {
            "To": [{"Address": "a@one.example"}, {"Address": "b@two.example"}],
            "Subject": "via postfix",
            "Text": "x",
        }
    )
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    # Postfix accepted both in one transaction: Tempost considers them delivered.
    assert {m.state for m in status.msgs} == {MsgState.DELIVERED}
    await until(lambda: sorted(sink.delivered_to()) == ["a@one.example", "b@two.example"], timeout=60)
    t = next(t for t in sink.messages() if "a@one.example" in t.rcpt_tos)
    assert b"Subject: via postfix" in t.data and b"postfix.test" in t.data  # Postfix's Received: header
    row = (await stack.admin("GET", f"/queue/{resp['Submissions'][0]['QueueMsgID']}")).json()
    # Postfix's own reply to DATA, with its enhanced code, is what Tempost recorded.
    assert row["Results"][-1]["Code"] == 250 and row["Results"][-1]["Secode"] == "0.0"


async def test_postfix_takes_smtputf8_mail(
    stack_factory: Any, postfix: PostfixInstance, sink: SMTPSink
) -> None:
    stack = await stack_via(stack_factory, postfix)
    resp = await stack.send_ok({"To": [{"Address": "møx@example.com"}], "Subject": "☺", "Text": "ünïcode"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.DELIVERED
    await until(lambda: sink.delivered_to() == ["møx@example.com"], timeout=60)
