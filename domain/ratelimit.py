"""Failed-authentication limiter (spec 03 §5.2): counts failures per IP and per wider network.

Failures are counted in fixed windows (one minute, one day) for the address itself and for two wider
networks around it, so a spread-out attack from one provider's range is limited too. A successful login
clears the counts of its address. Pure: the caller passes the time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

# Prefix lengths of the address, its neighbourhood and its wider network, per family.
_V4_PREFIXES = (32, 26, 21)
_V6_PREFIXES = (64, 48, 32)


@dataclass(frozen=True)
class WindowLimit:
    """At most `limits[i]` failures per `seconds` for the i-th prefix (address, neighbourhood, network)."""

    seconds: int
    limits: tuple[int, int, int]


AUTH_LIMITS = (WindowLimit(60, (10, 30, 90)), WindowLimit(86400, (50, 150, 450)))


@dataclass
class _Window:
    start: int = -1
    counts: dict[tuple[int, str], int] = field(default_factory=dict)


class AuthFailureLimiter:
    """Decides whether another authentication attempt from an address may be checked at all."""

    def __init__(self, limits: tuple[WindowLimit, ...] = AUTH_LIMITS) -> None:
        self._limits = limits
        self._windows = [_Window() for _ in limits]

    @staticmethod
    def _keys(ip: str) -> list[tuple[int, str]]:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return [(i, ip) for i in range(3)]
        prefixes = _V4_PREFIXES if addr.version == 4 else _V6_PREFIXES
        return [(i, str(ipaddress.ip_network(f"{addr}/{p}", strict=False))) for i, p in enumerate(prefixes)]

    def _window(self, i: int, now: datetime) -> _Window:
        w = self._windows[i]
        start = int(now.timestamp()) // self._limits[i].seconds
        if w.start != start:
            w.start, w.counts = start, {}
        return w

    def allowed(self, ip: str, now: datetime) -> bool:
        """Whether no window is full for the address or its networks."""
        keys = self._keys(ip)
        for i, lim in enumerate(self._limits):
            w = self._window(i, now)
            if any(w.counts.get(k, 0) >= lim.limits[k[0]] for k in keys):
                return False
        return True

    def attempt(self, ip: str, now: datetime) -> bool:
        """Whether an authentication attempt may be checked; an allowed one counts as a failure until
        `succeeded` takes it back, so checks running at once cannot go past the limits together."""
        if not self.allowed(ip, now):
            return False
        self.failed(ip, now)
        return True

    def failed(self, ip: str, now: datetime) -> None:
        """Count one failed authentication from the address."""
        keys = self._keys(ip)
        for i in range(len(self._limits)):
            w = self._window(i, now)
            for k in keys:
                w.counts[k] = w.counts.get(k, 0) + 1

    def succeeded(self, ip: str, now: datetime) -> None:
        """Take back the attempt's count from the address's networks and forget the address's own
        failures (its networks keep their earlier ones)."""
        keys = self._keys(ip)
        for i in range(len(self._limits)):
            w = self._window(i, now)
            w.counts.pop(keys[0], None)
            for k in keys[1:]:
                if w.counts.get(k, 0) > 0:
                    w.counts[k] -= 1


class RequestLimiter:
    """At most `per_window` requests per client in fixed windows of `seconds`, for routes anyone may call.

    IPv6 clients are counted per /64 (one host's usual allotment). At most `max_clients` are tracked per
    window, so memory stays bounded under a flood from many addresses; further clients wait for the next
    window. Pure: the caller passes the time.
    """

    def __init__(self, per_window: int, seconds: int = 60, max_clients: int = 100_000) -> None:
        self._limit = per_window
        self._seconds = seconds
        self._max_clients = max_clients
        self._window = _Window()

    @staticmethod
    def _key(ip: str) -> str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if addr.version == 6:
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))
        return str(addr)

    def attempt(self, ip: str, now: datetime) -> bool:
        """Whether one more request from the address may be served; an allowed one is counted."""
        start = int(now.timestamp()) // self._seconds
        w = self._window
        if w.start != start:
            w.start, w.counts = start, {}
        key = (0, self._key(ip))
        n = w.counts.get(key)
        if n is None and len(w.counts) >= self._max_clients:
            return False
        if (n or 0) >= self._limit:
            return False
        w.counts[key] = (n or 0) + 1
        return True
