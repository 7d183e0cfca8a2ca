"""Delivery concurrency across worker processes (spec 01 §3, DESIGN §4).

Two real `tempost worker` processes share one task queue, one PostgreSQL and one SMTP sink that holds every
DATA for a while and records how many deliveries to each recipient domain overlap. Never more than one per
domain, never more than the global cap, and both processes do work.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from domain.contracts import MsgState
from tests.conftest import Stack, process_config
from tests.support.history import attempts_made
from tests.support.smtpsink import SMTPSink

DOMAINS = ("one.example", "two.example", "three.example")
PER_DOMAIN = 4


def worker_config(stack: Stack, sink: SMTPSink, hostname: str, cap: int) -> str:
    queue = {"backoff_base": "50ms", "max_attempts": 3, "max_concurrent_deliveries": cap}
    return process_config(stack, hostname=hostname, sink=sink, queue=queue)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Any]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config_text: str, name: str) -> None:
        path = tmp_path / f"{name}.toml"
        path.write_text(config_text)
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", "worker", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )

    holder: list[Any] = [start, tmp_path]
    yield holder
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


async def _both_polling(stack: Stack, timeout: float = 120) -> None:
    """Wait until two worker processes poll the stack's task queue for activities (the deliveries)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    request = DescribeTaskQueueRequest(
        namespace=stack.client.namespace,
        task_queue=TaskQueue(name=stack.config.temporal.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    async with asyncio.timeout(timeout):
        while True:
            resp = await stack.client.workflow_service.describe_task_queue(request)
            if len({p.identity for p in resp.pollers}) >= 2:
                return
            await asyncio.sleep(0.2)


async def test_two_worker_processes_keep_one_delivery_per_domain_and_the_global_cap(
    stack_factory: Any, sink: SMTPSink, workers: list[Any]
) -> None:
    stack = await stack_factory(worker=False)
    start, logs = workers
    cap = 2
    start(worker_config(stack, sink, "w1.test", cap), "w1")
    start(worker_config(stack, sink, "w2.test", cap), "w2")
    sink.behaviour.data_delay = 0.25
    # Both workers are polling before anything becomes due (starting a process takes a while on a slow
    # machine; one that came late could find the work done)...
    try:
        await _both_polling(stack)
    except TimeoutError:
        for name in ("w1", "w2"):
            print(name, (logs / f"{name}.log").read_text()[-3000:])
        raise
    # ...and the deliveries are released a little later, together.
    release = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    ids = []
    for i in range(PER_DOMAIN):
        for d in DOMAINS:
            resp = await stack.send_ok(
                {"To": [{"Address": f"r{i}@{d}"}], "Text": "x", "FutureRelease": release}
            )
            ids.append(resp["Submissions"][0]["QueueMsgID"])
    try:
        for msg_id in ids:
            status = await stack.finished(msg_id, timeout=90)
            assert status.msgs[0].state == MsgState.DELIVERED
    except (TimeoutError, AssertionError):
        for name in ("w1", "w2"):
            print(name, (logs / f"{name}.log").read_text()[-3000:])
        raise
    assert len(sink.messages()) == len(DOMAINS) * PER_DOMAIN
    assert sink.max_overlap == {d: 1 for d in DOMAINS}
    assert 1 <= sink.max_overlap_total <= cap
    # Both processes delivered: the exclusion held across processes, not inside one.
    helos = {t.helo for t in sink.messages()}
    assert helos == {"w1.test", "w2.test"}, [(logs / f"{n}.log").read_text()[-2000:] for n in ("w1", "w2")]


async def test_rate_limit_spaces_deliveries_to_a_domain(stack_factory: Any, sink: SMTPSink) -> None:
    # 120 per minute is one start every 0.5 s.
    stack = await stack_factory(rate_limits={"slow.example": 120})
    # Every delivery start to the domain, as the shared lease table grants it to a new attempt. (Not the
    # sink's acceptance times nor the Start the attempt records: each comes a variable while after the
    # grant, a lot on a busy machine, so their gaps can be shorter than the grants' by that much.)
    async with stack.pool.connection() as conn:
        await conn.execute("CREATE TABLE lease_grants (holder text, started timestamptz)")
        await conn.execute(
            """CREATE FUNCTION log_grant() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO lease_grants VALUES (NEW.holder, NEW.last_start);
                    RETURN NEW;
                END $$"""
        )
        await conn.execute(
            """CREATE TRIGGER log_grant AFTER INSERT OR UPDATE ON delivery_leases FOR EACH ROW
               WHEN (NEW.domain = 'slow.example') EXECUTE FUNCTION log_grant()"""
        )
    ids = []
    for i in range(3):
        resp = await stack.send_ok({"To": [{"Address": f"r{i}@slow.example"}], "Text": "x"})
        ids.append(resp["Submissions"][0]["QueueMsgID"])
    await asyncio.gather(*(stack.finished(i, timeout=60) for i in ids))
    assert len(sink.messages()) == 3
    rows = [(await stack.admin("GET", f"/queue/{i}")).json() for i in ids]
    assert [len(row["Results"]) for row in rows] == [1, 1, 1]
    async with stack.pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT holder, started FROM lease_grants ORDER BY started")
        grants = await cur.fetchall()
    # One grant per attempt (a release only moves the expiry), each at least 0.5 s after the one before.
    assert len({g["holder"] for g in grants}) == len(grants) == 3, grants
    gaps = [b["started"] - a["started"] for a, b in zip(grants, grants[1:], strict=False)]
    assert all(g >= timedelta(milliseconds=500) for g in gaps), gaps


async def test_domain_concurrency_lets_a_big_destination_take_several_deliveries(
    stack_factory: Any, sink: SMTPSink
) -> None:
    # Three at once to big.example; other domains keep one at a time.
    stack = await stack_factory(domain_concurrency={"big.example": 3}, max_concurrent_deliveries=10)
    sink.behaviour.data_delay = 1.0
    ids = []
    for i in range(6):
        for domain in ("big.example", "small.example"):
            resp = await stack.send_ok({"To": [{"Address": f"r{i}@{domain}"}], "Text": "x"})
            ids.append(resp["Submissions"][0]["QueueMsgID"])
    statuses = await asyncio.gather(*(stack.finished(i, timeout=90) for i in ids))
    assert all(s.msgs[0].state == MsgState.DELIVERED for s in statuses)
    assert 2 <= sink.max_overlap["big.example"] <= 3
    assert sink.max_overlap["small.example"] == 1


async def test_a_fan_out_over_the_global_cap_makes_few_refused_attempts(
    stack_factory: Any, sink: SMTPSink
) -> None:
    # Twelve domains, two deliveries at a time: each freed slot wakes one waiting domain, not all of them
    # (which made an attempt per waiting domain for every slot: 42 attempts here, thousands for a
    # fan-out to a few hundred domains). A lost wake-up would leave a domain to the one-minute fallback and
    # blow the time limit below.
    stack = await stack_factory(max_concurrent_deliveries=2)
    sink.behaviour.data_delay = 0.1
    domains = [f"d{i:02}.example" for i in range(12)]
    resp = await stack.send_ok({"To": [{"Address": f"r@{d}"} for d in domains], "Text": "x"})
    base_id = resp["Submissions"][0]["QueueMsgID"]
    status = await stack.finished(base_id, timeout=40)
    assert {m.state for m in status.msgs} == {MsgState.DELIVERED}
    assert sink.max_overlap_total <= 2
    attempts = attempts_made([e async for e in stack.handle(base_id).fetch_history_events()])
    print(f"{attempts} attempts for 12 domains")
    assert attempts <= 2 * len(domains) + 4
