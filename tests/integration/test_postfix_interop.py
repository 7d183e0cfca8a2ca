"""Interoperability with Postfix's own SMTP server code: its `smtp-sink` test server, from Debian's postfix.

An independent SMTP implementation (PIPELINING, ENHANCEDSTATUSCODES, its own reply texts) receives mail
from the real workflow's direct delivery. `.ci/run` installs postfix with apt; where it could not, these
tests are skipped and say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.contracts import MsgState
from tests.integration.test_direct import _common_port
from tests.support.dnsserver import DNSServer

SMTP_SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
)
POSTFIX_HOST = "127.0.0.6"

pytestmark = pytest.mark.skipif(
    SMTP_SINK is None,
    reason="Postfix's smtp-sink is not installed (apt-get install postfix was not possible)",
)


class PostfixSink:
    """smtp-sink dumping each message, with the envelope as X-Mail-Args/X-Rcpt-Args headers, to a file."""

    def __init__(self, port: int, *args: str) -> None:
        # smtp-sink drops privileges to nobody, who cannot enter pytest's private temporary directories.
        dump = Path(tempfile.mkdtemp(prefix="tempost-smtp-sink-"))
        dump.chmod(0o777)
        self.dump = dump
        cmd = [str(SMTP_SINK), "-c", "-d", f"{dump}/", *args, f"{POSTFIX_HOST}:{port}", "10"]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Listening before the test sends: a first attempt refused by a server still starting would be
        # retried, and the tests count attempts.
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((POSTFIX_HOST, port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def messages(self) -> list[str]:
        # smtp-sink leaves an empty file for a transaction that never reached DATA (all recipients refused,
        # then RSET on a session kept for reuse): no message.
        return [t for p in sorted(self.dump.iterdir()) if (t := p.read_text(errors="replace"))]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        shutil.rmtree(self.dump, ignore_errors=True)


@pytest.fixture
def port() -> int:
    return _common_port([POSTFIX_HOST])


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer().start()
    server.add("postfix.test", "MX", "10 mx.postfix.test.").add("mx.postfix.test", "A", POSTFIX_HOST)
    yield server
    server.stop()


@pytest.fixture
def make_sink(port: int) -> Iterator[Any]:
    sinks: list[PostfixSink] = []

    def make(*args: str) -> PostfixSink:
        s = PostfixSink(port, *args)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


async def _send(stack_factory: Any, dns: DNSServer, port: int, rcpts: list[str], **queue: Any) -> Any:
    stack = await stack_factory(
        direct={"resolvers": [dns.address], "smtp_port": port}, default_transport="direct", **queue
    )
    resp = await stack.send_ok(
        {"To": [{"Address": r} for r in rcpts], "Subject": "interop", "Text": "grüße\n"}
    )
    return await stack.finished(resp["Submissions"][0]["QueueMsgID"])


async def test_postfix_receives_two_recipients_in_one_pipelined_transaction(
    stack_factory, dns: DNSServer, port: int, make_sink: Any
) -> None:
    sink = make_sink()
    status = await _send(stack_factory, dns, port, ["a@postfix.test", "b@postfix.test"])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED, MsgState.DELIVERED]
    [msg] = sink.messages()
    assert (
        "X-Mail-Args: <alice@example.org> BODY=8BITMIME" in msg or "X-Mail-Args: <alice@example.org>" in msg
    )
    assert "X-Rcpt-Args: <a@postfix.test>" in msg and "X-Rcpt-Args: <b@postfix.test>" in msg
    assert "Subject: interop" in msg


async def test_postfix_hard_rejecting_recipients_fails_them_permanently(
    stack_factory, dns: DNSServer, port: int, make_sink: Any
) -> None:
    sink = make_sink("-f", "rcpt")
    status = await _send(stack_factory, dns, port, ["a@postfix.test"])
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    assert sink.messages() == []


async def test_postfix_soft_rejecting_data_is_retried(
    stack_factory, dns: DNSServer, port: int, make_sink: Any
) -> None:
    make_sink("-q", "data")
    status = await _send(stack_factory, dns, port, ["a@postfix.test"], max_attempts=2)
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 2
