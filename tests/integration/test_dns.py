"""The resolver layer (activities/dns.py) against the loopback DNS server (tests/support/dnsserver.py).

Scenario numbers refer to spec 02 §10 (46: destinations, 47: authentic flags, 48: IPs, 50: TLSA, 54: TXT).
Needs no shared fixture: the module starts its own server on 127.0.53.10 (one test another on
127.0.53.11); each test gets empty zones.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from activities.dns import DNSNotFound, DNSTemporary, Resolver
from domain.nexthop import Host, NextHopError, destination_hosts
from tests.support.dnsserver import DNSServer, Zones

ADDR = "127.0.53.10"


@pytest.fixture(scope="module")
def _running() -> Iterator[DNSServer]:
    # One server per module: stopping a socketserver waits out its poll interval.
    srv = DNSServer(ADDR).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(_running: DNSServer) -> DNSServer:
    _running.zones = Zones()  # each test starts with empty zones
    return _running


def resolver(server: DNSServer, timeout: float = 3.0) -> Resolver:
    return Resolver([server.address], timeout=timeout)


def _ask(server: DNSServer, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    if tcp:
        return dns.query.tcp(q, server.host, port=server.port, timeout=2)
    return dns.query.udp(q, server.host, port=server.port, timeout=2)


# --- The test server itself behaves like an authoritative server ---


def test_server_distinguishes_nxdomain_nodata_and_empty_non_terminals(server: DNSServer) -> None:
    server.add("mx1.example.com", "A", "192.0.2.1")
    assert _ask(server, "absent.example.com", "A").rcode() == dns.rcode.NXDOMAIN
    nodata = _ask(server, "mx1.example.com", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    # example.com owns no records but has a name below it: NODATA, not NXDOMAIN (RFC 8020).
    ent = _ask(server, "example.com", "A")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
    assert nodata.flags & dns.flags.AA


def test_server_includes_the_cname_chain_and_answers_over_tcp(server: DNSServer) -> None:
    server.add("alias.example", "CNAME", "real.example.").add("real.example", "A", "192.0.2.7")
    for tcp in (False, True):
        resp = _ask(server, "alias.example", "A", tcp=tcp)
        assert [r.rdtype for r in resp.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
        assert resp.answer[1][0].to_text() == "192.0.2.7"


def test_server_sets_ad_only_under_signed_zones(server: DNSServer) -> None:
    server.add("a.signed.example", "A", "192.0.2.1").add("a.plain.example", "A", "192.0.2.2")
    server.sign("signed.example")
    assert _ask(server, "a.signed.example", "A").flags & dns.flags.AD
    assert _ask(server, "nx.signed.example", "A").flags & dns.flags.AD
    assert not _ask(server, "a.plain.example", "A").flags & dns.flags.AD


# --- Scenario 46: destinations ---


async def test_46_simple_mx(server: DNSServer) -> None:
    server.add("example.com", "MX", "10 MX1.example.com.")
    res = await resolver(server).mx("example.com")
    assert res.expanded == "example.com"
    assert [(m.preference, m.host) for m in res.records] == [(10, "mx1.example.com")]
    assert not res.null_mx


async def test_46_two_equal_preference_mx_are_returned_and_shuffled_by_nexthop(server: DNSServer) -> None:
    server.add("example.com", "MX", "10 mx1.example.com.", "10 mx2.example.com.", "20 backup.example.com.")
    res = await resolver(server).mx("example.com")
    pairs = [(m.preference, m.host) for m in res.records]
    orders = {
        tuple(h.name for h in destination_hosts("example.com", pairs, random.Random(seed).shuffle))
        for seed in range(20)
    }
    assert orders == {
        ("mx1.example.com", "mx2.example.com", "backup.example.com"),
        ("mx2.example.com", "mx1.example.com", "backup.example.com"),
    }


@pytest.mark.parametrize("rdtype,value", [("A", "192.0.2.1"), ("AAAA", "2001:db8::1")])
async def test_46_a_only_and_aaaa_only_domains_are_their_own_implicit_mx(
    server: DNSServer, rdtype: str, value: str
) -> None:
    server.add("implicit.example", rdtype, value)
    with pytest.raises(DNSNotFound):
        await resolver(server).mx("implicit.example")
    # RFC 5321 §5.1: no MX records, so the domain itself is the destination.
    assert destination_hosts("implicit.example", None, random.Random(0).shuffle) == [Host("implicit.example")]


async def test_46_cname_to_an_mx_domain_gives_its_mx(server: DNSServer) -> None:
    server.add("alias.example", "CNAME", "real.example.").add("real.example", "MX", "10 mx2.example.com.")
    res = await resolver(server).mx("alias.example")
    assert res.expanded == "real.example"
    assert [m.host for m in res.records] == ["mx2.example.com"]


async def test_46_absent_domain_and_dangling_cname_are_not_found(server: DNSServer) -> None:
    server.add("dangling.example", "CNAME", "gone.example.")
    r = resolver(server)
    for name in ("absent.example", "dangling.example"):
        with pytest.raises(DNSNotFound):
            await r.mx(name)


async def test_46_dangling_cname_reports_the_final_name(server: DNSServer) -> None:
    server.add("dangling.example", "CNAME", "gone.example.")
    with pytest.raises(DNSNotFound) as err:
        await resolver(server).mx("dangling.example")
    assert getattr(err.value, "expanded", None) == "gone.example"


async def test_46_cname_loop_is_a_temporary_error(server: DNSServer) -> None:
    server.add("loop1.example", "CNAME", "loop2.example.").add("loop2.example", "CNAME", "loop1.example.")
    with pytest.raises(DNSTemporary):
        await resolver(server).mx("loop1.example")


async def test_46_chain_of_16_cnames_is_a_temporary_error_and_15_succeed(server: DNSServer) -> None:
    for i in range(16):
        server.add(f"c{i}.example", "CNAME", f"c{i + 1}.example.")
    server.add("c16.example", "MX", "10 mx.example.")
    r = resolver(server)
    with pytest.raises(DNSTemporary):
        await r.mx("c0.example")
    res = await r.mx("c1.example")
    assert res.expanded == "c16.example"


async def test_46_null_mx_is_no_mail_and_permanent(server: DNSServer) -> None:
    server.add("nomail.example", "MX", "0 .")
    res = await resolver(server).mx("nomail.example")
    assert res.null_mx
    with pytest.raises(NextHopError) as err:
        destination_hosts("nomail.example", [(m.preference, m.host) for m in res.records], random.shuffle)
    assert err.value.permanent


async def test_46_mx_lookup_servfail_is_temporary(server: DNSServer) -> None:
    server.add("broken.example", "MX", "10 mx.example.")
    server.fail("broken.example")
    with pytest.raises(DNSTemporary):
        await resolver(server).mx("broken.example")


async def test_46_cname_lookup_failure_is_temporary(server: DNSServer) -> None:
    server.add("alias.example", "CNAME", "real.example.").add("real.example", "MX", "10 mx.example.")
    server.fail("alias.example")
    with pytest.raises(DNSTemporary):
        await resolver(server).mx("alias.example")


async def test_mx_lookup_timeout_is_temporary(server: DNSServer) -> None:
    server.add("slow.example", "MX", "10 mx.example.")
    server.silence("slow.example")
    start = time.monotonic()
    with pytest.raises(DNSTemporary):
        await resolver(server, timeout=1.0).mx("slow.example")
    assert time.monotonic() - start < 5


# --- Scenario 47: authentic (AD bit) ---


async def test_47_signed_zone_is_authentic_unsigned_is_not(server: DNSServer) -> None:
    server.add("signed.example", "MX", "10 mx.signed.example.")
    server.add("plain.example", "MX", "10 mx.plain.example.")
    server.sign("signed.example")
    r = resolver(server)
    signed = await r.mx("signed.example")
    assert signed.authentic and signed.authentic_expanded
    plain = await r.mx("plain.example")
    assert not plain.authentic and not plain.authentic_expanded


async def test_47_negative_answers_carry_the_ad_bit(server: DNSServer) -> None:
    server.add("host.signed.example", "A", "192.0.2.1")
    server.add("host.plain.example", "A", "192.0.2.2")
    server.sign("signed.example")
    r = resolver(server)
    for name, authentic in [
        ("nx.signed.example", True),  # NXDOMAIN
        ("host.signed.example", True),  # NODATA for MX
        ("nx.plain.example", False),
        ("host.plain.example", False),
    ]:
        with pytest.raises(DNSNotFound) as err:
            await r.mx(name)
        assert err.value.authentic is authentic, name


async def test_47_authentic_cname_to_inauthentic_name_original_true_expanded_false(server: DNSServer) -> None:
    server.add("alias.signed.example", "CNAME", "plain.example.")
    server.add("plain.example", "MX", "10 mx.plain.example.")
    server.sign("signed.example")
    res = await resolver(server).mx("alias.signed.example")
    assert res.authentic and not res.authentic_expanded


# --- Scenario 48: addresses ---


async def test_48_ips_ip4_on_v4_only_host_ip6_not_found_dual_stack_ip_gives_both_v4_first(
    server: DNSServer,
) -> None:
    server.add("v4.example", "A", "10.0.0.1")
    server.add("ds.example", "AAAA", "2001:db8::1").add("ds.example", "A", "10.0.0.1")
    r = resolver(server)
    # Network `ip4` (the Direct transport with IPv6 disabled) on an IPv4-only host: its address.
    res = await r.ips("v4.example", ipv6=False)
    assert res.ips == ["10.0.0.1"] and not res.dualstack
    # Network `ip6` on it: not found.
    with pytest.raises(DNSNotFound):
        await r.ips("v4.example", ipv4=False)
    # Network `ip` on a dual-stack host: both, IPv4 first.
    res = await r.ips("ds.example")
    assert res.ips == ["10.0.0.1", "2001:db8::1"]
    assert res.dualstack and not res.authentic


class AAAAFailingServer(DNSServer):
    """The loopback server with one address family broken: AAAA queries get SERVFAIL, others answers."""

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        if q.rdtype == dns.rdatatype.AAAA:
            return self.servfail(query, q.name)
        return super().answer(wire)


async def test_48_a_failing_address_family_is_skipped_in_an_unsigned_zone_and_fatal_in_a_signed_one() -> None:
    # Some unsigned name servers still fail AAAA queries; their IPv4 address must still get the mail.
    srv = AAAAFailingServer("127.0.53.11").start()
    try:
        srv.add("ds.example", "A", "10.0.0.1").add("ds.example", "AAAA", "2001:db8::1")
        srv.add("mx.signed.example", "A", "10.0.0.2")
        srv.sign("signed.example")
        r = resolver(srv)
        res = await r.ips("ds.example")
        assert res.ips == ["10.0.0.1"] and not res.dualstack
        # In a signed zone the unverifiable half may be forged; using the other half would skip DANE.
        with pytest.raises(DNSTemporary):
            await r.ips("mx.signed.example")
        # Without asking for AAAA (network `ip4`) the signed host's IPv4 address is found.
        assert (await r.ips("mx.signed.example", ipv6=False)).ips == ["10.0.0.2"]
    finally:
        srv.stop()


async def test_48_addresses_are_authentic_in_a_signed_zone(server: DNSServer) -> None:
    server.add("mx.signed.example", "A", "10.0.0.1")  # AAAA: authentic NODATA
    server.sign("signed.example")
    res = await resolver(server).ips("mx.signed.example")
    assert res.ips == ["10.0.0.1"] and res.authentic


async def test_48_absent_host_is_not_found_and_servfail_is_temporary(server: DNSServer) -> None:
    server.add("bad.example", "A", "10.0.0.1")
    server.fail("bad.example")
    r = resolver(server)
    with pytest.raises(DNSNotFound):
        await r.ips("absent.example")
    with pytest.raises(DNSTemporary):
        await r.ips("bad.example")


# --- Extended DNS Errors (RFC 8914), which say why a validating resolver answered SERVFAIL ---


def test_server_sends_the_chosen_extended_dns_error_with_servfail(server: DNSServer) -> None:
    server.add("bogus.example", "A", "192.0.2.1")
    server.fail("bogus.example", ede=6)
    resp = _ask(server, "bogus.example", "A")
    assert resp.rcode() == dns.rcode.SERVFAIL
    assert [(int(o.code), o.text) for o in resp.extended_errors()] == [(6, None)]


@pytest.mark.parametrize(
    "code,name,authentication",
    [
        (1, "unsupported-dnskey-algorithm", True),
        (6, "dnssec-bogus", True),
        (7, "signature-expired", True),
        (12, "nsec-missing", True),
        (3, "stale-answer", False),
        (22, "no-reachable-authority", False),
        (4000, "unknown", False),
    ],
)
async def test_servfail_lookups_carry_the_extended_dns_error(
    server: DNSServer, code: int, name: str, authentication: bool
) -> None:
    for owner, rdtype, value in [
        ("example.com", "MX", "10 mx.example.com."),
        ("mx.example.com", "A", "10.0.0.1"),
        ("_25._tcp.mx.example.com", "TLSA", TLSA),
        ("_mta-sts.example.com", "TXT", '"v=STSv1; id=1;"'),
    ]:
        server.add(owner, rdtype, value)
        server.fail(owner, ede=code)
    r = resolver(server)
    for lookup in (
        r.mx("example.com"),
        r.ips("mx.example.com"),
        r.tlsa("_25._tcp.mx.example.com"),
        r.txt("_mta-sts.example.com"),
    ):
        with pytest.raises(DNSTemporary) as err:
            await lookup
        ede = err.value.ede
        assert ede is not None and (ede.code, ede.name, ede.authentication) == (code, name, authentication)
        assert f"extended dns error {code} {name}" in str(err.value)


async def test_servfail_without_an_extended_dns_error_carries_none(server: DNSServer) -> None:
    server.add("broken.example", "MX", "10 mx.example.")
    server.fail("broken.example")
    with pytest.raises(DNSTemporary) as err:
        await resolver(server).mx("broken.example")
    assert err.value.ede is None


# --- Scenario 50: TLSA ---

TLSA = "3 1 1 " + "ab" * 32


async def test_50_tlsa_records_in_a_signed_zone_are_authentic(server: DNSServer) -> None:
    server.add("_25._tcp.mx.signed.example", "TLSA", TLSA)
    server.sign("signed.example")
    texts, authentic = await resolver(server).tlsa("_25._tcp.mx.signed.example")
    assert texts == [TLSA] and authentic


async def test_50_inauthentic_tlsa_is_reported_as_such(server: DNSServer) -> None:
    server.add("_25._tcp.mx.plain.example", "TLSA", TLSA)
    texts, authentic = await resolver(server).tlsa("_25._tcp.mx.plain.example")
    assert texts == [TLSA] and not authentic


async def test_50_tlsa_cname_is_followed(server: DNSServer) -> None:
    server.add("_25._tcp.mx.signed.example", "CNAME", "tlsa.signed.example.")
    server.add("tlsa.signed.example", "TLSA", TLSA)
    server.sign("signed.example")
    texts, authentic = await resolver(server).tlsa("_25._tcp.mx.signed.example")
    assert texts == [TLSA] and authentic


async def test_50_missing_tlsa_is_not_found_and_servfail_is_temporary(server: DNSServer) -> None:
    server.add("mx.signed.example", "A", "10.0.0.1")
    server.add("_25._tcp.bad.signed.example", "TLSA", TLSA)
    server.fail("_25._tcp.bad.signed.example")
    server.sign("signed.example")
    r = resolver(server)
    with pytest.raises(DNSNotFound) as err:
        await r.tlsa("_25._tcp.mx.signed.example")
    assert err.value.authentic
    with pytest.raises(DNSTemporary):
        await r.tlsa("_25._tcp.bad.signed.example")


# --- Scenario 54: TXT ---


async def test_54_txt_strings_are_joined_and_absence_is_not_found(server: DNSServer) -> None:
    server.add("_mta-sts.example.com", "TXT", '"v=STSv1; " "id=20160831085700Z;"', '"unrelated"')
    r = resolver(server)
    assert sorted(await r.txt("_mta-sts.example.com")) == ["unrelated", "v=STSv1; id=20160831085700Z;"]
    with pytest.raises(DNSNotFound):
        await r.txt("_mta-sts.absent.example")


async def test_54_txt_servfail_is_temporary(server: DNSServer) -> None:
    server.add("_mta-sts.broken.example", "TXT", '"v=STSv1; id=1;"')
    server.fail("_mta-sts.broken.example")
    with pytest.raises(DNSTemporary):
        await resolver(server).txt("_mta-sts.broken.example")
