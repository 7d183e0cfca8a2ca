"""Serving an ASGI app over real HTTP on a loopback port, for tests that need a socket (mox's client,
schemathesis, the CLI) rather than an in-process transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from deploy.embedded import free_port


@contextlib.asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port while the block runs; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    task = asyncio.create_task(server.serve())
    try:
        # Started, or failed to (its port taken meanwhile): not a wait without end.
        async with asyncio.timeout(60):
            while not server.started:
                assert not task.done(), "the API did not start serving"
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
