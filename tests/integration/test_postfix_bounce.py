"""A genuine Postfix bounce, end to end: Tempost relays to a real Postfix, whose DSN becomes a `failed` event.

Tempost delivers to a private Postfix instance (tests/support/postfix.py), which accepts the message, so
Tempost retires it as delivered. Postfix relays it to the test's SMTP sink, is refused with 550 and sends
its own DSN to the FromID address in MAIL FROM; its transport map routes example.org to Tempost's bounce
listener, which matches the DSN to the message: a second webhook event, `failed`, and a suppression.
Skipped, saying why, where Postfix is not installed or the tests do not run as root.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.embedded import free_port
from tests.conftest import SENDER, Stack
from tests.integration.test_webhooks import AUTH, retired_hooks, until
from tests.support.postfix import PostfixInstance, skip_reason
from tests.support.smtpsink import SMTPSink
from tests.support.webhookserver import WebhookServer
from worker.bounce_listener import start_listener

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

RCPT = "nobody@example.com"
# Postfix waits for the queue manager's runs and its retry backoff; leave it ample time.
TIMEOUT = 60.0


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


@pytest.fixture
def bounce_port() -> int:
    return free_port()


@pytest.fixture
def postfix(sink: SMTPSink, bounce_port: int) -> Iterator[PostfixInstance]:
    """Postfix relaying to the stack's sink, sending mail for example.org to the bounce listener's port."""
    instance = PostfixInstance(free_port(), relay_port=sink.port, bounce_port=bounce_port)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


async def wait_for(postfix: PostfixInstance, predicate: Any, what: str) -> None:
    """until(), failing with Postfix's log: most failures here are Postfix's to explain."""
    try:
        await until(predicate, timeout=TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}; Postfix's log:\n{postfix.maillog()}")


async def test_postfix_dsn_for_relayed_mail_becomes_failed_event_and_suppression(
    stack_factory: Any,
    receiver: WebhookServer,
    postfix: PostfixInstance,
    bounce_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HOOK_AUTH", AUTH)
    # As fromid_stack in test_bounces, but everything goes to Postfix instead of straight to the sink.
    stack: Stack = await stack_factory(
        transports={
            "postfix": {"type": "smtp", "host": postfix.host, "port": postfix.port, "starttls": "none"}
        },
        default_transport="postfix",
        domains={"example.org": {"localpart_catchall_separator": "+"}},
        accounts={
            "alice": {
                "fromid_login_addresses": [SENDER],
                "outgoing_webhook": {"url": receiver.url + "/hook", "authorization_env": "TEST_HOOK_AUTH"},
                "keep_retired_webhook_period": "1h",
            }
        },
        webhooks={"first_retry": "10ms"},
    )
    listener = await start_listener(stack.config, stack.pool, stack.client, "127.0.0.1", bounce_port)
    try:
        # A bounce only matches a retired message, and Postfix can bounce within milliseconds of accepting,
        # before Tempost has retired the message. The sink defers at first, as a slow remote might, and
        # refuses for good only once Tempost has recorded the delivery: the DSN cannot overtake it.
        stack.sink.behaviour.rcpt_replies[RCPT] = "450 4.2.0 try again later"
        resp = await stack.send_ok(
            {"To": [{"Address": RCPT}], "Subject": "hi", "Text": "x", "Extra": {"a": "1"}}
        )
        [sub] = resp["Submissions"]
        msg_id, from_id = sub["QueueMsgID"], sub["FromID"]
        await stack.finished(msg_id, timeout=TIMEOUT)
        await wait_for(postfix, lambda: len(receiver.events()) == 1, "the delivered event")
        assert receiver.events()[0]["Event"] == "delivered"
        await wait_for(postfix, lambda: "status=deferred" in postfix.maillog(), "Postfix's first attempt")

        stack.sink.behaviour.rcpt_replies[RCPT] = "550 5.1.1 no such user"
        # Retry now rather than at Postfix's next queue run, a second or two away.
        await asyncio.to_thread(postfix.flush)
        await wait_for(postfix, lambda: len(receiver.events()) == 2, "the failed event from Postfix's DSN")
    finally:
        listener.close()
        await listener.wait_closed()

    ev = receiver.events()[1]
    assert ev["Event"] == "failed" and ev["DSN"] is True and ev["Suppressing"] is True
    assert ev["QueueMsgID"] == msg_id and ev["FromID"] == from_id and ev["Subject"] == "hi"
    assert ev["SMTPCode"] == 550 and ev["SMTPEnhancedCode"] == "5.1.1"
    assert ev["Extra"] == {"a": "1"}
    # Postfix relayed with the FromID sender Tempost used, bounced and delivered its DSN to the listener.
    log = postfix.maillog()
    assert f"from=<alice+{from_id}@example.org>" in log and "status=bounced" in log
    assert f"to=<alice+{from_id}@example.org>, relay=127.0.0.1[127.0.0.1]:{bounce_port}" in log
    # The webhook record names the DSN itself: Postfix's, not one a test composed.
    await wait_for(
        postfix, lambda: _count(retired_hooks(stack, event="failed"), 1), "the retired failed hook"
    )
    [hook] = await retired_hooks(stack, event="failed")
    assert hook["MessageID"].endswith("@postfix.test>")
    listed = (await stack.admin("GET", "/suppressions", params={"account": "alice"})).json()["Suppressions"]
    assert [e["BaseAddress"] for e in listed] == [RCPT]


async def _count(coro: Any, n: int) -> bool:
    return len(await coro) == n
