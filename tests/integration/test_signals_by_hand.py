"""Signals an admin sends by hand from the Temporal UI or CLI to `msg-<BaseID>` (issue 14 item 4).

They are sent here exactly as the UI sends them: the signal's name and a JSON payload (or none). The
workflow brings the queue rows up to date itself, so the admin API shows what the UI did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.workflowservice.v1 import SignalWorkflowExecutionRequest

from domain.contracts import MsgState
from tests.conftest import Stack


async def ui_signal(stack: Stack, base_id: int, name: str, payload: bytes | None) -> None:
    """Send a signal the way the UI's "Send a Signal" dialog does: a json/plain payload, or no input."""
    inputs = (
        Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=payload)])
        if payload is not None
        else None
    )
    await stack.client.workflow_service.signal_workflow_execution(
        SignalWorkflowExecutionRequest(
            namespace=stack.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=f"msg-{base_id}"),
            signal_name=name,
            input=inputs,
            identity="temporal-ui",
        )
    )


async def row(stack: Stack, msg_id: int) -> dict[str, Any]:
    r = await stack.admin("GET", f"/queue/{msg_id}")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def queue_two_later(stack: Stack) -> tuple[int, int, int]:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    resp = await stack.send_ok(
        {
            "To": [{"Address": "a@example.com"}, {"Address": "b@example.com"}],
            "Text": "x",
            "FutureRelease": tomorrow,
        }
    )
    a, b = (s["QueueMsgID"] for s in resp["Submissions"])
    return a, a, b


async def test_hold_one_then_release_and_kick_all_from_the_ui(stack: Stack) -> None:
    base, a, b = await queue_two_later(stack)
    await ui_signal(stack, base, "hold", b'{"MsgIDs": [%d]}' % b)

    async def b_held() -> bool:
        return bool((await row(stack, b))["Hold"])

    await until(b_held)
    assert (await row(stack, a))["Hold"] is False
    # Kick with no input: every message still queued is due now; the held one stays.
    await ui_signal(stack, base, "kick", None)
    async with asyncio.timeout(20):
        while stack.sink.delivered_to() != ["a@example.com"]:
            await asyncio.sleep(0.05)
    assert (await row(stack, b))["Hold"] is True
    # An empty list is every message too.
    await ui_signal(stack, base, "release", b'{"MsgIDs": []}')
    await ui_signal(stack, base, "kick", b"{}")
    final = await stack.finished(base)
    assert {m.state for m in final.msgs} == {MsgState.DELIVERED}
    assert sorted(stack.sink.delivered_to()) == ["a@example.com", "b@example.com"]


async def test_fail_from_the_ui_sends_the_dsn_and_drop_sends_none(stack: Stack) -> None:
    base, a, b = await queue_two_later(stack)
    await ui_signal(stack, base, "fail", b'{"MsgIDs": [%d]}' % a)
    await ui_signal(stack, base, "drop", b'{"MsgIDs": [%d]}' % b)
    final = await stack.finished(base)
    assert {m.id: m.state for m in final.msgs} == {a: MsgState.FAILED, b: MsgState.CANCELED}
    retired = {i: (await stack.admin("GET", f"/retired/{i}")).json() for i in (a, b)}
    assert retired[a]["Success"] is False and retired[b]["Success"] is False
    assert (await stack.admin("GET", "/queue", params={"ids": f"{a},{b}"})).json()["Messages"] == []
    # One failure DSN to the sender, for the failed message only.
    async with asyncio.timeout(20):
        while not stack.sink.dsns():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert [t.rcpt_tos for t in stack.sink.dsns()] == [["alice@example.org"]]
    assert b"a@example.com" in stack.sink.dsns()[0].data
