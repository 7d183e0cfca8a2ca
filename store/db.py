"""Connection pool and schema migrations for the PostgreSQL system of record."""

from __future__ import annotations

import importlib.resources
import select

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from domain.config import DatabaseConfig

Conn = AsyncConnection[DictRow]
"""A connection whose rows are dicts keyed by column name."""
Pool = AsyncConnectionPool[Conn]
"""The pool every component shares; its connections are `Conn`."""

# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 7_314_159

# The pool retries a failed connection with a backoff that doubles from 1s; after this many seconds it
# gives up that attempt and the next request starts a fresh one at once. So after PostgreSQL comes back
# the first request connects right away instead of waiting out a backoff grown during a long outage.
RECONNECT_GIVE_UP = 10.0
# How long a request waits for a connection. Requests hold one for milliseconds, so a longer wait means
# PostgreSQL is away: better to answer 503 soon than to hold the caller for the pool's default 30s.
CONNECTION_WAIT = 10.0


async def open_pool(url: str, min_size: int = 1, max_size: int = 10) -> Pool:
    """Open a pool whose connections return rows as dicts.

    Every connection is checked as it leaves the pool: one that died with its server (a PostgreSQL
    restart, a failover) is replaced there, instead of failing the request that got it.
    """
    pool = AsyncConnectionPool(
        url,
        connection_class=Conn,
        min_size=min_size,
        max_size=max_size,
        # Autocommit: a single statement is one round trip, not BEGIN, statement, COMMIT. Every use of
        # more than one statement that must hold together says so with conn.transaction().
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=_check_idle_connection,
        reconnect_timeout=RECONNECT_GIVE_UP,
        timeout=CONNECTION_WAIT,
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def _check_idle_connection(conn: Conn) -> None:
    """Raise if a connection leaving the pool is unusable, with a round trip only when in doubt.

    An idle connection has nothing to read. A server that went away (restart, failover, a killed backend)
    left an end-of-file or an error message on the socket, so a readable socket, or a connection psycopg
    already knows is broken, gets the full check. A round trip for every connection taken from the pool
    was a tenth of PostgreSQL's work per delivered message.
    """
    if not conn.closed and conn.pgconn.status == psycopg.pq.ConnStatus.OK:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
        if not readable:
            return
    await AsyncConnectionPool.check_connection(conn)


def conninfo(database: DatabaseConfig) -> str:
    """The connection string of the configured database: its URL, with the password from password_file.

    TLS settings stay the URL's own (sslmode=verify-full, sslrootcert, sslcert, sslkey: libpq's names).
    """
    password = database.password()
    return make_conninfo(database.url, password=password) if password else database.url


def server_name(url: str) -> str:
    """Where a connection URL points, as host:port/database: for logs, so without user or password."""
    info = conninfo_to_dict(url)
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


async def probe(url: str) -> None:
    """Connect once and disconnect; raises psycopg.OperationalError while PostgreSQL is unreachable."""
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=10):
        pass


def _migrations() -> list[tuple[int, str, str]]:
    files = importlib.resources.files("store").joinpath("migrations")
    out = []
    for f in files.iterdir():
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.name, f.read_text()))
    return sorted(out)


async def migrate(url: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; returns the names applied.

    An advisory lock serialises concurrent migrators (several workers starting at once).
    """
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INT PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {r[0] for r in await cur.fetchall()}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)  # type: ignore[arg-type]
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied
