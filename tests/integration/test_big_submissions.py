"""Big submissions: thousands of recipients in one Send keep every workflow task short (issue 11 item 7).

A FromID login gives every recipient its own MAIL FROM, so each recipient is its own group. The workflow
runs at most the delivery cap's attempts at once (and one per domain), keeps the rest waiting without
commands, and publishes its search attributes once per workflow task.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from domain.contracts import DeliveryStatus
from tests.conftest import SENDER, Stack
from tests.support.history import attempts_made


async def fromid_stack(stack_factory: Any, **queue: Any) -> Stack:
    return await stack_factory(
        domains={"example.org": {"localpart_catchall_separator": "+"}},
        accounts={"alice": {"fromid_login_addresses": [SENDER]}},
        **queue,
    )


async def send_many(stack: Stack, recipients: list[str]) -> list[dict[str, Any]]:
    r = await stack.http.post(
        "/webapi/v0/Send",
        json={"To": [{"Address": a} for a in recipients], "Subject": "many", "Text": "hello"},
        auth=(SENDER, "s3cret-test-password"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    subs: list[dict[str, Any]] = r.json()["Submissions"]
    return subs


async def queued_count(stack: Stack) -> int:
    r = await stack.admin("GET", "/queue/count")
    assert r.status_code == 200, r.text
    count: int = r.json()["Count"]
    return count


async def test_held_2500_recipient_fromid_submission_answers_and_drops(stack_factory: Any) -> None:
    # Held by a rule, every one of the 2,500 groups waits in the first workflow task; before the bound
    # each of them computed the search attributes over all 2,500 messages (quadratic) and the task ran
    # into Temporal's deadlock detector, so the drop below was accepted and never carried out.
    stack = await fromid_stack(stack_factory)
    assert (await stack.admin("POST", "/holdrules", json={"Account": "alice"})).status_code == 200
    rcpts = [f"user{i}@d{i % 500}.example" for i in range(5000)]
    subs = await send_many(stack, rcpts)
    assert len({s["FromID"] for s in subs}) == 5000
    base_id = subs[0]["QueueMsgID"]
    handle = stack.handle(base_id)
    async with asyncio.timeout(60):
        while True:
            status = await handle.query("status", result_type=DeliveryStatus)
            if status.msgs and all(m.state == "held" for m in status.msgs):
                break
            await asyncio.sleep(0.2)
    assert len(status.msgs) == 5000

    r = await stack.admin("POST", "/queue/drop", json={"Filter": {"Account": "alice"}})
    assert r.status_code == 200, r.text
    assert r.json()["Affected"] == 5000
    final = await stack.finished(base_id, timeout=120)
    assert {m.state for m in final.msgs} == {"canceled"}
    assert await queued_count(stack) == 0
    assert stack.sink.messages() == []


async def test_fromid_recipients_of_one_domain_go_one_at_a_time_without_refused_attempts(
    stack_factory: Any,
) -> None:
    # 60 recipients in 3 domains: 60 groups, 20 per domain. Each is delivered once with its own MAIL FROM,
    # and no attempt is sent only to be refused by a busy domain lease.
    stack = await fromid_stack(stack_factory, max_concurrent_deliveries=4)
    rcpts = [f"user{i}@d{i % 3}.example" for i in range(60)]
    subs = await send_many(stack, rcpts)
    base_id = subs[0]["QueueMsgID"]
    final = await stack.finished(base_id, timeout=120)
    assert {m.state for m in final.msgs} == {"delivered"}
    assert all(m.attempts == 1 for m in final.msgs)

    delivered = Counter(r for t in stack.sink.messages() for r in t.rcpt_tos)
    assert sorted(delivered) == sorted(rcpts)
    assert set(delivered.values()) == {1}
    mail_froms = {t.mail_from for t in stack.sink.messages()}
    assert len(mail_froms) == 60 and all(f.startswith("alice+") for f in mail_froms)

    events = [e async for e in stack.handle(base_id).fetch_history_events()]
    # One attempt per recipient: none refused for a busy domain or a full cap.
    assert attempts_made(events) == 60
