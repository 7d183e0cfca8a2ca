"""Tempost's processes reach a Temporal frontend that requires TLS and a client certificate or an API key,
and say clearly why they cannot when a file is missing, the certificate is not trusted or the key refused.

The frontend is the session's dev server behind a TLS-terminating proxy (tests/support/tlsproxy.py, ALPN
h2) that requires client certificates signed by the test CA, what a self-hosted cluster with mTLS looks
like to a client; or, like Temporal Cloud's endpoint, that answers every gRPC request without
`authorization: Bearer <key>` with UNAUTHENTICATED (tests/support/h2gate.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
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
from worker.connect import (
    API_KEY_ENV,
    TemporalConnectError,
    TemporalCredentialsError,
    connect_error,
    temporal_connect_options,
)
from worker.main import connect_temporal, run_worker

ROOT = Path(__file__).resolve().parents[2]
# The key the API-key proxy wants; long and unusual, so that finding it in any output means a leak.
API_KEY = "tpk-7Hq2xVb9Lr4Kd0Wm.Zs8Nc1Fy6Gt3"


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


async def _proxy(
    env: WorkflowEnvironment, ca: trustme.CA, require_client_cert: bool, api_key: str = ""
) -> TLSProxy:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("temporal.test", "127.0.0.1").configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    upstream = env.client.service_client.config.target_host
    return await TLSProxy(upstream, context, api_key=api_key).start()


@pytest.fixture
async def mtls(temporal_env: WorkflowEnvironment, ca: trustme.CA) -> AsyncIterator[TLSProxy]:
    """The dev server behind TLS that requires a client certificate signed by `ca`."""
    proxy = await _proxy(temporal_env, ca, require_client_cert=True)
    yield proxy
    await proxy.stop()


@pytest.fixture
async def cloud(temporal_env: WorkflowEnvironment, ca: trustme.CA) -> AsyncIterator[TLSProxy]:
    """The dev server behind TLS that wants API_KEY on every request, as Temporal Cloud with API keys."""
    proxy = await _proxy(temporal_env, ca, require_client_cert=False, api_key=API_KEY)
    yield proxy
    await proxy.stop()


def _config(base: Config, proxy: TLSProxy, **temporal: Any) -> Config:
    settings = {"address": proxy.address, "tls_server_name": "temporal.test", **temporal}
    return base.model_copy(update={"temporal": base.temporal.model_copy(update=settings)})


async def _deliver(config: Config, sink: SMTPSink, subject: str) -> None:
    """Run a worker and the API from `config`, send one message through the API and see it delivered."""
    api_port = free_port()
    config = config.model_copy(
        update={"api": config.api.model_copy(update={"listen": f"127.0.0.1:{api_port}"})}
    )
    stop, api_ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(config, stop))
    api = asyncio.create_task(serve_api(config, stop, api_ready))
    try:
        await asyncio.wait_for(api_ready.wait(), 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http:
            request = {"To": [{"Address": "bob@example.com"}], "Subject": subject, "Text": "hi"}
            r = await http.post(
                "/webapi/v0/Send", data={"request": json.dumps(request)}, auth=(SENDER, PASSWORD)
            )
            assert r.status_code == 200, r.text
        async with asyncio.timeout(60):
            while "bob@example.com" not in sink.delivered_to():
                assert not worker.done(), worker
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(worker, api, return_exceptions=True)


async def test_a_worker_and_the_api_deliver_over_mtls(
    stack_factory: Any, mtls: TLSProxy, files: Files, sink: SMTPSink
) -> None:
    stack = await stack_factory(worker=False)
    config = _config(
        stack.config,
        mtls,
        tls_ca_file=str(files.ca),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
    )
    await _deliver(config, sink, "over mTLS")
    # Both processes' connections went through the proxy's client-certificate check.
    assert mtls.handshakes >= 2


@pytest.mark.parametrize("source", ["file", "env"])
async def test_a_worker_and_the_api_deliver_with_the_api_key(
    stack_factory: Any,
    cloud: TLSProxy,
    files: Files,
    sink: SMTPSink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The proxy's header decoder stands for the server's side, which must see the key.
    caplog.set_level(logging.INFO, logger="hpack")
    stack = await stack_factory(worker=False)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    if source == "file":
        key_file = tmp_path / "api-key"
        key_file.write_text(f"{API_KEY}\n")  # as `echo KEY > file` writes it
        config = _config(stack.config, cloud, tls_ca_file=str(files.ca), api_key_file=str(key_file))
    else:
        monkeypatch.setenv(API_KEY_ENV, API_KEY)
        config = _config(stack.config, cloud, tls_ca_file=str(files.ca))
    await _deliver(config, sink, "with an API key")
    # Every request both processes made carried the key to the frontend's check, and none lacked it.
    assert cloud.requests.authorized >= 10 and cloud.requests.refused == 0
    assert API_KEY not in caplog.text


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


@pytest.mark.parametrize("setting", ["tls_key_file", "api_key_file"])
def test_a_worker_with_an_unreadable_key_file_exits_with_one_line(
    database: str, tmp_path: Path, files: Files, setting: str
) -> None:
    missing = tmp_path / "missing-key.pem"
    config = tmp_path / "tempost.toml"
    config.write_text(
        f"""[database]
url = "{database}"
[temporal]
address = "127.0.0.1:{free_port()}"
tls_cert_file = "{files.cert}"
tls_key_file = "{missing if setting == "tls_key_file" else files.key}"
api_key_file = "{missing if setting == "api_key_file" else ""}"
[worker]
metrics_listen = ""
"""
    )
    run = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "worker", "-c", str(config)],
        cwd=ROOT,
        env={**os.environ, API_KEY_ENV: ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"tempost: temporal.{setting} {missing}: cannot read: No such file or directory"
    )


async def test_the_environment_variable_wins_over_the_key_file(
    stack_factory: Any, cloud: TLSProxy, files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(worker=False)
    key_file = tmp_path / "api-key"
    key_file.write_text("an-old-key\n")
    config = _config(stack.config, cloud, tls_ca_file=str(files.ca), api_key_file=str(key_file))
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    client = await connect_temporal(config)
    assert client.service_client.config.rpc_metadata == {"temporal-namespace": config.temporal.namespace}
    await client.count_workflows()
    assert cloud.requests.refused == 0
    monkeypatch.delenv(API_KEY_ENV)
    refused = f"refused the API key from temporal.api_key_file {key_file}"
    with pytest.raises(TemporalCredentialsError, match=refused):
        await connect_temporal(config)


async def test_an_untrusted_server_certificate_is_named_before_the_api_key(
    stack_factory: Any, cloud: TLSProxy, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(worker=False)
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    config = _config(stack.config, cloud, tls_ca_file=str(files.other_ca))
    with pytest.raises(TemporalConnectError, match="certificate is not trusted .temporal.tls_ca_file") as err:
        await connect_temporal(config)
    assert API_KEY not in str(err.value)


async def _tempost(command: str, config_file: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.cli",
        command,
        "-c",
        str(config_file),
        cwd=ROOT,
        env={**os.environ, "TEMPOST_LOG_LEVEL": "debug", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


def _process_config(tmp_path: Path, database: str, proxy: TLSProxy, files: Files, key_file: str) -> Path:
    config = tmp_path / "tempost.toml"
    config.write_text(
        f"""[database]
url = "{database}"
[temporal]
address = "{proxy.address}"
tls_ca_file = "{files.ca}"
tls_server_name = "temporal.test"
api_key_file = "{key_file}"
[api]
listen = "127.0.0.1:{free_port()}"
[worker]
metrics_listen = ""
"""
    )
    return config


@pytest.mark.parametrize(
    ("command", "configured", "expected"),
    [
        ("worker", "wrong file", "refused the API key from temporal.api_key_file {key_file}"),
        ("api", "wrong env", f"refused the API key from {API_KEY_ENV}"),
        ("worker", "none", f"requires credentials: an API key (temporal.api_key_file or {API_KEY_ENV})"),
    ],
)
async def test_a_refused_api_key_stops_the_process_at_start_with_one_line(
    database: str,
    cloud: TLSProxy,
    files: Files,
    tmp_path: Path,
    command: str,
    configured: str,
    expected: str,
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{API_KEY[:-1]}X\n")  # one character off
    env = {API_KEY_ENV: ""}
    if configured == "wrong env":
        env[API_KEY_ENV] = "not-the-key"
    config = _process_config(tmp_path, database, cloud, files, "" if configured == "none" else str(key_file))
    proc = await _tempost(command, config, env)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:  # still retrying: the old behaviour
            proc.kill()
            await proc.wait()
    text = output.decode()
    assert proc.returncode == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"tempost: Temporal at {cloud.address} "), text
    assert expected.format(key_file=key_file) in last, last
    # Then the server's own words, not the SDK's whole status.
    server_said = "(Unauthenticated: Request unauthorized: "
    assert last.endswith((f"{server_said}invalid API key)", f"{server_said}missing API key)")), last
    assert "Traceback" not in text and "waiting for Temporal" not in text
    for secret in (API_KEY[:-1], env[API_KEY_ENV] or API_KEY[:-1]):
        assert secret not in text
    assert cloud.requests.refused >= 1 and cloud.requests.authorized == 0

    if configured == "wrong file":
        # The key rotated in its file: the restarted worker reads it and polls.
        key_file.write_text(API_KEY)
        proc = await _tempost(command, config, env)
        seen = []
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(120):
                while not any("worker polling task queue" in line for line in seen):
                    line = await proc.stdout.readline()
                    assert line, "".join(seen)
                    seen.append(line.decode())
            proc.send_signal(signal.SIGTERM)
            rest, _ = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, "".join(seen) + rest.decode()
        assert API_KEY not in "".join(seen) + rest.decode()
        assert cloud.requests.authorized >= 1


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


def test_a_key_with_spaces_or_line_breaks_inside_is_refused_without_showing_it(tmp_path: Path) -> None:
    # The SDK sends no authorization header at all for such a key: the server would say "missing".
    two_lines = tmp_path / "key"
    two_lines.write_text("secret-part-one\n# rotated 2024-05\n")
    with pytest.raises(SecretFileError, match=f"temporal.api_key_file {two_lines}: not an API key") as err:
        temporal_connect_options(TemporalConfig(api_key_file=str(two_lines)), {})
    assert "secret-part-one" not in str(err.value)
    with pytest.raises(SecretFileError, match=f"{API_KEY_ENV}: not an API key") as err:
        temporal_connect_options(TemporalConfig(), {API_KEY_ENV: "sécret"})
    assert "sécret" not in str(err.value)


def test_refused_credentials_are_named_and_the_key_is_cut_from_the_server_text(tmp_path: Path) -> None:
    config = TemporalConfig(address="ns.acct.tmprl.cloud:7233", namespace="ns.acct", api_key_file="/k")

    def sdk(code: str, message: str) -> RuntimeError:
        return RuntimeError(
            f"Failed client connect: `get_system_info` call error after connection: Status {{ code: {code},"
            f' message: "{message}", metadata: MetadataMap {{ headers: {{}} }}, source: None }}'
        )

    echoed = connect_error(config, sdk("Unauthenticated", f"bad key {API_KEY}"), True, API_KEY, {})
    assert isinstance(echoed, TemporalCredentialsError)
    assert str(echoed).startswith(
        "Temporal at ns.acct.tmprl.cloud:7233 refused the API key from temporal.api_key_file /k"
        " (Unauthenticated: bad key [API key])"
    )
    assert API_KEY not in str(echoed) and "bad key [API key]" in str(echoed)
    denied = connect_error(config, sdk("PermissionDenied", "no"), True, API_KEY, {API_KEY_ENV: API_KEY})
    assert str(denied).startswith(
        f"Temporal at ns.acct.tmprl.cloud:7233 does not let the API key from {API_KEY_ENV}"
        " use namespace ns.acct (PermissionDenied: no)"
    )
    with_cert = TemporalConfig(tls_cert_file="/c.pem", tls_key_file="/k.pem")
    refused_cert = connect_error(with_cert, sdk("Unauthenticated", "no"), True, "", {})
    assert "refused the client certificate temporal.tls_cert_file /c.pem" in str(refused_cert)
    # A server that is down is still worth waiting for.
    down = connect_error(config, RuntimeError("tcp connect error: Connection refused"), True, API_KEY, {})
    assert isinstance(down, TemporalConnectError) and str(down).startswith("nothing accepts connections")
