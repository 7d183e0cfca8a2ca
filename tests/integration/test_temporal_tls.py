"""Tempost's processes reach a Temporal frontend that requires TLS and a client certificate, and say
clearly why they cannot when a file is missing or the certificate is not trusted.

The frontend is the session's dev server behind a TLS-terminating proxy (tests/support/tlsproxy.py, ALPN
h2) that requires client certificates signed by the test CA: what a self-hosted cluster with mTLS, or
Temporal Cloud's endpoint, looks like to a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from deploy.embedded import free_port
from deploy.serve import serve_api
from domain.config import Config, SecretFileError, TemporalConfig
from tests.conftest import PASSWORD, SENDER
from tests.support.smtpsink import SMTPSink
from tests.support.tlsproxy import TLSProxy
from worker.connect import API_KEY_ENV, TemporalConnectError, temporal_connect_options
from worker.main import connect_temporal, run_worker

ROOT = Path(__file__).resolve().parents[2]


class Files:
    """PEM files of the test CA, a client certificate it signed, and an unrelated CA."""

    def __init__(self, ca: trustme.CA, tmp: Path) -> None:
        self.ca = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        client = ca.issue_cert("tempost-worker@example.org")
        self.cert = tmp / "client.pem"
        client.cert_chain_pems[0].write_to_path(str(self.cert))
        self.key = tmp / "client-key.pem"
        client.private_key_pem.write_to_path(str(self.key))
        self.other_ca = tmp / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> Files:
    return Files(ca, tmp_path)


async def _proxy(env: WorkflowEnvironment, ca: trustme.CA, require_client_cert: bool) -> TLSProxy:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("temporal.test", "127.0.0.1").configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return await TLSProxy(env.client.service_client.config.target_host, context).start()


@pytest.fixture
async def mtls(temporal_env: WorkflowEnvironment, ca: trustme.CA) -> AsyncIterator[TLSProxy]:
    """The dev server behind TLS that requires a client certificate signed by `ca`."""
    proxy = await _proxy(temporal_env, ca, require_client_cert=True)
    yield proxy
    await proxy.stop()


@pytest.fixture
async def tls_only(temporal_env: WorkflowEnvironment, ca: trustme.CA) -> AsyncIterator[TLSProxy]:
    """The dev server behind TLS without client certificates (as Temporal Cloud with API keys)."""
    proxy = await _proxy(temporal_env, ca, require_client_cert=False)
    yield proxy
    await proxy.stop()


def _config(base: Config, proxy: TLSProxy, **temporal: Any) -> Config:
    settings = {"address": proxy.address, "tls_server_name": "temporal.test", **temporal}
    return base.model_copy(update={"temporal": base.temporal.model_copy(update=settings)})


async def test_a_worker_and_the_api_deliver_over_mtls(
    stack_factory: Any, mtls: TLSProxy, files: Files, sink: SMTPSink
) -> None:
    stack = await stack_factory(worker=False)
    api_port = free_port()
    config = _config(
        stack.config,
        mtls,
        tls_ca_file=str(files.ca),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
    )
    config = config.model_copy(
        update={"api": config.api.model_copy(update={"listen": f"127.0.0.1:{api_port}"})}
    )
    stop, api_ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(config, stop))
    api = asyncio.create_task(serve_api(config, stop, api_ready))
    try:
        await asyncio.wait_for(api_ready.wait(), 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http:
            request = {"To": [{"Address": "bob@example.com"}], "Subject": "over mTLS", "Text": "hi"}
            r = await http.post(
                "/webapi/v0/Send", data={"request": json.dumps(request)}, auth=(SENDER, PASSWORD)
            )
            assert r.status_code == 200, r.text
        async with asyncio.timeout(60):
            while "bob@example.com" not in sink.delivered_to():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(worker, api, return_exceptions=True)
    # Both processes' connections went through the proxy's client-certificate check.
    assert mtls.handshakes >= 2


async def test_without_the_client_certificate_the_error_says_so(
    stack_factory: Any, mtls: TLSProxy, files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await stack_factory(worker=False)
    config = _config(stack.config, mtls, tls_ca_file=str(files.ca))
    with pytest.raises(TemporalConnectError, match="requires a client certificate it trusts"):
        await connect_temporal(config)
    # The API keeps listening, not ready, and logs why on each try.
    api_port = free_port()
    config = config.model_copy(
        update={"api": config.api.model_copy(update={"listen": f"127.0.0.1:{api_port}"})}
    )
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="tempost.api")
    api = asyncio.create_task(serve_api(config, stop))
    try:
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as http:
            while "requires a client certificate" not in caplog.text:
                await asyncio.sleep(0.1)
            ready = await http.get(f"http://127.0.0.1:{api_port}/readyz")
        assert ready.status_code == 503
        line = next(r.getMessage() for r in caplog.records if "client certificate" in r.getMessage())
        assert line.startswith(f"waiting for Temporal at {mtls.address}: the server closed the connection")
    finally:
        stop.set()
        await asyncio.gather(api, return_exceptions=True)


async def test_an_untrusted_server_certificate_is_named(
    stack_factory: Any, mtls: TLSProxy, files: Files
) -> None:
    stack = await stack_factory(worker=False)
    config = _config(
        stack.config,
        mtls,
        tls_ca_file=str(files.other_ca),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
    )
    with pytest.raises(TemporalConnectError, match="certificate is not trusted .temporal.tls_ca_file"):
        await connect_temporal(config)


async def test_a_wrong_server_name_is_named(stack_factory: Any, mtls: TLSProxy, files: Files) -> None:
    stack = await stack_factory(worker=False)
    config = _config(
        stack.config,
        mtls,
        tls_ca_file=str(files.ca),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
        tls_server_name="elsewhere.test",
    )
    with pytest.raises(TemporalConnectError, match="not valid for this name .temporal.tls_server_name"):
        await connect_temporal(config)


async def test_plain_connection_to_a_tls_frontend_suggests_tls(stack_factory: Any, mtls: TLSProxy) -> None:
    stack = await stack_factory(worker=False)
    config = stack.config.model_copy(
        update={"temporal": stack.config.temporal.model_copy(update={"address": mtls.address})}
    )
    with pytest.raises(TemporalConnectError, match="may require TLS .temporal.tls"):
        await connect_temporal(config)


def test_a_worker_with_an_unreadable_key_file_exits_with_one_line(
    database: str, tmp_path: Path, files: Files
) -> None:
    missing = tmp_path / "missing-key.pem"
    config = tmp_path / "tempost.toml"
    config.write_text(
        f"""[database]
url = "{database}"
[temporal]
address = "127.0.0.1:{free_port()}"
tls_cert_file = "{files.cert}"
tls_key_file = "{missing}"
[worker]
metrics_listen = ""
"""
    )
    run = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "worker", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"tempost: temporal.tls_key_file {missing}: cannot read: No such file or directory"
    )


async def test_the_api_key_reaches_the_client_and_the_environment_wins(
    stack_factory: Any, tls_only: TLSProxy, files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(worker=False)
    key_file = tmp_path / "api-key"
    key_file.write_text("key-from-file\n")
    config = _config(stack.config, tls_only, tls_ca_file=str(files.ca), api_key_file=str(key_file))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    client = await connect_temporal(config)
    assert client.api_key == "key-from-file"
    assert client.service_client.config.rpc_metadata == {"temporal-namespace": config.temporal.namespace}
    # The connection is real: the frontend answers through TLS.
    await client.count_workflows()
    monkeypatch.setenv(API_KEY_ENV, "key-from-env")
    assert (await connect_temporal(config)).api_key == "key-from-env"


def test_connect_options() -> None:
    assert temporal_connect_options(TemporalConfig(), {}) == {"namespace": "default", "tls": False}
    # An API key alone turns TLS on (system trust store); it is never sent in plaintext.
    options = temporal_connect_options(TemporalConfig(namespace="ns.acct"), {API_KEY_ENV: " k1 \n"})
    assert options == {
        "namespace": "ns.acct",
        "tls": TLSConfig(),
        "api_key": "k1",
        "rpc_metadata": {"temporal-namespace": "ns.acct"},
    }
    assert temporal_connect_options(TemporalConfig(tls=True), {})["tls"] == TLSConfig()
    named = temporal_connect_options(TemporalConfig(tls_server_name="frontend.internal"), {})
    assert named["tls"] == TLSConfig(domain="frontend.internal")


def test_unreadable_or_wrong_files_name_their_setting(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=f"temporal.tls_ca_file {tmp_path}/nope.pem: cannot read"):
        temporal_connect_options(TemporalConfig(tls_ca_file=str(tmp_path / "nope.pem")), {})
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(SecretFileError, match="temporal.tls_ca_file .*: not a PEM file"):
        temporal_connect_options(TemporalConfig(tls_ca_file=str(not_pem)), {})
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(SecretFileError, match="temporal.api_key_file .*: empty"):
        temporal_connect_options(TemporalConfig(api_key_file=str(empty)), {})
    with pytest.raises(ValueError, match="both tls_cert_file and tls_key_file"):
        TemporalConfig(tls_cert_file="/x.pem")
