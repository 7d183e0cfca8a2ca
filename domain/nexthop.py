"""Where direct delivery connects: destination hosts from MX records and the order of their IPs.

Pure rules of spec 02 §1.2 and §1.5; the DNS answers come from the caller, and so does the randomness
(equal-preference MX hosts are shuffled; tests and workflows pass their own source).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby


class NextHopError(Exception):
    """No destination for the domain; `permanent` says whether retrying can help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Host:
    """A destination: a host name to resolve, or an IP address to dial as is."""

    name: str
    is_ip: bool = False


def ip_literal(domain: str) -> str | None:
    """The IP of an address-literal domain (`[192.0.2.1]`, `[IPv6:2001:db8::1]`), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def destination_hosts(
    domain: str,
    mx: Sequence[tuple[int, str]] | None,
    shuffle: Callable[[list[str]], None],
) -> list[Host]:
    """The hosts to try, in order (spec 02 §1.2).

    `mx` is None when the domain has no MX records: the domain itself is the implicit MX (RFC 5321
    §5.1). A single MX with target "." is a null MX (RFC 7505 §3): the domain accepts no mail.
    Hosts of equal preference are shuffled, as RFC 5321 §5.1 asks.
    """
    ip = ip_literal(domain)
    if ip is not None:
        return [Host(ip, is_ip=True)]
    if mx is None:
        return [Host(domain)]
    if len(mx) == 1 and mx[0][1].rstrip(".") == "":
        raise NextHopError(f"domain {domain} does not accept email (null MX, RFC 7505)", permanent=True)
    hosts: list[Host] = []
    for _, group in groupby(sorted(mx, key=lambda r: r[0]), key=lambda r: r[0]):
        names = [name.rstrip(".").lower() for _, name in group if name.rstrip(".")]
        shuffle(names)
        hosts += [Host(n) for n in names]
    if not hosts:
        raise NextHopError(f"domain {domain} has no usable MX records", permanent=True)
    return hosts


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def order_ips(ips: Sequence[str], dialed: Sequence[str]) -> list[str]:
    """The order to dial a host's addresses in, given the addresses dialed on earlier attempts.

    After an attempt over one address family, the next starts with the other one (a block list entry
    for one of our addresses may not apply to the other family). The second time a family is used the
    same address comes first again, so greylisting servers see a familiar client (spec 02 §1.5 step 2).
    """
    if not dialed:
        return list(ips)
    last = dialed[-1]
    fam = _family(last)
    uses = sum(1 for d in dialed if _family(d) == fam)

    def rank(ip: str) -> int:
        if _family(ip) != fam:
            return 0
        if uses == 1 and ip == last:
            return 1
        return 2

    return sorted(ips, key=rank)
