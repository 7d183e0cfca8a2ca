"""Bounce ingestion through the running worker and API (spec 03 §4; scenarios 29–35, 44).

Messages are sent with a unique MAIL FROM (FromID); bounces for them are handed to
`POST /admin/v0/bounces` and matched by the worker's Bounce workflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SENDER, Stack
from tests.integration.test_webhooks import AUTH, pending_hooks, retired_hooks, until
from tests.support.webhookserver import Script, WebhookServer


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


async def fromid_stack(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch, **webhooks: Any
) -> Stack:
    monkeypatch.setenv("TEST_HOOK_AUTH", AUTH)
    return await stack_factory(
        domains={"example.org": {"localpart_catchall_separator": "+"}},
        accounts={
            "alice": {
                "fromid_login_addresses": [SENDER],
                "outgoing_webhook": {"url": receiver.url + "/hook", "authorization_env": "TEST_HOOK_AUTH"},
                "keep_retired_webhook_period": "1h",
            }
        },
        webhooks={"first_retry": "10ms", **webhooks},
    )


def dsn(
    rcpt: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown",
    recipients: int = 1,
    message_id: str = "<bounce-1@mail.example.com>",
) -> bytes:
    """A DSN as Postfix writes it (weekday dates with zone comments, X-Postfix fields)."""
    blocks = "".join(
        f"Final-Recipient: rfc822; nobody{i or ''}@example.com\r\n"
        f"Original-Recipient: rfc822;nobody{i or ''}@example.com\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx.example.com\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        for i in range(recipients)
    )
    return (
        "From: MAILER-DAEMON@mail.example.com (Mail Delivery System)\r\n"
        f"To: {rcpt}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-Id: {message_id}\r\n"
        "Date: Mon, 15 Apr 2024 10:00:05 +0200 (CEST)\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        "\r\n"
        "--B1\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mail.example.com.\r\n"
        "\r\n"
        "--B1\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mail.example.com\r\n"
        "X-Postfix-Queue-ID: 4VJ1bF0Z1Mz9sWm\r\n"
        "X-Postfix-Sender: rfc822; alice@example.org\r\n"
        "Arrival-Date: Mon, 15 Apr 2024 10:00:00 +0200 (CEST)\r\n"
        "\r\n"
        f"{blocks}"
        "--B1\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "Subject: hi\r\n"
        "\r\n"
        "--B1--\r\n"
    ).encode()


async def delivered_with_fromid(stack: Stack, rcpt: str = "nobody@example.com") -> tuple[int, str]:
    """Send one message with a FromID and wait until it is delivered (and retired)."""
    resp = await stack.send_ok({"To": [{"Address": rcpt}], "Subject": "hi", "Text": "x", "Extra": {"a": "1"}})
    [sub] = resp["Submissions"]
    await stack.finished(sub["QueueMsgID"])
    return sub["QueueMsgID"], sub["FromID"]


async def bounce(stack: Stack, rcpt: str, data: bytes) -> dict[str, Any]:
    r = await stack.admin("POST", "/bounces", params={"rcpt": rcpt}, content=data)
    assert r.status_code == 200, r.text
    return r.json()


async def test_fromid_send_gives_each_recipient_a_unique_mail_from(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    resp = await stack.send_ok(
        {"To": [{"Address": "a@example.com"}, {"Address": "b@example.com"}], "Text": "x"}
    )
    subs = resp["Submissions"]
    await stack.finished(subs[0]["QueueMsgID"])
    await until(lambda: len(stack.sink.messages()) == 2)
    from_ids = [s["FromID"] for s in subs]
    assert all(len(f) == 22 for f in from_ids) and from_ids[0] != from_ids[1]
    by_rcpt = {t.rcpt_tos[0]: t.mail_from for t in stack.sink.messages()}
    # Separate transactions: each recipient's MAIL FROM carries its own FromID (spec 03 §4.2).
    assert by_rcpt == {
        "a@example.com": f"alice+{from_ids[0]}@example.org",
        "b@example.com": f"alice+{from_ids[1]}@example.org",
    }
    for t in stack.sink.messages():
        assert b"From: Alice <alice@example.org>" in t.data


async def test_35_failed_dsn_gives_failed_event_and_suppression(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    msg_id, from_id = await delivered_with_fromid(stack)
    await until(lambda: len(receiver.events()) == 1)
    out = await bounce(stack, f"alice+{from_id}@example.org", dsn(f"alice+{from_id}@example.org"))
    assert out["Matched"] and out["Event"] == "failed" and out["QueueMsgID"] == msg_id
    assert out["SMTPCode"] == 550 and out["SMTPEnhancedCode"] == "5.1.1" and out["Suppressing"]
    await until(lambda: len(receiver.events()) == 2)
    ev = receiver.events()[1]
    assert ev["Event"] == "failed" and ev["DSN"] is True and ev["Suppressing"] is True
    assert ev["QueueMsgID"] == msg_id and ev["FromID"] == from_id and ev["Subject"] == "hi"
    assert ev["SMTPCode"] == 550 and ev["SMTPEnhancedCode"] == "5.1.1" and ev["Error"] == ""
    assert ev["Extra"] == {"a": "1"}
    listed = (await stack.admin("GET", "/suppressions", params={"account": "alice"})).json()["Suppressions"]
    assert [(e["BaseAddress"], e["Reason"]) for e in listed] == [
        ("nobody@example.com", 'delivery failure from DSN with smtp code 550, enhanced code "1.1"')
    ]
    retired = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    last = retired["Results"][-1]
    assert last["Code"] == 550 and last["Secode"] == "1.1" and last["Error"] == "incoming message"
    # The hook record names the incoming DSN; the payload names the original message.
    await until(lambda: _count(retired_hooks(stack, event="failed"), 1))
    [hook] = await retired_hooks(stack, event="failed")
    assert hook["MessageID"] == "<bounce-1@mail.example.com>" and hook["Extra"] == {}


async def _count(coro: Any, n: int) -> bool:
    return len(await coro) == n


async def test_31_32_delayed_relayed_delivered_take_the_dsn_codes(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    _, from_id = await delivered_with_fromid(stack)
    await until(lambda: len(receiver.events()) == 1)
    rcpt = f"alice+{from_id}@example.org"
    for n, action in enumerate(("delayed", "relayed", "delivered", "expanded"), start=2):
        out = await bounce(
            stack, rcpt, dsn(rcpt, action=action, status="5.0.0", diagnostic="smtp; 554 5.0.0 error")
        )
        assert (out["Event"], out["SMTPCode"], out["SMTPEnhancedCode"]) == (action, 554, "5.0.0")
        assert not out["Suppressing"]
        # Each event is called before the next bounce: a newer event for the same message supersedes a
        # hook still pending, which would then never be called (spec 03 §3.4).
        await until(lambda n=n: len(receiver.events()) >= n)
        assert receiver.events()[n - 1]["Event"] == action
    assert (await stack.admin("GET", "/suppressions")).json() == {"Suppressions": []}


async def test_30_33_34_unrecognized_messages(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    _, from_id = await delivered_with_fromid(stack)
    rcpt = f"alice+{from_id}@example.org"
    two = await bounce(stack, rcpt, dsn(rcpt, recipients=2))
    assert (two["Event"], two["DSN"], two["SMTPCode"]) == ("unrecognized", True, 0)
    assert two["Detail"] == "incoming dsn has 2 recipients, expecting 1"
    bogus = await bounce(stack, rcpt, dsn(rcpt, action="bogus"))
    assert (bogus["Event"], bogus["DSN"]) == ("unrecognized", True)
    assert bogus["Detail"].startswith("parsing incoming dsn: ")
    plain = b"From: someone@example.com\r\nTo: x@example.org\r\nSubject: re: hi\r\n\r\nthanks!\r\n"
    reply = await bounce(stack, rcpt, plain)
    assert (reply["Event"], reply["DSN"], reply["Detail"]) == (
        "unrecognized",
        False,
        "incoming message not a dsn",
    )
    await until(lambda: sum(e["Event"] == "unrecognized" for e in receiver.events()) >= 1)
    assert all(e["SMTPCode"] == 0 for e in receiver.events() if e["Event"] == "unrecognized")


async def test_29_unknown_fromid_or_address_without_one_is_not_matched(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    out = await bounce(stack, "alice+unique@example.org", dsn("alice+unique@example.org"))
    assert out["Matched"] is False and out["Detail"] == "no retired message with this fromid"
    out = await bounce(stack, "alice@example.org", dsn("alice@example.org"))
    assert out["Matched"] is False and out["Detail"] == "recipient has no fromid"
    bad = await stack.admin("POST", "/bounces", params={"rcpt": "not an address"}, content=b"x")
    assert bad.status_code == 400 and bad.json()["Code"] == "badAddress"
    await asyncio.sleep(0.2)
    assert receiver.events() == []


async def test_44_two_delayed_dsns_supersede(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script = Script(statuses=[200, 500])
    stack = await fromid_stack(stack_factory, receiver, monkeypatch, first_retry="1h")
    _, from_id = await delivered_with_fromid(stack)
    # The delivered event's hook is retired (its call done and recorded) before the first bounce, so it
    # is not the one the bounce supersedes.
    await until(lambda: _count(retired_hooks(stack), 1))
    rcpt = f"alice+{from_id}@example.org"
    delayed = dsn(rcpt, action="delayed", status="4.0.0", diagnostic="smtp; 451 4.0.0 later")
    await bounce(stack, rcpt, delayed)
    await until(lambda: len(receiver.events()) == 2)
    await bounce(stack, rcpt, delayed)
    await until(lambda: _count(pending_hooks(stack), 1))
    [pending] = await pending_hooks(stack)
    superseded = [h for h in await retired_hooks(stack) if h["SupersededByID"]]
    assert len(superseded) == 1 and superseded[0]["SupersededByID"] == pending["ID"]
    assert superseded[0]["ID"] < pending["ID"]


async def test_bounce_by_smtp_to_the_listener(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote MTA delivers the DSN by SMTP to the worker's bounce listener (worker.bounces_listen)."""
    import aiosmtplib

    from deploy.embedded import free_port
    from worker.bounce_listener import start_listener

    stack = await fromid_stack(stack_factory, receiver, monkeypatch)
    msg_id, from_id = await delivered_with_fromid(stack)
    await until(lambda: len(receiver.events()) == 1)
    port = free_port()
    server = await start_listener(stack.config, stack.pool, stack.client, "127.0.0.1", port)
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        rcpt = f"alice+{from_id}@example.org"
        # Only FromID addresses are accepted: the listener is neither a relay nor a mailbox.
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await smtp.sendmail("", ["alice@example.org"], dsn("alice@example.org"))
        await smtp.sendmail("", [rcpt], dsn(rcpt))
        await smtp.quit()
    finally:
        server.close()
    await until(lambda: len(receiver.events()) == 2)
    ev = receiver.events()[1]
    assert (ev["Event"], ev["QueueMsgID"], ev["SMTPCode"], ev["DSN"]) == ("failed", msg_id, 550, True)


async def test_bounce_whose_workflow_was_terminated_unmatched_is_matched_by_the_sweeper(
    stack_factory: Any, temporal_env: Any
) -> None:
    from datetime import timedelta

    from domain.contracts import BounceResult
    from store import bounces
    from worker.main import build_worker
    from worker.sweeper import sweep_bounces
    from workflows.client import start_bounce

    stack = await stack_factory(worker=False)
    bounce_id = await bounces.store(stack.pool, "", SENDER, dsn(SENDER))
    # Terminated before any worker matched it: nothing would ever process the stored bounce.
    handle = await start_bounce(stack.client, stack.config.temporal.task_queue, bounce_id)
    await handle.terminate(reason="clicked in the UI")
    assert await sweep_bounces(stack.client, stack.pool, stack.config, timedelta(0)) == 1
    worker = build_worker(temporal_env.client, stack.pool, stack.config)
    async with worker:
        result = await stack.client.get_workflow_handle(handle.id, result_type=BounceResult).result()
    assert result.bounce_id == bounce_id and result.detail == "recipient has no fromid"
    row = await bounces.get(stack.pool, bounce_id)
    assert row is not None and row["processed"] is not None and row["detail"] == "recipient has no fromid"
    assert await sweep_bounces(stack.client, stack.pool, stack.config, timedelta(0)) == 0
