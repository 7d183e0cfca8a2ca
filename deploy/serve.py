"""Running Tempost's long-lived processes: the API server, the worker, or both in one process.

The parts of a deployment start in any order (systemd, compose, Kubernetes): a process whose PostgreSQL or
Temporal is not reachable yet waits for it, retrying with backoff and logging one line per retry, and the
API listens meanwhile so that /healthz answers and /readyz says what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

import psycopg
import uvicorn
from temporalio.client import Client
from temporalio.service import RPCError

from api.app import create_app
from api.state import AppState
from domain.config import Config
from store import db
from worker.main import connect_temporal, run_worker

log = logging.getLogger("tempost")

T = TypeVar("T")

# Waiting for a part that is not reachable: the first retry after half a second, doubling up to ten.
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
# What a part that is down (or still starting) raises; anything else is a bug or a configuration error
# and stops the process.
POSTGRES_DOWN: tuple[type[Exception], ...] = (psycopg.OperationalError,)
TEMPORAL_DOWN: tuple[type[Exception], ...] = (RuntimeError, RPCError, OSError)


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


def _reason(err: BaseException) -> str:
    """One short line saying why a connection failed (the first line of the error)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0][:300] if lines else "") or type(err).__name__


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """(True, result) of `work`, or (False, None) once `stop` is set first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False, None
    return True, task.result()


async def until_reachable(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    down: tuple[type[Exception], ...],
    stop: asyncio.Event,
    logger: logging.Logger = log,
) -> T | None:
    """The result of `attempt` once it succeeds, or None when `stop` is set first.

    Failures of the kinds in `down` mean the part is not reachable (yet): each is logged as one line,
    without a traceback, and retried with capped exponential backoff.
    """
    delay = RETRY_FIRST
    while not stop.is_set():
        try:
            done, result = await _unless_stopped(attempt(), stop)
        except down as err:
            logger.warning("waiting for %s: %s; next try in %.1fs", what, _reason(err), delay)
        else:
            if not done:
                return None
            if delay > RETRY_FIRST:
                logger.info("%s is reachable", what)
            return result
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RETRY_MAX)
    return None


async def reach_postgres_and_temporal(config: Config, stop: asyncio.Event) -> Client | None:
    """Wait for PostgreSQL, bring the schema up to date, then wait for Temporal and return its client.

    None when `stop` is set first.
    """
    url = db.conninfo(config.database)
    worker_log = logging.getLogger("tempost.worker")
    migrated = await until_reachable(
        f"PostgreSQL at {db.server_name(url)}", lambda: db.migrate(url), POSTGRES_DOWN, stop, worker_log
    )
    if migrated is None:
        return None
    if migrated:
        worker_log.info("applied migrations %s", ", ".join(migrated))
    return await until_reachable(
        f"Temporal at {config.temporal.address}",
        lambda: connect_temporal(config),
        TEMPORAL_DOWN,
        stop,
        worker_log,
    )


async def serve_worker(config: Config, stop: asyncio.Event) -> None:
    """Once PostgreSQL and Temporal are reachable, bring the schema up to date and run a worker until
    `stop` is set."""
    client = await reach_postgres_and_temporal(config, stop)
    if client is not None:
        await run_worker(config, stop, client)


async def _connect_api(
    config: Config, state: AppState, stop: asyncio.Event, client: asyncio.Future[Client] | None
) -> None:
    """Hand the API its PostgreSQL pool and its Temporal client as each becomes reachable."""
    api_log = logging.getLogger("tempost.api")
    url = db.conninfo(config.database)

    async def open_pool() -> db.Pool:
        # A probe first: the pool's own retries would wait 30s per try and log in their own words.
        await db.probe(url)
        return await db.open_pool(url, config.database.pool_min, config.database.pool_max)

    async def pool() -> None:
        state.connected_pool = await until_reachable(
            f"PostgreSQL at {db.server_name(url)}", open_pool, POSTGRES_DOWN, stop, api_log
        )

    async def temporal() -> None:
        if client is not None:
            # The worker in this process connects; the API shares its client.
            state.connected_client = await client
            return
        state.connected_client = await until_reachable(
            f"Temporal at {config.temporal.address}",
            lambda: connect_temporal(config),
            TEMPORAL_DOWN,
            stop,
            api_log,
        )

    await asyncio.gather(pool(), temporal())


async def serve_api(
    config: Config,
    stop: asyncio.Event,
    started: asyncio.Event | None = None,
    client: asyncio.Future[Client] | None = None,
) -> None:
    """Serve the HTTP API until `stop` is set: listening at once, ready once PostgreSQL and Temporal are.

    `started` is set when the API is ready. `client` is the Temporal client of a worker in the same
    process, when it has one.
    """
    app = create_app(config)
    state: AppState = app.state.tempost
    connecting = asyncio.create_task(_connect_api(config, state, stop, client))
    try:
        host, port = _host_port(config.api.listen)
        server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper, connecting}, return_when=asyncio.FIRST_COMPLETED)
        if connecting.done():
            if connecting.exception() is not None:
                stop.set()
            elif started is not None and not stop.is_set():
                while not server.started and not task.done():
                    await asyncio.sleep(0.05)
                started.set()
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        # Requests in flight are answered before the server returns.
        server.should_exit = True
        await task
        stopper.cancel()
    finally:
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        if state.connected_pool is not None:
            await state.connected_pool.close()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is not None:
        raise connecting.exception()  # type: ignore[misc]


async def serve_all(config: Config, stop: asyncio.Event, api_started: asyncio.Event | None = None) -> None:
    """The worker and the API in one process, as `tempost dev` runs them."""
    # One client for both: a workflow the API starts is handed straight to this worker (eager start),
    # saving the round trip through the task queue.
    client: asyncio.Future[Client] = asyncio.get_running_loop().create_future()

    async def worker() -> None:
        reached = await reach_postgres_and_temporal(config, stop)
        if reached is None:
            return
        client.set_result(reached)
        await run_worker(config, stop, reached)

    worker_task = asyncio.create_task(worker())
    api = asyncio.create_task(serve_api(config, stop, api_started, client))
    done, _ = await asyncio.wait({worker_task, api}, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception() is not None:
            stop.set()
    await asyncio.gather(worker_task, api, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
