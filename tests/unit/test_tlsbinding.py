"""Channel-binding data (RFC 5929, RFC 9266): both ends of one TLS connection must compute the same bytes,
and two connections must differ, or SCRAM -PLUS would bind nothing."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import trustme

from activities import tlsbinding
from activities.smtpclient import authenticate, open_session
from activities.tlsbinding import channel_binding
from tests.support.smtpsink import SMTPSink


def _both_ends(version: ssl.TLSVersion) -> tuple[tuple[str, bytes] | None, tuple[str, bytes] | None]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.minimum_version = server_ctx.maximum_version = version
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    a, b = socket.socketpair()
    got: dict[str, tuple[str, bytes] | None] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(a, server_side=True) as s:
            got["server"] = channel_binding(s)

    t = threading.Thread(target=serve)
    t.start()
    with client_ctx.wrap_socket(b, server_hostname="localhost") as c:
        got["client"] = channel_binding(c)
    t.join()
    return got["client"], got["server"]


@pytest.mark.parametrize(
    "version,kind", [(ssl.TLSVersion.TLSv1_3, "tls-exporter"), (ssl.TLSVersion.TLSv1_2, "tls-unique")]
)
def test_both_ends_agree_and_connections_differ(version: ssl.TLSVersion, kind: str) -> None:
    client, server = _both_ends(version)
    assert client is not None and client == server and client[0] == kind
    again, _ = _both_ends(version)
    assert again is not None and again[1] != client[1]


def test_no_tls_no_binding() -> None:
    assert channel_binding(None) is None


# --- A build where tls-exporter cannot be had safely: -PLUS is disabled with one warning, nothing crashes ---


@pytest.fixture
def redetect(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Detection runs again in the test (it is cached per process), and again afterwards for other tests."""
    tlsbinding._exporter.cache_clear()
    monkeypatch.setattr(tlsbinding, "_warned", False)
    yield
    tlsbinding._exporter.cache_clear()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tempost.tlsbinding"]


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("unforeseen")


UNSAFE_BUILDS: dict[str, tuple[object, str, object]] = {
    # What detection reads, made to look like a build we did not test.
    "pypy": (sys, "implementation", SimpleNamespace(name="pypy")),
    "untested-python": (tlsbinding, "_KNOWN_LAYOUT", ()),
    "libressl": (ssl, "OPENSSL_VERSION", "LibreSSL 3.8.2"),
    "other-libssl-loaded": (ssl, "OPENSSL_VERSION_NUMBER", 0x1010117F),
    # A struct whose fields sit elsewhere: the context is not where the layout says, so no pointer is used.
    "other-struct-layout": (tlsbinding, "_CTX_WORD", 2),
    "detection-raises": (tlsbinding, "_load", _raise),
    "self-test-raises": (tlsbinding, "_pair", _raise),
}


@pytest.mark.parametrize("build", list(UNSAFE_BUILDS))
def test_an_unsafe_build_disables_tls_exporter_with_one_warning(
    redetect: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, build: str
) -> None:
    target, name, value = UNSAFE_BUILDS[build]
    monkeypatch.setattr(target, name, value)
    caplog.set_level(logging.WARNING, logger="tempost.tlsbinding")
    for _ in range(2):
        client, server = _both_ends(ssl.TLSVersion.TLSv1_3)
        assert client is None and server is None
    [warning] = _warnings(caplog)
    assert "tls-exporter channel binding disabled" in warning
    # TLS 1.2 keeps its binding: tls-unique comes from Python itself.
    client, server = _both_ends(ssl.TLSVersion.TLSv1_2)
    assert client is not None and client == server and client[0] == "tls-unique"


def test_this_build_passes_detection_without_a_warning(
    redetect: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tempost.tlsbinding")
    client, _ = _both_ends(ssl.TLSVersion.TLSv1_3)
    assert client is not None and client[0] == "tls-exporter" and _warnings(caplog) == []


async def test_without_tls_exporter_scram_falls_back_to_the_non_plus_mechanism(
    redetect: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The server offers SCRAM-SHA-256-PLUS over TLS 1.3, the client has it configured first, but the build
    # cannot bind: AUTH goes on with SCRAM-SHA-256, saying "n" (RFC 5802 §6: it cannot bind, so no "y").
    monkeypatch.setattr(tlsbinding, "_KNOWN_LAYOUT", ())
    caplog.set_level(logging.WARNING, logger="tempost.tlsbinding")
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sink = SMTPSink(auth_users={"relayuser": "relay-secret"}, tls_context=ctx).start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        conn = await open_session(
            sink.host,
            sink.port,
            ehlo="client.example",
            mode="requiredstarttls",
            tls_context=client_ctx,
            server_name="127.0.0.1",
            connect_timeout=10,
            command_timeout=10,
        )
        try:
            assert "SCRAM-SHA-256-PLUS" in conn.extensions["AUTH"].split()
            await authenticate(conn, "relayuser", "relay-secret", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        finally:
            await conn.close()
    finally:
        sink.stop()
    assert sink.authenticated == [("SCRAM-SHA-256", "relayuser")] and sink.scram_flags == ["n"]
    assert len(_warnings(caplog)) == 1
