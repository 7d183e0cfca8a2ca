"""One-click unsubscribe (RFC 8058) through the running API and worker: the headers at the SMTP sink, the
link's GET page and POST, suppression at the next delivery, the `unsubscribed` webhook, refused tokens."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from domain.contracts import MsgState
from domain.unsubscribe import Unsubscribe, make_token, read_token
from tests.conftest import PASSWORD, SENDER, Stack
from tests.support.webhookserver import WebhookServer

SECRET = "unsubscribe-test-secret-0123456789"
PUBLIC_URL = "https://mail.example.test"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPOST_UNSUBSCRIBE_SECRET", SECRET)


async def unsub_stack(
    stack_factory: Any, receiver: WebhookServer | None = None, alice: dict[str, Any] | None = None, **api: Any
) -> Stack:
    """A stack with one-click unsubscribe set up; alice's events go to the receiver's /hook."""
    settings = dict(alice or {})
    if receiver is not None:
        settings["outgoing_webhook"] = {"url": receiver.url + "/hook", "events": ["unsubscribed"]}
        settings["keep_retired_webhook_period"] = "1h"
    return await stack_factory(
        accounts={"alice": settings},
        webhooks={"first_retry": "10ms"},
        api={"public_url": PUBLIC_URL, **api},
    )


async def until(predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def webapi(
    stack: Stack, method: str, req: dict[str, Any], auth: tuple[str, str] = (SENDER, PASSWORD)
) -> Any:
    r = await stack.http.post(f"/webapi/v0/{method}", data={"request": json.dumps(req)}, auth=auth)
    assert r.status_code == 200, r.text
    return r.json()


async def suppressions(stack: Stack) -> list[dict[str, Any]]:
    """Every account's suppression entries."""
    r = await stack.admin("GET", "/suppressions")
    assert r.status_code == 200, r.text
    return r.json()["Suppressions"]


def headers_at_sink(stack: Stack, rcpt: str) -> email.message.Message:
    [t] = [t for t in stack.sink.messages() if [r.lower() for r in t.rcpt_tos] == [rcpt.lower()]]
    return email.message_from_bytes(t.data, policy=email.policy.compat32)


def link_of(msg: email.message.Message) -> str:
    """The path of the List-Unsubscribe URL, checked to point at the public URL."""
    value = msg["List-Unsubscribe"]
    assert value.startswith(f"<{PUBLIC_URL}/unsubscribe/") and value.endswith(">"), value
    return urlsplit(value[1:-1]).path


async def sent_link(stack: Stack, rcpt: str, **request: Any) -> tuple[str, int, dict[str, Any]]:
    """Send one message to rcpt, wait for it at the sink; its unsubscribe path, message id, response."""
    resp = await stack.send_ok({"To": [{"Address": rcpt}], "Subject": "news", "Text": "x", **request})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    return link_of(headers_at_sink(stack, rcpt)), msg_id, resp


async def test_one_click_post_suppresses_the_base_address_once_and_tells_the_webhook(
    stack_factory: Any, receiver: WebhookServer
) -> None:
    stack = await unsub_stack(stack_factory, receiver)
    path, msg_id, resp = await sent_link(
        stack, "Bob+news@Example.com", ListUnsubscribe=True, Extra={"campaign": "spring"}
    )
    msg = headers_at_sink(stack, "Bob+news@Example.com")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # GET shows a page with a button and changes nothing: link scanners follow GETs.
    page = await stack.http.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert "Bob+news@example.com" in page.text
    assert await suppressions(stack) == []

    done = await stack.http.post(path, data=ONE_CLICK)
    assert done.status_code == 200, done.text
    [entry] = await suppressions(stack)
    assert entry["Account"] == "alice" and entry["BaseAddress"] == "bob@example.com"
    assert entry["OriginalAddress"] == "Bob+news@example.com" and entry["Manual"] is False
    assert entry["Reason"] == f"one-click unsubscribe (RFC 8058) from message {msg_id}"
    # Any variant of the address finds the entry.
    assert await webapi(stack, "SuppressionPresent", {"EmailAddress": "b.o.b@EXAMPLE.com"}) == {
        "Present": True
    }

    # Again, as multipart/form-data (RFC 8058 §3.2 allows both): harmless.
    again = await stack.http.post(path, files={"List-Unsubscribe": (None, "One-Click")})
    assert again.status_code == 200, again.text
    assert len(await suppressions(stack)) == 1

    # The next Send to the address is suppressed at delivery: retired as such, nothing at the sink.
    resp2 = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "more"})
    next_id = resp2["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(next_id)
    assert [m.state for m in status.msgs] == [MsgState.FAILED]
    row = (await stack.admin("GET", f"/queue/{next_id}")).json()
    assert row["Event"] == "suppressed"
    assert stack.sink.delivered_to() == ["Bob+news@example.com"]

    # The account's webhook hears of it once, in mox's payload shape.
    await until(lambda: receiver.events())
    [event] = receiver.events()
    assert event["Event"] == "unsubscribed" and event["Suppressing"] is True
    assert event["QueueMsgID"] == msg_id and event["MessageID"] == resp["MessageID"]
    assert event["Subject"] == "news" and event["Extra"] == {"campaign": "spring"}
    assert event["DSN"] is False and event["SMTPCode"] == 0 and event["Error"] == ""
    pending = (await stack.admin("GET", "/hooks", params={"event": "unsubscribed"})).json()["Hooks"]
    retired = (await stack.admin("GET", "/hooks/retired", params={"event": "unsubscribed"})).json()["Hooks"]
    assert len(pending) + len(retired) == 1


async def test_forged_altered_and_foreign_tokens_and_wrong_bodies_change_nothing(stack_factory: Any) -> None:
    stack = await unsub_stack(stack_factory)
    path, msg_id, _ = await sent_link(stack, "carol@example.com", ListUnsubscribe=True)
    token = path.rsplit("/", 1)[1]
    assert read_token(SECRET.encode(), token) == Unsubscribe("alice", "carol@example.com", msg_id)

    one_changed = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    forged = make_token(b"not-the-servers-secret-000", Unsubscribe("alice", "carol@example.com", msg_id))
    # Validly signed, but naming a message of another account than its own: never made by this server.
    foreign = make_token(SECRET.encode(), Unsubscribe("bob", "carol@example.com", msg_id))
    for bad in (one_changed, forged, foreign, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x" * 5000):
        r = await stack.http.post(f"/unsubscribe/{bad}", data=ONE_CLICK)
        assert r.status_code == 404 and r.json()["Code"] == "notFound", (bad, r.text)
        if bad != foreign:
            assert (await stack.http.get(f"/unsubscribe/{bad}")).status_code == 404

    # The right token without the one-click body.
    for kw in (
        {},
        {"data": {"List-Unsubscribe": "Yes"}},
        {"data": {"other": "One-Click"}},
        {"json": ONE_CLICK},
        {"content": b"List-Unsubscribe=One-Click", "headers": {"Content-Type": "text/plain"}},
    ):
        r = await stack.http.post(path, **kw)
        assert r.status_code == 400 and r.json()["Code"] == "badRequest", (kw, r.text)
    assert await suppressions(stack) == []

    # The page escapes what the token names (a quoted localpart may hold markup).
    odd = make_token(SECRET.encode(), Unsubscribe("alice", '"<script>x</script>"@example.com', 1))
    page = await stack.http.get(f"/unsubscribe/{odd}")
    assert page.status_code == 200 and "<script>" not in page.text and "&lt;script&gt;" in page.text

    # An oversized body is refused without being read whole.
    big = await stack.http.post(path, data={"List-Unsubscribe": "One-Click", "pad": "x" * 10_000})
    assert big.status_code == 413
    assert await suppressions(stack) == []


async def test_requests_over_the_per_ip_limit_get_429(stack_factory: Any) -> None:
    stack = await unsub_stack(stack_factory, unsubscribe_per_minute=3)
    path, _, _ = await sent_link(stack, "dave@example.com", ListUnsubscribe=True)
    # The limiter counts in fixed one-minute windows of the wall clock: start well inside one.
    left = 60 - datetime.now(UTC).timestamp() % 60
    if left < 15:
        await asyncio.sleep(left + 0.1)
    assert [(await stack.http.get(path)).status_code for _ in range(3)] == [200, 200, 200]
    r = await stack.http.post(path, data=ONE_CLICK)
    assert r.status_code == 429 and r.json()["Code"] == "rateLimited"
    assert await suppressions(stack) == []
    # Another client address has its own count.
    app = stack.http._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
        assert (await other.post(path, data=ONE_CLICK)).status_code == 200
    assert len(await suppressions(stack)) == 1


async def test_several_recipients_each_get_a_link_naming_them(stack_factory: Any) -> None:
    # The account's setting turns it on; no ListUnsubscribe in the request.
    stack = await unsub_stack(stack_factory, alice={"list_unsubscribe": True})
    rcpts = ["erin@example.com", "frank@example.net", "grace@example.com"]
    resp = await stack.send_ok(
        {
            "To": [{"Address": rcpts[0]}, {"Address": rcpts[1]}],
            "CC": [{"Address": rcpts[2]}],
            "Subject": "news",
            "Text": "same text for all",
        }
    )
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    assert [s["Address"] for s in resp["Submissions"]] == rcpts
    # Each recipient's copy is a submission of its own (msg-<id>), so each can carry its own signature.
    for i in ids:
        await stack.finished(i)
    tokens = []
    for rcpt, msg_id in zip(rcpts, ids, strict=True):
        msg = headers_at_sink(stack, rcpt)
        assert msg["Message-Id"] == resp["MessageID"] and msg["To"] and msg["Cc"]
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = link_of(msg).rsplit("/", 1)[1]
        assert read_token(SECRET.encode(), token) == Unsubscribe("alice", rcpt, msg_id)
        tokens.append(token)
        assert (await stack.admin("GET", f"/queue/{msg_id}")).json()["BaseID"] == msg_id
    assert len(set(tokens)) == 3

    # One recipient's link unsubscribes that recipient only.
    assert (await stack.http.post(f"/unsubscribe/{tokens[1]}", data=ONE_CLICK)).status_code == 200
    assert [e["BaseAddress"] for e in await suppressions(stack)] == ["frank@example.net"]

    # "ListUnsubscribe": false turns it off for one Send; an own List-Unsubscribe header wins over the
    # account's setting.
    for req in (
        {"To": [{"Address": "henry@example.com"}], "Text": "x", "ListUnsubscribe": False},
        {
            "To": [{"Address": "ivy@example.com"}],
            "Text": "x",
            "Headers": [["List-Unsubscribe", "<mailto:u@x>"]],
        },
    ):
        r = await stack.send_ok(req)
        await stack.finished(r["Submissions"][0]["QueueMsgID"])
    assert headers_at_sink(stack, "henry@example.com")["List-Unsubscribe"] is None
    ivy = headers_at_sink(stack, "ivy@example.com")
    assert ivy.get_all("List-Unsubscribe") == ["<mailto:u@x>"] and ivy["List-Unsubscribe-Post"] is None


async def test_requests_that_cannot_have_a_link_are_refused(stack_factory: Any) -> None:
    stack = await unsub_stack(stack_factory, max_message_size=5000)
    # A copy per recipient: three copies of 2 kB are over the 5 kB the installation takes for one message.
    rcpts = [{"Address": f"r{i}@example.com"} for i in range(3)]
    many = await stack.send({"To": rcpts, "Text": "x" * 2000, "ListUnsubscribe": True})
    assert many.status_code == 400 and many.json()["Code"] == "messageTooLarge", many.text
    both = await stack.send(
        {
            "To": [{"Address": "jack@example.com"}],
            "Text": "x",
            "ListUnsubscribe": True,
            "Headers": [["List-Unsubscribe", "<mailto:u@x>"]],
        }
    )
    assert both.status_code == 400 and both.json()["Code"] == "user"
    # Without a public URL, nothing can be linked to.
    bare = await stack_factory(worker=False)
    r = await bare.send({"To": [{"Address": "jack@example.com"}], "Text": "x", "ListUnsubscribe": True})
    assert r.status_code == 400 and r.json()["Code"] == "user" and "public_url" in r.json()["Message"]
    assert (await bare.admin("GET", "/queue/count")).json() == {"Count": 0}
    # Without the links the same mail is one stored body, and fits.
    assert (await stack.send({"To": rcpts, "Text": "x" * 2000})).status_code == 200
