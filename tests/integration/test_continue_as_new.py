"""A submission whose history grows long carries on in a fresh run (continue-as-new) and loses nothing.

A big fan-out that defers to its last attempt writes thousands of history events; Temporal suggests
continuing as new at 4,096 and ends a workflow at 51,200. This module runs its own dev server that suggests
it after 40 events, so a few deferred attempts get there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from domain.contracts import MsgState
from tests.conftest import SENDER, start_dev_server


@pytest.fixture(scope="module")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """Overrides the session's dev server for this module's stacks."""
    env = await start_dev_server("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40")
    yield env
    await env.shutdown()


async def test_long_history_continues_as_new_with_attempts_and_hold_intact(stack_factory) -> None:
    stack = await stack_factory(max_attempts=8, backoff_base="50ms")
    stack.sink.behaviour.rcpt_replies["slow@example.com"] = "451 4.3.0 not now"
    # A hold rule holds one recipient from the start; it must still be held in the later runs.
    r = await stack.admin("POST", "/holdrules", json={"RecipientDomain": "third.example"})
    assert r.status_code == 200, r.text
    to = ["slow@example.com", "ok@other.example", "c@third.example"]
    resp = await stack.send_ok({"To": [{"Address": a} for a in to], "Text": "x"})
    slow, ok, held = (s["QueueMsgID"] for s in resp["Submissions"])
    # Removing the rule releases nothing; the DSNs to come (null sender) are not held by it.
    rule = r.json()["HoldRule"]["ID"]
    assert (await stack.admin("DELETE", f"/holdrules/{rule}")).status_code == 204
    handle = stack.handle(slow)
    # Eight attempts for the refused recipient, 50 ms doubling apart: well past 40 events.
    async with asyncio.timeout(120):
        while (row := (await stack.admin("GET", f"/retired/{slow}")).json()).get("ID") != slow:
            await asyncio.sleep(0.1)
    # The run that finished the attempts is not the first one.
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id
    # Every attempt counted once across the runs, the limit held, the sender told.
    assert row["Attempts"] == 8 and len(row["Results"]) == 8 and row["Success"] is False
    assert stack.sink.delivered_to() == ["ok@other.example"]
    async with asyncio.timeout(60):
        while not any(t.rcpt_tos == [SENDER] for t in stack.sink.transactions):
            await asyncio.sleep(0.05)
    # The held message came along, still held; released, it is delivered and the submission completes.
    status = (await stack.admin("GET", f"/queue/{held}")).json()
    assert status["Hold"] is True
    assert (await stack.admin("POST", f"/queue/{held}/release")).status_code == 200
    final = await stack.finished(slow)
    assert {m.id: m.state for m in final.msgs}[held] == MsgState.DELIVERED
    assert sorted(stack.sink.delivered_to()) == ["c@third.example", "ok@other.example"]
