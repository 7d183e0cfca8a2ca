"""Running Tempost's long-lived processes: the API server, the worker, or both in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn
from temporalio.client import Client

from api.app import create_app
from domain.config import Config
from store import db
from worker.main import connect_temporal, run_worker

log = logging.getLogger("tempost")


class _Server(uvicorn.Server):
    # The caller owns SIGINT/SIGTERM so that Ctrl-C stops the API, the worker and the children in order.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve_worker(config: Config, stop: asyncio.Event) -> None:
    """Bring the schema up to date, then run a worker until `stop` is set."""
    await db.migrate(config.database.url)
    await run_worker(config, stop)


async def serve_api(
    config: Config, stop: asyncio.Event, started: asyncio.Event | None = None, client: Client | None = None
) -> None:
    """Serve the HTTP API until `stop` is set."""
    client = client or await connect_temporal(config)
    pool = await db.open_pool(config.database.url, config.database.pool_min, config.database.pool_max)
    try:
        app = create_app(config, client, pool)
        host, port = _host_port(config.api.listen)
        server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if started is not None:
            started.set()
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await task
        stopper.cancel()
    finally:
        await pool.close()


async def serve_all(config: Config, stop: asyncio.Event, api_started: asyncio.Event | None = None) -> None:
    """The worker and the API in one process, as `tempost dev` runs them."""
    await db.migrate(config.database.url)
    # One client for both: a workflow the API starts is handed straight to this worker (eager start),
    # saving the round trip through the task queue.
    client = await connect_temporal(config)
    worker = asyncio.create_task(run_worker(config, stop, client))
    api = asyncio.create_task(serve_api(config, stop, api_started, client))
    done, _ = await asyncio.wait({worker, api}, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception() is not None:
            stop.set()
    await asyncio.gather(worker, api, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
