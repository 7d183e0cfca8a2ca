"""Search attributes an operator filters on in the Temporal UI (DESIGN §3; spec 04 issue 5 §4).

The same query strings the README shows go through the client's list API, which is what the UI uses.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from domain.contracts import delivery_workflow_id
from tests.conftest import Stack
from workflows import searchattrs


async def workflow_ids(stack: Stack, query: str, want: set[str], timeout: float = 60) -> set[str]:
    """Workflows matching a visibility query, polled until they equal `want` (visibility lags a little);
    a TimeoutError fails the test when they never do."""
    async with asyncio.timeout(timeout):
        while True:
            got = {w.id async for w in stack.client.list_workflows(query)}
            if got == want:
                return got
            await asyncio.sleep(0.2)


async def test_held_mail_to_a_domain_is_found_by_query_and_state_follows(stack: Stack) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later_request = {"Text": "x", "FutureRelease": tomorrow}
    held = await stack.send_ok({"To": [{"Address": "a@example.com"}], **later_request})
    other = await stack.send_ok({"To": [{"Address": "b@other.example"}], **later_request})
    held_id, other_id = (r["Submissions"][0]["QueueMsgID"] for r in (held, other))
    await stack.admin("POST", f"/queue/{held_id}/hold")
    tq = f"TaskQueue = '{stack.config.temporal.task_queue}'"
    wid = delivery_workflow_id(held_id)
    await workflow_ids(stack, f"{tq} AND TempostHeld = true AND TempostRcptDomains = 'example.com'", {wid})
    await workflow_ids(stack, f"{tq} AND TempostState = 'held' AND TempostAccount = 'alice'", {wid})
    later = f"{tq} AND TempostNextAttempt > '{(datetime.now(UTC) + timedelta(hours=12)).isoformat()}'"
    await workflow_ids(stack, later, {delivery_workflow_id(other_id)})
    # Released and kicked: delivered, and the attributes say so.
    await stack.admin("POST", f"/queue/{held_id}/release")
    await stack.admin("POST", f"/queue/{held_id}/kick")
    await stack.finished(held_id)
    assert await workflow_ids(stack, f"{tq} AND TempostState = 'finished'", {wid}) == {wid}
    assert await workflow_ids(stack, f"{tq} AND TempostAttempts = 1", {wid}) == {wid}


async def test_a_fan_out_to_more_domains_than_one_attribute_holds_is_still_sent(stack_factory) -> None:
    # Temporal refuses a search attribute value over 2 KB, and with it the workflow's start: before, mail to
    # this many domains was accepted and then never started. The attribute lists the domains that fit.
    stack = await stack_factory(max_concurrent_deliveries=20)
    domains = sorted(f"a-rather-long-recipient-domain-number-{i:03}.example" for i in range(60))
    resp = await stack.send_ok({"To": [{"Address": f"rcpt@{d}"} for d in domains], "Text": "x"})
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    status = await stack.finished(ids[0], timeout=120)
    assert {m.state.value for m in status.msgs} == {"delivered"} and len(status.msgs) == 60
    assert sorted(stack.sink.delivered_to()) == sorted(f"rcpt@{d}" for d in domains)
    # The workflow started listing the first domains that fit in the limit.
    history = await stack.handle(ids[0]).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    first = json.loads(started.search_attributes.indexed_fields[searchattrs.RCPT_DOMAINS.name].data)
    assert 0 < len(first) < len(domains) and first == domains[: len(first)]
    assert len(json.dumps(first).encode()) <= 2048
    # Finished: nothing pending (an empty list removes the attribute).
    desc = await stack.handle(ids[0]).describe()
    assert not desc.typed_search_attributes.get(searchattrs.RCPT_DOMAINS)
    assert desc.typed_search_attributes.get(searchattrs.STATE) == "finished"
