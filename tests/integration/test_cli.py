"""The `tempost queue ...` and `tempost send` commands against a running API (spec 04 §5).

The API listens on a real loopback port; each command runs as its own process, finding the API and the
admin token in the environment, as an operator's shell would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.app import create_app
from domain.contracts import MsgState
from tests.conftest import ADMIN_TOKEN, PASSWORD, SENDER, Stack
from tests.support.served import serving


@pytest.fixture
async def served(stack_factory: Any) -> AsyncIterator[tuple[Stack, str]]:
    stack = await stack_factory()
    async with serving(create_app(stack.config, stack.client, stack.pool)) as url:
        yield stack, url


async def tempost(url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPOST_API_URL": url, "TEMPOST_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    result = subprocess.CompletedProcess(list(args), proc.returncode or 0, out.decode(), err.decode())
    if ok:
        assert result.returncode == 0, result.stderr
    return result


async def test_list_hold_release_and_dump(served: tuple[Stack, str]) -> None:
    stack, url = served
    out = (await tempost(url, "queue", "list")).stdout
    assert out.strip() == "(none)"
    await tempost(url, "queue", "holdrules", "add", "--recipientdom", "example.com")
    assert 'recipient domain "example.com"' in (await tempost(url, "queue", "holdrules", "list")).stdout
    sent = await tempost(
        url, "send", "--user", SENDER, "--password", PASSWORD, "--subject", "cli test", "a@example.com"
    )
    msg_id = int(sent.stdout.splitlines()[1].rsplit(" ", 1)[1])
    table = (await tempost(url, "queue", "list", "--to", "@example.com")).stdout
    assert str(msg_id) in table and "held" in table and "a@example.com" in table
    as_json = json.loads((await tempost(url, "queue", "list", "--json")).stdout)
    assert [m["ID"] for m in as_json] == [msg_id]
    dump = (await tempost(url, "queue", "dump", str(msg_id))).stdout
    assert "Subject: cli test" in dump
    # An empty filter needs --all: a bulk operation on every message is never an accident.
    refused = await tempost(url, "queue", "release", ok=False)
    assert refused.returncode == 1 and "--all" in refused.stderr
    released = await tempost(url, "queue", "release", "--ids", str(msg_id))
    assert released.stdout.strip() == "1 message(s) released"
    # Progress goes to stderr, so stdout stays clean for scripts.
    assert "release: 1 matching message(s)" in released.stderr and "done in" in released.stderr
    assert (await stack.finished(msg_id)).msgs[0].state == MsgState.DELIVERED
    retired = (await tempost(url, "queue", "retired", "list")).stdout
    assert str(msg_id) in retired and "success" in retired


async def test_schedule_fail_suppress_and_errors(served: tuple[Stack, str]) -> None:
    stack, url = served
    await tempost(url, "queue", "holdrules", "add")
    sent = await tempost(url, "send", "--user", SENDER, "--password", PASSWORD, "b@example.com")
    msg_id = int(sent.stdout.splitlines()[1].rsplit(" ", 1)[1])
    moved = await tempost(url, "queue", "schedule", "--ids", str(msg_id), "--now", "1h")
    assert moved.stdout.strip() == "1 message(s) rescheduled"
    listed = json.loads((await tempost(url, "queue", "list", "--json", "--nextattempt", ">50m")).stdout)
    assert [m["ID"] for m in listed] == [msg_id]
    failed = await tempost(url, "queue", "fail", "--ids", str(msg_id))
    assert failed.stdout.strip() == "1 message(s) marked as failed"
    assert (await stack.finished(msg_id)).msgs[0].state == MsgState.FAILED

    await tempost(url, "queue", "suppress", "add", "alice", "X.Y+news@example.com")
    assert "xy@example.com" in (await tempost(url, "queue", "suppress", "list")).stdout
    lookup = await tempost(url, "queue", "suppress", "lookup", "--account", "alice", "xy@example.com")
    assert lookup.stdout.strip() == "present"
    await tempost(url, "queue", "suppress", "remove", "alice", "xy@example.com")
    gone = await tempost(url, "queue", "suppress", "remove", "alice", "xy@example.com", ok=False)
    assert gone.returncode == 1 and "notFound" in gone.stderr
    bad = await tempost(url, "queue", "list", "--submitted", "1h", ok=False)
    assert bad.returncode == 1 and "badFilter" in bad.stderr
    assert "(none)" in (await tempost(url, "queue", "webhook", "list")).stdout
    unauthorized = await tempost(url, "queue", "list", "--token", "wrong", ok=False)
    assert unauthorized.returncode == 1 and "unauthorized" in unauthorized.stderr
