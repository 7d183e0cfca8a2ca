"""Outgoing webhooks through the running worker and API (spec 03 §3; scenarios 10–15, 36–45).

A real HTTP server on loopback receives the calls; the retry schedule runs scaled down (first wait 10 ms).
"""

from __future__ import annotations

import asyncio
import email
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.contracts import MsgState, webhook_workflow_id
from tests.conftest import Stack
from tests.support.webhookserver import Script, WebhookServer

AUTH = "Basic dXNlcm5hbWU6cGFzc3dvcmQ="


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    s = WebhookServer().start()
    yield s
    s.stop()


async def hooked(
    stack_factory: Any,
    receiver: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    events: list[str] | None = None,
    keep: str = "1h",
    **kw: Any,
) -> Stack:
    """A stack whose account alice sends every event (or `events`) to the receiver's /hook."""
    monkeypatch.setenv("TEST_HOOK_AUTH", AUTH)
    hook = {"url": receiver.url + "/hook", "authorization_env": "TEST_HOOK_AUTH", "events": events or []}
    return await stack_factory(
        accounts={"alice": {"outgoing_webhook": hook, "keep_retired_webhook_period": keep}},
        webhooks={"first_retry": "10ms", **kw.pop("webhooks", {})},
        **kw,
    )


async def until(predicate: Any, timeout: float = 60.0) -> None:
    """Wait until an (async or plain) predicate holds; the default deadline leaves a busy machine time for
    what usually crosses a workflow, an activity and an SMTP session or an HTTP call."""
    async with asyncio.timeout(timeout):
        while True:
            v = predicate()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return
            await asyncio.sleep(0.05)


async def retired_hooks(stack: Stack, **params: str) -> list[dict[str, Any]]:
    r = await stack.admin("GET", "/hooks/retired", params=params)
    assert r.status_code == 200, r.text
    return r.json()["Hooks"]


async def pending_hooks(stack: Stack, **params: str) -> list[dict[str, Any]]:
    r = await stack.admin("GET", "/hooks", params=params)
    assert r.status_code == 200, r.text
    return r.json()["Hooks"]


async def test_11_delivered_event_with_payload_headers_and_retired_hook(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await hooked(stack_factory, receiver, monkeypatch)
    resp = await stack.send_ok(
        {
            "To": [{"Address": "rcpt@example.com"}],
            "Subject": "hello",
            "Text": "x",
            "Extra": {"a": "123"},
        }
    )
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    await until(lambda: len(receiver.calls) == 1)
    [call] = receiver.calls
    payload = call.json()
    assert list(payload) == [
        "Version",
        "Event",
        "DSN",
        "Suppressing",
        "QueueMsgID",
        "FromID",
        "MessageID",
        "Subject",
        "WebhookQueued",
        "SMTPCode",
        "SMTPEnhancedCode",
        "Error",
        "Extra",
    ]
    assert payload["Version"] == 0 and payload["Event"] == "delivered"
    assert payload["DSN"] is False and payload["Suppressing"] is False
    assert payload["QueueMsgID"] == msg_id and payload["FromID"] == ""
    assert payload["MessageID"] == resp["MessageID"] and payload["Subject"] == "hello"
    # mox sends 0 here; the next hop's reply code is what an application wants (spec 03 §3.3).
    assert payload["SMTPCode"] == 250 and payload["Error"] == "" and payload["Extra"] == {"a": "123"}
    assert call.headers["Authorization"] == AUTH
    assert call.headers["Content-Type"] == "application/json; charset=utf-8"
    assert call.headers["X-Mox-Webhook-Attempt"] == "1"
    assert call.headers["User-Agent"].startswith("tempost/")
    hook_id = int(call.headers["X-Mox-Webhook-ID"])
    await until(lambda: retired_hooks(stack))
    [retired] = await retired_hooks(stack)
    assert retired["ID"] == hook_id and retired["Success"] and retired["Attempts"] == 1
    assert retired["URL"] == receiver.url + "/hook" and retired["Authorization"] is True
    assert retired["OutgoingEvent"] == "delivered" and retired["QueueMsgID"] == msg_id
    assert retired["Results"][0]["Code"] == 200 and retired["Results"][0]["Response"] == "ok\n"
    assert json.loads(retired["Payload"]) == payload
    assert await pending_hooks(stack) == []


async def test_10_42_account_without_webhook_gets_no_hook(
    stack_factory: Any, receiver: WebhookServer
) -> None:
    stack = await stack_factory(webhooks={"first_retry": "10ms"})
    resp = await stack.send_ok({"To": [{"Address": "rcpt@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await asyncio.sleep(0.3)
    assert receiver.calls == [] and await pending_hooks(stack) == [] and await retired_hooks(stack) == []


async def test_event_filter_limits_what_is_sent(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await hooked(stack_factory, receiver, monkeypatch, events=["failed"])
    stack.sink.behaviour.rcpt_replies["bad@example.com"] = "554 5.7.1 refused"
    resp = await stack.send_ok(
        {"To": [{"Address": "ok@example.com"}, {"Address": "bad@example.com"}], "Text": "x"}
    )
    ok_id, bad_id = (s["QueueMsgID"] for s in resp["Submissions"])
    await stack.finished(ok_id)
    await until(lambda: len(receiver.calls) >= 1)
    await asyncio.sleep(0.3)
    assert [(e["Event"], e["QueueMsgID"]) for e in receiver.events()] == [("failed", bad_id)]


async def test_12_13_14_failed_with_codes_suppressing_then_suppressed(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await hooked(stack_factory, receiver, monkeypatch)
    # The whole feedback loop: a rejecting server, a DSN to the sender, the failed webhook with the SMTP
    # code, the suppression entry, and the next send refused without connecting.
    stack.sink.behaviour.rcpt_replies["temp@example.com"] = "554 5.1.0 not here"
    stack.sink.behaviour.rcpt_replies["gone@example.com"] = "550 5.1.0 no such user"
    resp = await stack.send_ok(
        {"To": [{"Address": "temp@example.com"}, {"Address": "gone@example.com"}], "Text": "x"}
    )
    temp_id, gone_id = (s["QueueMsgID"] for s in resp["Submissions"])
    await stack.finished(temp_id)
    await until(lambda: len(receiver.events()) == 2)
    by_id = {e["QueueMsgID"]: e for e in receiver.events()}
    assert by_id[temp_id]["Event"] == "failed" and by_id[temp_id]["SMTPCode"] == 554
    assert by_id[temp_id]["SMTPEnhancedCode"] == "5.1.0" and by_id[temp_id]["Suppressing"] is False
    assert "not here" in by_id[temp_id]["Error"]
    assert by_id[gone_id]["Event"] == "failed" and by_id[gone_id]["SMTPCode"] == 550
    assert by_id[gone_id]["Suppressing"] is True
    await until(lambda: len(stack.sink.dsns()) == 2)
    dsn = email.message_from_bytes(stack.sink.dsns()[0].data)
    assert dsn.get_content_type() == "multipart/report"
    listed = (await stack.admin("GET", "/suppressions", params={"account": "alice"})).json()
    assert [e["BaseAddress"] for e in listed["Suppressions"]] == ["gone@example.com"]

    seen = stack.sink.rcpts_seen.count("gone@example.com")
    resp = await stack.send_ok({"To": [{"Address": "gone@example.com"}], "Text": "again"})
    again = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(again)
    assert status.msgs[0].state == MsgState.FAILED
    await until(lambda: len(receiver.events()) == 3)
    last = receiver.events()[-1]
    assert last["Event"] == "suppressed" and last["QueueMsgID"] == again
    assert last["SMTPCode"] == 0 and last["SMTPEnhancedCode"] == "" and last["Suppressing"] is False
    assert "suppression list" in last["Error"]
    # No SMTP transaction for the suppressed recipient (only its failure DSN went to the sender).
    assert stack.sink.rcpts_seen.count("gone@example.com") == seen


async def test_15_admin_fail_and_drop_give_failed_and_canceled(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await hooked(stack_factory, receiver, monkeypatch)
    resp = await stack.send_ok(
        {
            "To": [{"Address": "a@example.com"}, {"Address": "b@example.com"}],
            "Text": "x",
            "FutureRelease": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        }
    )
    a_id, b_id = (s["QueueMsgID"] for s in resp["Submissions"])
    assert (await stack.admin("POST", f"/queue/{a_id}/fail")).status_code == 200
    assert (await stack.admin("POST", f"/queue/{b_id}/drop")).status_code == 200
    await until(lambda: len(receiver.events()) == 2)
    by_id = {e["QueueMsgID"]: e for e in receiver.events()}
    assert by_id[a_id]["Event"] == "failed" and by_id[a_id]["SMTPCode"] == 0
    assert by_id[a_id]["Error"] == "delivery canceled by admin"
    assert by_id[b_id]["Event"] == "canceled" and by_id[b_id]["Error"] == "delivery canceled by admin"


async def test_delayed_carries_the_real_error_and_is_superseded_by_delivered(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The receiver is down while the message is deferred, so the delayed hook is still pending when the
    # delivered event arrives: only the latest event stays pending (spec 03 §3.4).
    # The message's retry and the hook's both wait an hour, so the delayed call is made (and fails) before
    # the test kicks the message, and is still pending when the delivered event supersedes it however long
    # the kick takes (a 30 s retry could come first on a busy machine, and succeed).
    receiver.script = Script(statuses=[500])
    stack = await hooked(
        stack_factory, receiver, monkeypatch, webhooks={"first_retry": "1h"}, backoff_base="1h"
    )
    stack.sink.behaviour.temp_failures = 1
    resp = await stack.send_ok({"To": [{"Address": "slow@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await until(lambda: len(receiver.events()) >= 1)
    first = receiver.events()[0]
    assert first["Event"] == "delayed" and first["SMTPCode"] == 451
    # The real error, not mox's "delivering..." placeholder.
    assert first["Error"] and first["Error"] != "delivering..."
    receiver.script = Script(statuses=[200])
    assert (await stack.admin("POST", f"/queue/{msg_id}/kick")).status_code == 200
    await stack.finished(msg_id)
    await until(lambda: any(e["Event"] == "delivered" for e in receiver.events()))
    await until(lambda: _count(retired_hooks(stack), 2))
    retired = {h["OutgoingEvent"]: h for h in await retired_hooks(stack)}
    assert retired["delayed"]["SupersededByID"] == retired["delivered"]["ID"]
    assert retired["delayed"]["ID"] < retired["delivered"]["ID"] and not retired["delayed"]["Success"]
    assert retired["delivered"]["Success"]
    assert await pending_hooks(stack) == []


async def _count(coro: Any, n: int) -> bool:
    return len(await coro) == n


async def test_37_39_failing_receiver_is_retried_then_succeeds(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script = Script(statuses=[500, 200])
    stack = await hooked(stack_factory, receiver, monkeypatch)
    resp = await stack.send_ok({"To": [{"Address": "rcpt@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: _count(retired_hooks(stack), 1))
    [h] = await retired_hooks(stack)
    assert h["Attempts"] == 2 and h["Success"]
    first, second = h["Results"]
    assert not first["Success"] and first["Code"] == 500 and first["Response"] == "server error\n"
    assert first["Error"] == 'http status "500 Internal Server Error", expected 200 ok'
    assert second["Success"] and second["Code"] == 200 and second["Response"] == "ok\n"
    assert [c.headers["X-Mox-Webhook-Attempt"] for c in receiver.calls] == ["1", "2"]
    assert len({c.headers["X-Mox-Webhook-ID"] for c in receiver.calls}) == 1
    # Retries send the very same bytes.
    assert receiver.calls[0].body == receiver.calls[1].body


async def test_41_always_failing_receiver_gives_up_after_12_attempts(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script = Script(statuses=[500])
    # 10 ms first wait: the whole schedule (1 + 2 + ... + 960 units) takes about 19 s.
    stack = await hooked(stack_factory, receiver, monkeypatch, webhooks={"first_retry": "5ms"})
    resp = await stack.send_ok({"To": [{"Address": "rcpt@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: _count(retired_hooks(stack), 1), timeout=60)
    [h] = await retired_hooks(stack)
    assert h["Attempts"] == 12 and len(h["Results"]) == 12 and not h["Success"]
    assert h["Results"][-1]["Code"] == 500
    assert len(receiver.calls) == 12
    assert await pending_hooks(stack) == []


async def _hook_failed_once(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[Stack, dict[str, Any]]:
    """A stack whose first webhook call got a 500 and waits an hour for its second (which gets 200)."""
    receiver.script = Script(statuses=[500, 200])
    stack = await hooked(stack_factory, receiver, monkeypatch, webhooks={"first_retry": "1h"})
    resp = await stack.send_ok({"To": [{"Address": "rcpt@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: _attempts(stack, 1))
    [hook] = await pending_hooks(stack)
    return stack, hook


async def test_38_43_admin_schedule_and_cancel(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, h = await _hook_failed_once(stack_factory, receiver, monkeypatch)
    assert len(receiver.calls) == 1 and h["Results"][0]["Code"] == 500
    r = await stack.admin("POST", "/hooks/nextattempt", json={"Filter": {}, "Add": "-2h"})
    assert r.json() == {"Affected": 1}
    # The workflow's timer moved with the row: the second call happens now, not in an hour.
    await until(lambda: _count(retired_hooks(stack), 1))
    assert len(receiver.calls) == 2

    receiver.script = Script(statuses=[500])
    resp = await stack.send_ok({"To": [{"Address": "rcpt2@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: len(receiver.calls) == 3)
    await until(lambda: _attempts(stack, 1))
    r = await stack.admin("POST", "/hooks/cancel", json={"Filter": {}})
    assert r.json() == {"Affected": 1}
    assert await pending_hooks(stack) == []
    canceled = [h for h in await retired_hooks(stack) if not h["Success"]]
    assert canceled[0]["Results"][-1]["Error"] == "canceled by admin"
    bad = await stack.admin("GET", "/hooks", params={"submitted": "1h"})
    assert bad.status_code == 400 and bad.json()["Code"] == "badFilter"


async def test_pending_hook_whose_workflow_was_terminated_is_started_again(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.sweeper import recover_lost

    stack, hook = await _hook_failed_once(stack_factory, receiver, monkeypatch)
    workflow_id = webhook_workflow_id(hook["ID"])
    # Terminated in the Temporal UI while it waits an hour for its second call: nothing would make that call.
    await stack.client.get_workflow_handle(workflow_id).terminate(reason="clicked in the UI")
    assert await recover_lost(stack.client, stack.pool, stack.config) == [workflow_id]
    assert await recover_lost(stack.client, stack.pool, stack.config) == []
    # The new run keeps the row's attempts and its next attempt an hour away, and steers as before.
    [again] = await pending_hooks(stack)
    assert again["Attempts"] == 1 and again["NextAttempt"] == hook["NextAttempt"]
    assert (await stack.admin("POST", "/hooks/kick", json={"Filter": {}})).json() == {"Affected": 1}
    await until(lambda: _count(retired_hooks(stack), 1))
    [done] = await retired_hooks(stack)
    assert done["Success"] and done["Attempts"] == 2 and len(receiver.calls) == 2


async def _attempts(stack: Stack, n: int) -> bool:
    hooks = await pending_hooks(stack)
    return bool(hooks) and hooks[0]["Attempts"] == n and hooks[0]["Results"][-1]["Error"] != "delivering..."


async def test_36_one_call_in_flight_per_url_and_others_proceed(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script = Script(delay=0.3)
    stack = await hooked(stack_factory, receiver, monkeypatch)
    resp = await stack.send_ok({"To": [{"Address": f"r{i}@example.com"} for i in range(4)], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: _count(retired_hooks(stack), 4))
    assert len(receiver.calls) == 4
    assert receiver.max_parallel["/hook"] == 1


async def test_45_listing_sort_filter_and_keyset_pages(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script = Script(statuses=[500])
    stack = await hooked(stack_factory, receiver, monkeypatch, webhooks={"first_retry": "1h"})
    resp = await stack.send_ok({"To": [{"Address": f"r{i}@example.com"} for i in range(3)], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    await until(lambda: _count(pending_hooks(stack, nextattempt=">30m"), 3))
    desc = await pending_hooks(stack)
    asc = await pending_hooks(stack, asc="true")
    assert [h["ID"] for h in asc] == [h["ID"] for h in reversed(desc)]
    paged: list[int] = []
    last: dict[str, str] = {}
    for _ in range(4):
        page = await pending_hooks(stack, asc="true", max="1", **last)
        if not page:
            break
        paged.append(page[0]["ID"])
        last = {"lastid": str(page[0]["ID"]), "last": page[0]["NextAttempt"]}
    assert paged == [h["ID"] for h in asc]
    one = asc[1]
    got = await pending_hooks(
        stack, ids=str(one["ID"]), account="alice", submitted="<1s", nextattempt=">1s", event="delivered"
    )
    assert [h["ID"] for h in got] == [one["ID"]]
    assert await pending_hooks(stack, event="failed") == []
    assert (await stack.admin("GET", "/hooks/count")).json() == {"Count": 3}
    assert (await stack.admin("GET", f"/hooks/{one['ID']}")).json()["ID"] == one["ID"]
    assert (await stack.admin("GET", "/hooks/999999999")).status_code == 404


async def test_admin_suppressions_for_any_account(stack: Stack) -> None:
    r = await stack.admin(
        "POST", "/suppressions", json={"Account": "bob", "EmailAddress": "X.Y+tag@Example.com", "Reason": "t"}
    )
    assert r.status_code == 200 and r.json()["BaseAddress"] == "xy@example.com"
    dup = await stack.admin(
        "POST", "/suppressions", json={"Account": "bob", "EmailAddress": "xy@example.com"}
    )
    assert dup.status_code == 409
    assert (await stack.admin("GET", "/suppressions", params={"account": "alice"})).json() == {
        "Suppressions": []
    }
    everyone = (await stack.admin("GET", "/suppressions")).json()["Suppressions"]
    assert [(e["Account"], e["OriginalAddress"]) for e in everyone] == [("bob", "X.Y+tag@example.com")]
    present = await stack.admin(
        "GET", "/suppressions", params={"account": "bob", "address": "xy@example.com"}
    )
    assert present.json() == {"Present": True}
    bad = await stack.admin("POST", "/suppressions", json={"Account": "bob", "EmailAddress": "nope"})
    assert bad.status_code == 400 and bad.json()["Code"] == "badAddress"
    gone = await stack.admin(
        "DELETE", "/suppressions", params={"account": "bob", "address": "x.y@example.com"}
    )
    assert gone.status_code == 204
    again = await stack.admin(
        "DELETE", "/suppressions", params={"account": "bob", "address": "xy@example.com"}
    )
    assert again.status_code == 404
    # The webapi of the account itself sees the same list.
    webapi = await stack.http.post(
        "/webapi/v0/SuppressionList", data={"request": "{}"}, auth=("bob@example.net", "bobs-password")
    )
    assert webapi.json() == {"Suppressions": []}
    assert (await stack.http.get("/admin/v0/suppressions")).status_code == 401


async def test_17_localserve_pseudo_delivery_gives_delivered_and_permerror_gives_failed(
    stack_factory: Any, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tempost has no mailboxes, so mox's second (incoming) hook of this scenario has no counterpart.
    stack = await hooked(stack_factory, receiver, monkeypatch, default_transport="localserve")
    resp = await stack.send_ok(
        {"To": [{"Address": "ok@example.com"}, {"Address": "userpermerror@example.com"}], "Text": "x"}
    )
    ok_id, bad_id = (s["QueueMsgID"] for s in resp["Submissions"])
    await stack.finished(ok_id)
    await until(lambda: len(receiver.events()) == 2)
    by_id = {e["QueueMsgID"]: e["Event"] for e in receiver.events()}
    assert by_id == {ok_id: "delivered", bad_id: "failed"}
