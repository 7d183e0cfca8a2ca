"""A real authoritative DNS server on a loopback address, serving test zones over UDP and TCP.

Tempost trusts the AD bit of its configured resolver for DNSSEC (as mox does), so this server sets AD on
answers for names under zones a test marks signed; that is the only difference from a plain authoritative
server a test needs. Names can also be made to SERVFAIL (optionally with an Extended DNS Error, as a
validating resolver sends when DNSSEC validation fails) or to never answer, for temporary DNS errors.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from deploy.embedded import free_port


@dataclass
class Zones:
    """Records by (name, type), plus the signed zones and the names that misbehave."""

    records: dict[tuple[dns.name.Name, int], list[str]] = field(default_factory=dict)
    signed: set[dns.name.Name] = field(default_factory=set)
    servfail: set[dns.name.Name] = field(default_factory=set)
    # The Extended DNS Error info code a SERVFAIL for the name carries (RFC 8914).
    ede: dict[dns.name.Name, int] = field(default_factory=dict)
    silent: set[dns.name.Name] = field(default_factory=set)


def _name(s: str) -> dns.name.Name:
    return dns.name.from_text(s)


class DNSServer:
    """Serves `Zones` on host:port until stopped; add records before or while it runs."""

    def __init__(self, host: str = "127.0.0.53", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.zones = Zones()
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []

    # --- Test data ---

    def add(self, name: str, rdtype: str, *values: str) -> DNSServer:
        """Add records, e.g. add("example.com", "MX", "10 mx1.example.com.", "20 mx2.example.com.")."""
        with self._lock:
            key = (_name(name), dns.rdatatype.from_text(rdtype))
            self.zones.records.setdefault(key, []).extend(values)
        return self

    def remove(self, name: str, rdtype: str) -> None:
        """Forget the records of one name and type."""
        with self._lock:
            self.zones.records.pop((_name(name), dns.rdatatype.from_text(rdtype)), None)

    def sign(self, zone: str) -> None:
        """Answers for names at or under zone carry the AD bit."""
        self.zones.signed.add(_name(zone))

    def fail(self, name: str, ede: int | None = None) -> None:
        """Queries for name get SERVFAIL, with an Extended DNS Error of info code ede when given.

        A validating resolver answers this way when DNSSEC validation fails, e.g. ede=6 (DNSSEC Bogus).
        """
        self.zones.servfail.add(_name(name))
        if ede is not None:
            self.zones.ede[_name(name)] = ede

    def silence(self, name: str) -> None:
        """Queries for name get no answer at all (the client times out)."""
        self.zones.silent.add(_name(name))

    # --- Answering ---

    def _exists(self, name: dns.name.Name) -> bool:
        return any(n == name or n.is_subdomain(name) for n, _ in self.zones.records)

    def servfail(self, query: dns.message.Message, name: dns.name.Name) -> bytes:
        """The SERVFAIL response to query for failing at name, with the name's EDE option if it has one."""
        resp = dns.message.make_response(query)
        resp.set_rcode(dns.rcode.SERVFAIL)
        code = self.zones.ede.get(name)
        if code is not None and query.edns >= 0:
            # RFC 8914 §2: the EDE travels as an EDNS0 option, so only to a client that sent an OPT record.
            resp.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.make(code))])
        return resp.to_wire()

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query message, or None to stay silent."""
        query = dns.message.from_wire(wire)
        q = query.question[0]
        self.queries.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype)))
        with self._lock:
            if q.name in self.zones.silent:
                return None
            if q.name in self.zones.servfail:
                return self.servfail(query, q.name)
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            name = q.name
            for _ in range(20):
                values = self.zones.records.get((name, q.rdtype))
                if values:
                    resp.answer.append(self._rrset(name, q.rdtype, values))
                    break
                cname = self.zones.records.get((name, dns.rdatatype.CNAME))
                if not cname or q.rdtype == dns.rdatatype.CNAME:
                    if not self._exists(name):
                        resp.set_rcode(dns.rcode.NXDOMAIN)
                    break
                resp.answer.append(self._rrset(name, dns.rdatatype.CNAME, cname[:1]))
                name = _name(cname[0])
            if any(q.name == z or q.name.is_subdomain(z) for z in self.zones.signed):
                resp.flags |= dns.flags.AD
            return resp.to_wire()

    @staticmethod
    def _rrset(name: dns.name.Name, rdtype: int, values: list[str]) -> dns.rrset.RRset:
        rrs = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
        for v in values:
            rrs.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, v), ttl=300)
        return rrs

    # --- Serving ---

    def start(self) -> DNSServer:
        """Listen on UDP and TCP in background threads."""
        outer = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                out = outer.answer(data)
                if out is not None:
                    sock.sendto(out, self.client_address)

        class TCP(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                try:
                    while True:
                        head = conn.recv(2)
                        if len(head) < 2:
                            return
                        (n,) = struct.unpack("!H", head)
                        data = b""
                        while len(data) < n:
                            chunk = conn.recv(n - len(data))
                            if not chunk:
                                return
                            data += chunk
                        out = outer.answer(data)
                        if out is None:
                            return
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except OSError:
                    return

        class ThreadingUDP(socketserver.ThreadingUDPServer):
            allow_reuse_address = True
            daemon_threads = True

        class ThreadingTCP(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._servers = [ThreadingUDP((self.host, self.port), UDP), ThreadingTCP((self.host, self.port), TCP)]
        for s in self._servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        for s in self._servers:
            s.shutdown()
            s.server_close()
        self._servers = []

    @property
    def address(self) -> str:
        """host:port, as Tempost's resolver configuration takes it."""
        return f"{self.host}:{self.port}"
