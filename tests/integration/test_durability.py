"""Mail survives a dying worker, is never sent twice once accepted, and the happy path stays lean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType

from domain.contracts import MsgState
from tests.conftest import ADMIN_TOKEN, Stack, process_config
from worker.main import build_worker
from workflows.delivery import Delivery


def text_msg(*to: str, **extra: object) -> dict[str, object]:
    req: dict[str, object] = {"To": [{"Address": a} for a in to], "Subject": "hi", "Text": "hello"}
    req.update(extra)
    return req


def worker_config_file(stack: Stack, path: Path) -> Path:
    c = stack.config
    queue = {"backoff_base": f"{c.queue.backoff_base.total_seconds()}s", "max_attempts": c.queue.max_attempts}
    accounts = """[[accounts]]
name = "alice"
addresses = ["alice@example.org"]
password_file = "/nonexistent"
keep_retired_period = "1h"
"""
    path.write_text(process_config(stack, queue=queue, extra=accounts))
    return path


@contextlib.contextmanager
def worker_process(stack: Stack, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `tempost worker` process for the stack, killed at the end if the test has not killed it."""
    cfg = worker_config_file(stack, tmp_path / "worker.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "worker", "-c", str(cfg)],
        env={**os.environ, "TEMPOST_ADMIN_TOKEN": ADMIN_TOKEN},
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_worker_killed_during_backoff_new_worker_finishes(stack_factory, tmp_path: Path) -> None:
    stack = await stack_factory(worker=False, backoff_base="4s")
    stack.sink.behaviour.temp_failures = 1
    with worker_process(stack, tmp_path) as proc:
        resp = await stack.send_ok(text_msg("bob@example.com"))
        msg_id = resp["Submissions"][0]["QueueMsgID"]
        # The worker process starts up first (imports, connections): slow on a busy machine.
        async with asyncio.timeout(90):
            while stack.sink.data_commands < 1:
                await asyncio.sleep(0.05)
            # The first attempt failed and its outcome reached the workflow: the message now waits in
            # backoff (a refused DATA alone does not say the attempt's activity has finished).
            while True:
                status = (await stack.handle(msg_id).query(Delivery.status)).msgs[0]
                if status.attempts == 1 and status.state == MsgState.QUEUED:
                    break
                await asyncio.sleep(0.05)
        # The worker dies without warning.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    row = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert row["Attempts"] == 1 and row["Results"][0]["Code"] == 451
    assert stack.sink.messages() == []
    worker = build_worker(stack.client, stack.pool, stack.config)
    async with worker:
        status = await stack.finished(msg_id, timeout=60)
    assert status.msgs[0].state == MsgState.DELIVERED and status.msgs[0].attempts == 2
    assert stack.sink.delivered_to() == ["bob@example.com"]


async def test_attempt_lost_with_its_worker_is_retried_within_the_heartbeat_timeout(
    stack_factory, tmp_path: Path
) -> None:
    # A ten-minute attempt timeout: without heartbeats the lost attempt would wait that long.
    stack = await stack_factory(worker=False, attempt_timeout="10m")
    stack.sink.behaviour.data_delay = 300
    with worker_process(stack, tmp_path) as proc:
        resp = await stack.send_ok(text_msg("bob@example.com"))
        msg_id = resp["Submissions"][0]["QueueMsgID"]
        async with asyncio.timeout(90):
            while not stack.sink.active.get("example.com"):
                await asyncio.sleep(0.05)
        # Mid-transaction, the worker dies without a word to Temporal.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    stack.sink.behaviour.data_delay = 0
    killed = asyncio.get_running_loop().time()
    worker = build_worker(stack.client, stack.pool, stack.config)
    async with worker:
        status = await stack.finished(msg_id, timeout=120)
    assert status.msgs[0].state == MsgState.DELIVERED
    # The heartbeat timeout is a minute; the attempt timeout ten.
    assert asyncio.get_running_loop().time() - killed < 100


async def test_accepted_message_is_not_sent_again(stack: Stack) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    resp = await stack.send_ok(text_msg("bob@example.com", FutureRelease=later))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    # As if an earlier try of the activity got DATA accepted and then died before reporting it.
    async with stack.pool.connection() as conn:
        await conn.execute(
            "UPDATE queue_msgs SET accepted_at = now(), accepted_reply = '250 ok' WHERE id = %s", (msg_id,)
        )
    assert (await stack.admin("POST", f"/queue/{msg_id}/kick")).status_code == 200
    status = await stack.finished(msg_id)
    assert status.msgs[0].state == MsgState.DELIVERED
    assert stack.sink.messages() == []
    body = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    assert body["Event"] == "delivered"


async def test_history_of_a_delivered_message_is_lean(stack: Stack) -> None:
    resp = await stack.send_ok(text_msg("bob@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    events = [e async for e in stack.handle(msg_id).fetch_history_events()]
    print(f"history events for a delivered single-recipient message: {len(events)}")
    # Start, one workflow task (3 events) that ran the first attempt as a local activity (its marker), the
    # upsert of "finished" and the completion: 7 (issue 15 asks for at most 8). Released workflows made 15.
    assert len(events) <= 8
    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    assert kinds.count(EventType.EVENT_TYPE_MARKER_RECORDED) == 1
    assert kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 0
    # The body never travels through history.
    for e in events:
        assert b"hello" not in e.SerializeToString()


async def _orphan(stack: Stack, account: str, rcpt_local: str) -> int:
    """Commit a submission the way an API does, without starting its workflow; return its id."""
    from store import queue as q

    async with stack.pool.connection() as conn, conn.transaction():
        base_id, _ = await q.insert_submission(
            conn,
            account,
            b"Subject: orphan\r\n\r\nbody\r\n",
            datetime.now(UTC) - timedelta(minutes=5),
            [
                q.NewMsg(
                    account,
                    "example.org",
                    "example.org",
                    rcpt_local,
                    "example.com",
                    "example.com",
                    datetime.now(UTC),
                    30,
                    f"<{rcpt_local}@x>",
                    "orphan",
                )
            ],
        )
    return base_id


async def test_orphaned_submission_is_started_by_sweeper(stack: Stack) -> None:
    from worker.sweeper import sweep_orphans

    resp = await stack.send_ok(text_msg("bob@example.com"))
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    # Simulate an API that committed a submission and died before starting its workflow.
    base_id = await _orphan(stack, "alice", "carol")
    started = await sweep_orphans(stack.client, stack.pool, stack.config, timedelta(seconds=30))
    assert started == 1
    await stack.finished(base_id)
    assert "carol@example.com" in stack.sink.delivered_to()
    assert await sweep_orphans(stack.client, stack.pool, stack.config, timedelta(seconds=30)) == 0


async def test_a_start_temporal_refuses_does_not_hold_up_the_other_orphans(stack: Stack) -> None:
    from worker.sweeper import START_ERRORS, sweep_orphans

    # Temporal refuses this one's start for real: its account search attribute is over the 2 KB limit.
    refused = await _orphan(stack, "a" * 3000, "dave")
    fine = await _orphan(stack, "alice", "erin")
    errors = START_ERRORS.labels("delivery")._value.get()
    assert await sweep_orphans(stack.client, stack.pool, stack.config, timedelta(seconds=30)) == 1
    await stack.finished(fine)
    assert "erin@example.com" in stack.sink.delivered_to()
    assert START_ERRORS.labels("delivery")._value.get() == errors + 1
    # Still unstarted, so the next round tries again (and counts again).
    assert await sweep_orphans(stack.client, stack.pool, stack.config, timedelta(seconds=30)) == 0
    assert START_ERRORS.labels("delivery")._value.get() == errors + 2
    # Nothing of it is lost: it is still queued, untried.
    row = (await stack.admin("GET", f"/queue/{refused}")).json()
    assert row["Attempts"] == 0


# --- A workflow that ends while its mail is queued: an operator terminates it, or Temporal loses it ---


async def _deferred_once(stack: Stack) -> int:
    """Queue one message the sink refuses for now; return its id once the first attempt has failed and
    the workflow waits for the next (an hour away with the stacks below)."""
    stack.sink.behaviour.rcpt_replies["bob@example.com"] = "451 4.3.0 not now"
    msg_id = (await stack.send_ok(text_msg("bob@example.com")))["Submissions"][0]["QueueMsgID"]
    async with asyncio.timeout(60):
        while True:
            status = (await stack.handle(msg_id).query(Delivery.status)).msgs[0]
            if status.attempts == 1 and status.state == MsgState.QUEUED:
                return msg_id
            await asyncio.sleep(0.05)


async def test_terminated_workflow_is_started_again_and_resumes_its_schedule(stack_factory) -> None:
    from worker.sweeper import recover_lost

    stack = await stack_factory(backoff_base="1h", max_attempts=4)
    msg_id = await _deferred_once(stack)
    handle = stack.handle(msg_id)
    before = (await stack.admin("GET", f"/queue/{msg_id}")).json()
    # An operator terminates the workflow in the Temporal UI: the message stays queued with no one to send it.
    await handle.terminate(reason="clicked in the UI")
    assert await recover_lost(stack.client, stack.pool, stack.config) == [handle.id]
    # Running again: nothing more to recover.
    assert await recover_lost(stack.client, stack.pool, stack.config) == []
    # The new run continues where the queue row says: one attempt made, the next an hour away.
    status = (await stack.handle(msg_id).query(Delivery.status)).msgs[0]
    assert status.state == MsgState.QUEUED and status.attempts == 1
    assert status.next_attempt == datetime.fromisoformat(before["NextAttempt"])
    assert stack.sink.delivered_to() == []
    stack.sink.behaviour.rcpt_replies.clear()
    assert (await stack.admin("POST", f"/queue/{msg_id}/kick")).status_code == 200
    assert (await stack.finished(msg_id)).msgs[0].state == MsgState.DELIVERED
    assert stack.sink.delivered_to() == ["bob@example.com"]
    retired = (await stack.admin("GET", f"/retired/{msg_id}")).json()
    assert retired["Attempts"] == 2 and retired["Success"] is True


async def test_workflow_lost_by_temporal_is_started_again_with_its_attempt_limit(stack_factory) -> None:
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
    from temporalio.service import RPCError

    from worker.sweeper import recover_lost

    stack = await stack_factory(backoff_base="1h", max_attempts=2)
    msg_id = await _deferred_once(stack)
    handle = stack.handle(msg_id)
    run_id = (await handle.describe()).run_id
    # Temporal's record of the workflow is gone, as after losing its database.
    await stack.client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=stack.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=run_id),
        )
    )
    async with asyncio.timeout(60):
        while True:
            try:
                await stack.client.get_workflow_handle(handle.id, run_id=run_id).describe()
            except RPCError:
                break
            await asyncio.sleep(0.1)
    assert await recover_lost(stack.client, stack.pool, stack.config) == [handle.id]
    # The second attempt is the last of two: its temporary failure now fails the message, with a DSN.
    assert (await stack.admin("POST", f"/queue/{msg_id}/kick")).status_code == 200
    final = (await stack.finished(msg_id)).msgs[0]
    assert final.state == MsgState.FAILED and final.attempts == 2
    retired = (await stack.admin("GET", f"/retired/{msg_id}")).json()
    assert retired["Attempts"] == 2 and retired["Success"] is False
    # The sender gets the failure DSN.
    async with asyncio.timeout(60):
        while not any(t.rcpt_tos == ["alice@example.org"] for t in stack.sink.transactions):
            await asyncio.sleep(0.05)


async def test_workflows_terminated_just_now_are_all_started_again(stack_factory) -> None:
    # Visibility lags behind a terminate: a sweep right after it still lists the workflows as running.
    # Each workflow's own record must decide, or their mail waits for the next sweep ten minutes later.
    from worker.sweeper import recover_lost

    stack = await stack_factory(backoff_base="1h", max_attempts=4)
    stack.sink.behaviour.rcpt_replies.update({f"bob{i}@example.com": "451 4.3.0 not now" for i in range(12)})
    ids = []
    for i in range(12):
        resp = await stack.send_ok(text_msg(f"bob{i}@example.com"))
        ids.append(resp["Submissions"][0]["QueueMsgID"])
    # Twelve first attempts, one at a time to the one domain.
    async with asyncio.timeout(120):
        for msg_id in ids:
            while (await stack.handle(msg_id).query(Delivery.status)).msgs[0].attempts != 1:
                await asyncio.sleep(0.05)
    await asyncio.gather(*(stack.handle(i).terminate(reason="clicked in the UI") for i in ids))
    restarted = await recover_lost(stack.client, stack.pool, stack.config)
    assert sorted(restarted) == sorted(stack.handle(i).id for i in ids)
