"""`tempost serve`: a worker and the API in one process, from a configuration file, logging JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from deploy.embedded import free_port
from domain.passwords import hash_password
from tests.conftest import PASSWORD, SENDER, process_config


def _delivered_lines(log: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == "delivered"]


async def test_serve_accepts_mail_and_delivers_it(stack_factory: Any, tmp_path: Path) -> None:
    # The stack provides PostgreSQL, Temporal and the sink; the process under test is the only worker.
    stack = await stack_factory(worker=False)
    port = free_port()
    path = tmp_path / "tempost.toml"
    extra = f"""[api]
listen = "127.0.0.1:{port}"
admin_token_file = ""
[[accounts]]
name = "alice"
addresses = ["{SENDER}"]
password_hash = "{hash_password(PASSWORD, iterations=1000)}"
"""
    path.write_text(process_config(stack, hostname="serve.test", extra=extra))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TEMPOST_LOG_FORMAT": "json"},
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with asyncio.timeout(60):
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            req = '{"To": [{"Address": "bob@example.com"}], "Subject": "served", "Text": "hello"}'
            r = await http.post("/webapi/v0/Send", data={"request": req}, auth=(SENDER, PASSWORD))
            assert r.status_code == 200, r.text
            async with asyncio.timeout(60):
                while stack.sink.delivered_to() != ["bob@example.com"]:
                    await asyncio.sleep(0.05)
        # The same process's worker took the delivery: its hostname greeted the sink.
        assert stack.sink.messages()[0].helo == "serve.test"
        # ...and wrote the mail log line for it, as JSON.
        async with asyncio.timeout(30):
            while not (lines := _delivered_lines(log)):
                await asyncio.sleep(0.05)
        [line] = lines
        assert line["to"] == "bob@example.com" and line["from"] == SENDER and line["attempt"] == 1
        assert line["code"] == 250 and line["level"] == "info" and line["logger"] == "tempost.delivery"
        assert line["relay"] == f"[{stack.sink.host}]:{stack.sink.port}"
    finally:
        proc.terminate()
        proc.wait(20)
