"""Fixtures for MTA-STS tests: a loopback DNS server, an HTTPS policy server for `mta-sts.example.com` and
a test CA, shared by every module that sets `DNS_ADDR` and `POLICY_IP` (its own loopback addresses).

Loaded through `pytest_plugins` in tests/conftest.py; the servers are module-scoped (stopping a
socketserver waits out its poll interval) and reset for each test.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dns.message
import dns.name
import dns.rdatatype
import pytest
import trustme

from store import db
from store.db import Pool
from tests.support.dnsserver import DNSServer, Zones
from tests.support.policyserver import PolicyServer

POLICY_HOST = "mta-sts.example.com"


class RecursiveDNSServer(DNSServer):
    """The loopback server, answering a CNAME chain like a recursive resolver would.

    The support server SERVFAILs only queries for the failing name itself, but a client asking for the
    start of a chain gets SERVFAIL when the resolver cannot resolve a name further along it.
    """

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        name = query.question[0].name
        for _ in range(20):
            if name in self.zones.servfail:
                return self.servfail(query, name)
            target = self.zones.records.get((name, dns.rdatatype.CNAME))
            if not target:
                break
            name = dns.name.from_text(target[0])
        return super().answer(wire)


def policy_tls(ca: trustme.CA, *names: str, **validity: Any) -> ssl.SSLContext:
    """A server context with a certificate from ca for names (validity: trustme's not_before/not_after)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **validity).configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def _dns_running(request: pytest.FixtureRequest) -> Iterator[RecursiveDNSServer]:
    server = RecursiveDNSServer(request.module.DNS_ADDR)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_server(_dns_running: RecursiveDNSServer, request: pytest.FixtureRequest) -> RecursiveDNSServer:
    """The DNS server knowing only the policy host's address: tests publish (or break) `_mta-sts` records."""
    _dns_running.zones = Zones()
    _dns_running.queries.clear()
    _dns_running.add(POLICY_HOST, "A", request.module.POLICY_IP)
    return _dns_running


@pytest.fixture(scope="module")
def _policies_running(ca: trustme.CA, request: pytest.FixtureRequest) -> Iterator[PolicyServer]:
    server = PolicyServer(request.module.POLICY_IP, policy_tls(ca, POLICY_HOST)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def policies(_policies_running: PolicyServer) -> PolicyServer:
    """The policy server with a valid certificate for `mta-sts.example.com`, serving nothing yet."""
    _policies_running.policies.clear()
    _policies_running.requests.clear()
    _policies_running.status = 200
    return _policies_running


@pytest.fixture
async def pool(database: str) -> AsyncIterator[Pool]:
    p = await db.open_pool(database, 1, 3)
    try:
        yield p
    finally:
        await p.close()
