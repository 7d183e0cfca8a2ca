"""The embedded default keeps its state across restarts (issue 2: `tempost dev` stops and starts again)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from temporalio.client import Client

from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port


def test_postgres_keeps_rows_across_restart(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port(), database="keep", fsync=False)
    url = pg.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v text)")
            conn.execute("INSERT INTO t VALUES ('queued mail')")
    finally:
        pg.stop()
    # A second server over the same directory finds the database and the row.
    pg2 = EmbeddedPostgres(tmp_path / "pg", pg.port, database="keep", fsync=False)
    url = pg2.start()
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT v FROM t").fetchone()
        assert row == ("queued mail",)
    finally:
        pg2.stop()


async def test_temporal_dev_server_keeps_workflows_across_restart(tmp_path: Path) -> None:
    port = free_port()
    server = TemporalDevServer(
        tmp_path / "temporal.db", port=port, ui_port=free_port(), log_file=tmp_path / "temporal.log"
    )
    server.start()
    try:
        client = await Client.connect(server.address)
        # A workflow that no worker runs stays open: exactly the state of queued mail at shutdown.
        await client.start_workflow("NoSuchWorkflow", id="persisted", task_queue="nobody")
    finally:
        server.stop()
    server.start()
    try:
        client = await Client.connect(server.address)
        desc = await client.get_workflow_handle("persisted").describe()
        assert desc.status is not None and desc.status.name == "RUNNING"
    finally:
        server.stop()
