"""Search attributes an operator filters on in the Temporal UI (DESIGN §3; spec 04 issue 5 §4).

The same query strings the README shows go through the client's list API, which is what the UI uses.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from domain.contracts import delivery_workflow_id
from tests.conftest import Stack


async def workflow_ids(stack: Stack, query: str, want: set[str], timeout: float = 15) -> set[str]:
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
