"""Histories of released Delivery workflows replay on the current code (determinism across releases).

`tests/replay_histories/*.json` were recorded from real runs of the workflow as released. A change to the
workflow's command sequence that is not guarded by `workflow.patched` makes these fail. To add histories
for a new release, run this module with TEMPOST_RECORD_HISTORIES=1 and commit the new files.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.conftest import Stack
from worker.main import SANDBOX
from worker.sweeper import recover_lost
from workflows.delivery import Delivery

HISTORIES = Path(__file__).resolve().parents[1] / "replay_histories"
RECORD = os.environ.get("TEMPOST_RECORD_HISTORIES") == "1"


def _files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[Delivery], data_converter=pydantic_data_converter, workflow_runner=SANDBOX)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


@pytest.mark.skipif(not RECORD, reason="set TEMPOST_RECORD_HISTORIES=1 to record histories of this release")
async def test_record_histories(stack_factory) -> None:
    stack: Stack = await stack_factory(max_attempts=2)
    # A second recording on one day names itself, e.g. TEMPOST_RELEASE_NAME=20261204r1.
    release = os.environ.get("TEMPOST_RELEASE_NAME") or datetime.now(UTC).strftime("%Y%m%d")

    async def save(name: str, msg_id: int, on: Stack = stack) -> None:
        await on.finished(msg_id)
        history = await on.handle(msg_id).fetch_history()
        (HISTORIES / f"{release}-{name}.json").write_text(history.to_json())

    # Delivered at once; two domains.
    resp = await stack.send_ok(
        {"To": [{"Address": "a@one.example"}, {"Address": "b@two.example"}], "Text": "x"}
    )
    await save("delivered-two-domains", resp["Submissions"][0]["QueueMsgID"])
    # A temporary failure, then delivered after the backoff.
    stack.sink.behaviour.temp_failures = 1
    resp = await stack.send_ok({"To": [{"Address": "c@example.com"}], "Text": "x"})
    await save("deferred-then-delivered", resp["Submissions"][0]["QueueMsgID"])
    # Held, released, kicked; then failed by an admin.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    resp = await stack.send_ok(
        {
            "To": [{"Address": "d@example.com"}, {"Address": "e@example.com"}],
            "Text": "x",
            "FutureRelease": later,
        }
    )
    first, second = (s["QueueMsgID"] for s in resp["Submissions"])
    for op in ("hold", "release", "kick"):
        assert (await stack.admin("POST", f"/queue/{first}/{op}")).status_code == 200
    assert (await stack.admin("POST", f"/queue/{second}/fail")).status_code == 200
    await save("hold-release-kick-fail", first)
    # Dropped while waiting.
    resp = await stack.send_ok({"To": [{"Address": "f@example.com"}], "Text": "x", "FutureRelease": later})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    assert (await stack.admin("POST", f"/queue/{msg_id}/drop")).status_code == 200
    await save("dropped", msg_id)
    # Terminated while waiting, with one attempt made, and started again from its queue row; then kicked.
    resp = await stack.send_ok({"To": [{"Address": "g@example.com"}], "Text": "x", "FutureRelease": later})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.handle(msg_id).terminate(reason="recording")
    async with stack.pool.connection() as conn:
        await conn.execute("UPDATE queue_msgs SET attempts = 1 WHERE id = %s", (msg_id,))
    assert await recover_lost(stack.client, stack.pool, stack.config) == [stack.handle(msg_id).id]
    assert (await stack.admin("POST", f"/queue/{msg_id}/kick")).status_code == 200
    await save("recovered", msg_id)
    # A fan-out over the global cap: its groups wait for delivery slots and are woken one at a time.
    busy: Stack = await stack_factory(max_concurrent_deliveries=2)
    busy.sink.behaviour.data_delay = 0.1
    resp = await busy.send_ok({"To": [{"Address": f"r@d{i}.example"} for i in range(6)], "Text": "x"})
    await save("fan-out-over-the-cap", resp["Submissions"][0]["QueueMsgID"], busy)
    # A bulk hold and release over a filter: the workflow projects its state into the rows after each.
    resp = await stack.send_ok({"To": [{"Address": "h@example.com"}], "Text": "x", "FutureRelease": later})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    for op in ("hold", "release", "kick"):
        r = await stack.admin("POST", f"/queue/{op}", json={"Filter": {"IDs": [msg_id]}})
        assert r.status_code == 200, r.text
    await save("bulk-hold-release-kick", msg_id)
    # FromID: every recipient its own group, two domains, more groups than the cap: bounded slots.
    fromid: Stack = await stack_factory(
        max_concurrent_deliveries=2,
        domains={"example.org": {"localpart_catchall_separator": "+"}},
        accounts={"alice": {"fromid_login_addresses": ["alice@example.org"]}},
    )
    rcpts = [{"Address": f"r{i}@d{i % 2}.example"} for i in range(5)]
    resp = await fromid.send_ok({"To": rcpts, "Text": "x"})
    await save("fromid-bounded", resp["Submissions"][0]["QueueMsgID"], fromid)
