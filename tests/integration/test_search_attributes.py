"""Search attributes an operator filters on in the Temporal UI (DESIGN §3; spec 04 issue 5 §4).

The same query strings the README shows go through the client's list API, which is what the UI uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from domain.contracts import delivery_workflow_id
from store import db
from tests.conftest import ADMIN_TOKEN, TEMPORAL_BIN, Stack, make_config
from tests.support.smtpsink import SMTPSink
from worker.main import run_worker
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


async def test_where_the_worker_may_not_add_them_it_names_the_commands_and_delivers(
    database: str, sink: SMTPSink, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A namespace whose Int attributes are used up (SQL visibility allows 3): the worker's request to add
    # Tempost's six is refused, as on Temporal Cloud where workers may not add any.
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL_BIN,
        search_attributes=[SearchAttributeKey.for_int(f"OtherCount{i}") for i in range(3)],
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    monkeypatch.setenv("TEMPOST_ADMIN_TOKEN", ADMIN_TOKEN)
    config = make_config(database, sink)
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="tempost.worker")
    worker = asyncio.create_task(run_worker(config, stop, env.client))
    pool = await db.open_pool(database, 1, 3)
    try:
        async with asyncio.timeout(30):
            while "Create them with" not in caplog.text:
                assert not worker.done(), worker.exception()
                await asyncio.sleep(0.1)
        ns = config.temporal.namespace
        for name, kind in searchattrs.CLI_TYPES.items():
            assert (
                f"temporal operator search-attribute create --namespace {ns} --name {name} --type {kind}"
                in caplog.text
            )
        tcld = next(line for line in caplog.text.splitlines() if "tcld" in line).strip()
        assert tcld.startswith(f"tcld namespace search-attributes add --namespace {ns} --search-attribute ")
        assert '--search-attribute "TempostRcptDomains=KeywordList"' in tcld
        app = create_app(config, env.client, pool)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            stack = Stack(config, env.client, pool, http, sink)
            resp = await stack.send_ok({"To": [{"Address": "a@example.com"}], "Text": "x"})
            base_id = resp["Submissions"][0]["QueueMsgID"]
            status = await stack.finished(base_id, timeout=60)
        assert "a@example.com" in sink.delivered_to()
        assert status is not None
        # The workflow knew which attributes exist and set none of the missing ones.
        described = await env.client.get_workflow_handle(delivery_workflow_id(base_id)).describe()
        assert not any(p.key.name.startswith("Tempost") for p in described.typed_search_attributes)
    finally:
        stop.set()
        await asyncio.gather(worker, return_exceptions=True)
        await pool.close()
        await env.shutdown()
