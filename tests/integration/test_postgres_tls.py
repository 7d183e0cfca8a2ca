"""PostgreSQL over TLS through the URL (sslmode=verify-full, sslrootcert) with the password from a file.

The embedded PostgreSQL's binaries are built without SSL ("SSL is not supported by this build"), so the
server side of TLS is PostgreSQL's own negotiation in a proxy in front of it (tests/support/tlsproxy.py)
that closes every connection not asking for TLS; libpq, psycopg and Tempost's settings are the real ones.
The role Tempost connects as needs its password (scram-sha-256).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import trustme

from deploy.embedded import EmbeddedPostgres, free_port
from domain.config import DatabaseConfig, SecretFileError
from store import db
from tests.support.tlsproxy import TLSProxy

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pg-tls-test-password"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """PostgreSQL where role tempost must give its password."""
    data = tmp_path_factory.mktemp("pgtls") / "data"
    port = free_port()
    server = EmbeddedPostgres(data, port, fsync=False, log_file=data.parent / "pg.log")
    server.start()
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE tempost LOGIN PASSWORD '{PASSWORD}'")  # type: ignore[arg-type]
        conn.execute("ALTER DATABASE tempost OWNER TO tempost")
    server.stop()
    # The superuser keeps trust for the embedded server's own readiness check.
    (data / "pg_hba.conf").write_text(
        "host all postgres 127.0.0.1/32 trust\nhost all tempost 127.0.0.1/32 scram-sha-256\n"
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def tls_postgres(postgres: EmbeddedPostgres, ca: trustme.CA) -> AsyncIterator[TLSProxy]:
    """The server behind TLS: only connections that negotiate TLS get through."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    proxy = await TLSProxy(f"127.0.0.1:{postgres.port}", context, postgres=True).start()
    yield proxy
    await proxy.stop()


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


async def test_verify_full_with_the_right_ca_migrates_and_pools_over_tls(
    tls_postgres: TLSProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    database = _database(tls_postgres, tmp_path, f"sslmode=verify-full&sslrootcert={_ca_file(ca, tmp_path)}")
    await db.migrate(db.conninfo(database))
    pool = await db.open_pool(db.conninfo(database), 1, 2)
    try:
        async with pool.connection() as conn:
            # libpq's own view: the session is encrypted, with a verified server certificate.
            assert conn.pgconn.ssl_in_use
            assert (await (await conn.execute("SELECT count(*) AS n FROM schema_migrations")).fetchone())["n"]
    finally:
        await pool.close()
    assert tls_postgres.handshakes >= 2


async def test_an_untrusted_server_certificate_is_refused(tls_postgres: TLSProxy, tmp_path: Path) -> None:
    other = _ca_file(trustme.CA(), tmp_path, "other-ca.pem")
    database = _database(tls_postgres, tmp_path, f"sslmode=verify-full&sslrootcert={other}")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await db.probe(db.conninfo(database))


async def test_without_tls_or_with_a_wrong_password_the_server_refuses(
    tls_postgres: TLSProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    refused = tls_postgres.refused
    with pytest.raises(psycopg.OperationalError):
        await db.probe(db.conninfo(_database(tls_postgres, tmp_path, "sslmode=disable")))
    assert tls_postgres.refused == refused + 1
    wrong = _database(
        tls_postgres, tmp_path, f"sslmode=verify-full&sslrootcert={_ca_file(ca, tmp_path)}", "nope"
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await db.probe(db.conninfo(wrong))


def test_an_unreadable_password_file_names_the_setting_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "db-password"
    database = DatabaseConfig(url="postgresql://tempost@127.0.0.1:1/tempost", password_file=str(missing))
    with pytest.raises(SecretFileError, match=f"database.password_file {missing}: cannot read"):
        db.conninfo(database)
    config = tmp_path / "tempost.toml"
    config.write_text(f'[database]\nurl = "{database.url}"\npassword_file = "{missing}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "migrate", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == f"tempost: database.password_file {missing}: cannot read: No such file or directory"
    )
