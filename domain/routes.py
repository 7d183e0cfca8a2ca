"""Which transport a message takes: explicit transport, then routes (spec 01 §7.3)."""

from __future__ import annotations

from collections.abc import Sequence

from domain.config import Config, Route


def _domain_matches(entries: Sequence[str], domain: str) -> bool:
    """Empty matches all; `e` matches itself; `.e` matches e and every name under it."""
    if not entries:
        return True
    for e in entries:
        if e == domain:
            return True
        if e.startswith(".") and (domain == e[1:] or domain.endswith(e)):
            return True
    return False


def route_matches(route: Route, from_domain: str, to_domain: str, attempts_before: int) -> bool:
    """Whether a route applies; domains are ASCII, and empty for IP literals (mox's behaviour)."""
    return (
        attempts_before >= route.minimum_attempts
        and _domain_matches(route.from_domain, from_domain)
        and _domain_matches(route.to_domain, to_domain)
    )


def _ascii_domain(domain: str) -> str:
    return "" if domain.startswith("[") else domain.lower()


def select_transport(
    config: Config,
    *,
    explicit: str,
    account: str,
    sender_domain: str,
    recipient_domain: str,
    attempts_before: int,
) -> str:
    """The transport name for an attempt: the message's own, else the first matching route, else default.

    The account's routes come first, then the sender domain's, then the global ones.
    """
    if explicit:
        return explicit
    acc = config.account(account)
    sender = _ascii_domain(sender_domain)
    rcpt = _ascii_domain(recipient_domain)
    domain_routes = config.domain_routes.get(sender_domain, [])
    for routes in (acc.routes if acc else [], domain_routes, config.routes):
        for r in routes:
            if route_matches(r, sender, rcpt, attempts_before):
                return r.transport
    return config.queue.default_transport
