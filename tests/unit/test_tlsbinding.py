"""Channel-binding data (RFC 5929, RFC 9266): both ends of one TLS connection must compute the same bytes,
and two connections must differ, or SCRAM -PLUS would bind nothing."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme

from activities.tlsbinding import channel_binding


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
