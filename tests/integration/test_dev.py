"""`tempost dev` as a user runs it: start, send, Ctrl-C, start again — nothing queued is lost or forgotten."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.embedded import free_port

# Generous timeouts: the child process shares a busy machine with the rest of the suite.
_http = httpx.Client(timeout=30)
PASSWORD = "dev-test-password"
TOKEN = "dev-test-token"


def _port_pair() -> int:
    """A free port whose +1000 neighbour (the Temporal UI) is free too."""
    for _ in range(50):
        p = free_port()
        if p + 1000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p + 1000))
                except OSError:
                    continue
            return p
    raise RuntimeError("no free port pair")


def _start(data_dir: Path, api_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TEMPOST_DEV_PASSWORD=PASSWORD, TEMPOST_ADMIN_TOKEN=TOKEN)
    out = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "dev", "--data-dir", str(data_dir), "--api-port", str(api_port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _wait_ready(api: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if _http.get(api + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("tempost dev not ready:\n" + log.read_text())


def _banner(log: Path) -> str:
    """The output up to the banner's last line: it is printed just after the API answers /readyz."""
    deadline = time.monotonic() + 30
    while "Ctrl-C stops everything." not in (printed := log.read_text()):
        assert time.monotonic() < deadline, "no banner:\n" + printed
        time.sleep(0.1)
    return printed


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the process group."""
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _dev_config(data: Path, extra: str = "") -> tuple[int, int, int]:
    """Write a configuration for `tempost dev` on free ports (it keeps a configuration it finds, so the
    test does not take the default ports a developer may be using); returns the Temporal, PostgreSQL and
    API ports."""
    temporal_port, pg_port, api_port = _port_pair(), free_port(), free_port()
    (data / "tempost.toml").write_text(
        f"""hostname = "localhost"
[database]
url = "postgresql://postgres@127.0.0.1:{pg_port}/tempost"
[temporal]
address = "127.0.0.1:{temporal_port}"
[api]
listen = "127.0.0.1:{api_port}"
admin_token_file = "{data / "admin-token"}"
[worker]
metrics_listen = ""
[queue]
default_transport = "localserve"
[[accounts]]
name = "dev"
addresses = ["dev@localhost"]
password_file = "{data / "dev-password"}"
{extra}"""
    )
    return temporal_port, pg_port, api_port


def test_dev_survives_ctrl_c_with_mail_waiting_in_backoff(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    temporal_port, pg_port, api_port = _dev_config(data, 'keep_retired_period = "168h"\n')
    api = f"http://127.0.0.1:{api_port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    log = tmp_path / "dev.log"

    proc = _start(data, api_port, log)
    try:
        _wait_ready(api, proc, log)
        printed = _banner(log)
        assert f"password: {PASSWORD}" in printed and TOKEN in printed
        # What its configuration does with mail, not a fixed sentence.
        assert "Delivery: simulated (localserve). No mail leaves this machine." in printed
        assert f"http://127.0.0.1:{temporal_port + 1000}/" in printed
        request = {
            "To": [{"Address": "bob@example.com"}, {"Address": "usertemperror@example.com"}],
            "Subject": "hi",
            "Text": "hello",
        }
        r = _http.post(
            api + "/webapi/v0/Send", data={"request": json.dumps(request)}, auth=("dev@localhost", PASSWORD)
        )
        assert r.status_code == 200, r.text
        delivered, waiting = (s["QueueMsgID"] for s in r.json()["Submissions"])
        # The temporary failure leaves one message in backoff (first retry 7.5 minutes out).
        deadline = time.monotonic() + 30
        while True:
            row = _http.get(f"{api}/admin/v0/queue/{waiting}", headers=admin).json()
            if row.get("Attempts") == 1:
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.2)
        next_attempt = row["NextAttempt"]
        dkim_records = _http.get(f"{api}/admin/v0/dkim", headers=admin).json()
    finally:
        _interrupt(proc)
    # Every child went with it.
    assert not _listening(temporal_port) and not _listening(pg_port) and not _listening(api_port)

    proc = _start(data, api_port, log)
    try:
        _wait_ready(api, proc, log)
        # An attempt cut off by the interrupt is retried after the restart: at once when the old worker
        # reported its failure, else once its heartbeat timeout (a minute) runs out.
        deadline = time.monotonic() + 100
        url = f"{api}/admin/v0/queue/{delivered}"
        while _http.get(url, headers=admin).json().get("Event") != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        row = _http.get(f"{api}/admin/v0/queue/{waiting}", headers=admin).json()
        assert row["Attempts"] == 1 and row["NextAttempt"] == next_attempt
        # The DKIM keys made on first start are kept: the published records stay valid.
        assert _http.get(f"{api}/admin/v0/dkim", headers=admin).json() == dkim_records
        # The workflow is alive and still owns the timer: a kick makes it try again now.
        r = _http.post(f"{api}/admin/v0/queue/{waiting}/kick", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while _http.get(f"{api}/admin/v0/queue/{waiting}", headers=admin).json()["Attempts"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        _interrupt(proc)


def test_dev_signs_mail_out_of_the_box(tmp_path: Path) -> None:
    """A fresh `tempost dev` signs with an Ed25519 and an RSA key for d=localhost; the raw message carries
    both signatures and the Received field, and the records GET /admin/v0/dkim returns verify them."""
    from tests.support.opendkim import OpenDKIMVerifier, unavailable

    if unavailable():
        pytest.skip(unavailable())
    data = tmp_path / "data"
    data.mkdir()
    # As above: `tempost dev` adds the DKIM section to a configuration that has no [domains].
    _, _, api_port = _dev_config(data)
    api = f"http://127.0.0.1:{api_port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    log = tmp_path / "dev.log"
    verifier = OpenDKIMVerifier()
    proc = _start(data, api_port, log)
    try:
        _wait_ready(api, proc, log)
        for name in ("ed25519.pem", "rsa.pem"):
            assert (data / "dkim" / name).stat().st_mode & 0o777 == 0o600
        records = _http.get(f"{api}/admin/v0/dkim", headers=admin).json()
        assert {(r["Domain"], r["Selector"], r["Algorithm"], r["Signing"]) for r in records} == {
            ("localhost", "ed25519", "ed25519-sha256", True),
            ("localhost", "rsa", "rsa-sha256", True),
        }
        for r in records:
            verifier.publish(r["RecordName"], r["RecordValue"])
        # A release a day ahead keeps the message queued, so its raw bytes can be read.
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        request = {
            "To": [{"Address": "bob@example.com"}],
            "Subject": "hi",
            "Text": "hello",
            "FutureRelease": later,
        }
        r = _http.post(
            api + "/webapi/v0/Send", data={"request": json.dumps(request)}, auth=("dev@localhost", PASSWORD)
        )
        assert r.status_code == 200, r.text
        msg_id = r.json()["Submissions"][0]["QueueMsgID"]
        raw = _http.get(f"{api}/admin/v0/queue/{msg_id}/raw", headers=admin).content
        assert raw.startswith(b"Received: from [127.0.0.1] (login dev@localhost) by localhost")
        verdicts = {(v.selector, v.domain): v.ok for v in verifier.verify_each(raw)}
        assert verdicts == {("ed25519", "localhost"): True, ("rsa", "localhost"): True}
    finally:
        _interrupt(proc)
        verifier.stop()
