"""Metrics an operator scrapes: queue gauges on the API, delivery and webhook counters, the SDK's own."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from deploy.embedded import free_port
from tests.conftest import Stack
from tests.support.metricnames import SDK_METRICS
from worker.main import build_worker, connect_temporal


def sample(text: str, name: str) -> float | None:
    """The value of one sample line (name with labels) in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_queue_gauges_by_state_and_delivery_counters(stack: Stack) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    resp = await stack.send_ok({"To": [{"Address": "a@example.com"}], "Text": "x", "FutureRelease": tomorrow})
    later_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.admin("POST", f"/queue/{later_id}/hold")
    resp = await stack.send_ok({"To": [{"Address": "b@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    text = (await stack.http.get("/metrics")).text
    assert sample(text, 'tempost_queue_messages{state="held"}') == 1
    assert sample(text, "tempost_queue_hold") == 1
    assert sample(text, 'tempost_queue_messages{state="due"}') == 0
    assert (sample(text, 'tempost_queue_oldest_seconds{state="held"}') or 0) > 0
    assert sample(text, "tempost_webhook_queue_messages") == 0
    # The worker runs in this process in tests, so its delivery metrics are in the same registry.
    assert "tempost_queue_delivery_duration_seconds_bucket" in text
    assert 'result="ok"' in text


async def test_temporal_sdk_metrics_on_their_own_port(stack_factory: Any) -> None:
    stack = await stack_factory(worker=False, backoff_base="1s")
    port = free_port()
    cfg = stack.config.model_copy(
        update={
            "temporal": stack.config.temporal.model_copy(
                update={"address": stack.client.service_client.config.target_host}
            ),
            "worker": stack.config.worker.model_copy(update={"sdk_metrics_listen": f"127.0.0.1:{port}"}),
        }
    )
    client = await connect_temporal(cfg)
    async with build_worker(client, stack.pool, cfg):
        # The first attempt runs as a local activity, the retry after its temporary failure as a regular
        # one: both kinds of activity metrics are exported.
        stack.sink.behaviour.temp_failures = 1
        resp = await stack.send_ok({"To": [{"Address": "a@example.com"}], "Text": "x"})
        await stack.finished(resp["Submissions"][0]["QueueMsgID"], timeout=60)
        async with asyncio.timeout(60), httpx.AsyncClient() as http:
            while True:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                if "temporal_activity_execution_latency_count" in text:
                    break
                await asyncio.sleep(0.2)
    # The SDK's own series, in Prometheus text format, apart from Tempost's metrics.
    assert "temporal_request" in text and "tempost_queue" not in text
    # Every SDK metric the dashboard and the alert rules may use is exported under that name.
    exported = {
        re.sub(r"_(bucket|count|sum)$", "", line.split("{")[0].split(" ")[0])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert SDK_METRICS <= exported, sorted(SDK_METRICS - exported)
    # Durations are seconds, as the panels' units say: a loopback SMTP delivery takes well under one.
    count = sum(_samples(text, "temporal_activity_execution_latency_count"))
    total = sum(_samples(text, "temporal_activity_execution_latency_sum"))
    assert count >= 1 and 0 < total / count < 1.0, (total, count)


def _samples(text: str, name: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
