"""Delivery metrics (spec 01 §9, prefix `tempost_`), exported by the worker's /metrics endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from activities.smtpclient import RcptReply, SessionError

CONNECTIONS = Counter("tempost_queue_connection_total", "Outgoing SMTP connections by result.", ["result"])
SESSIONS_OPENED = Counter(
    "tempost_queue_smtp_sessions_opened_total",
    "SMTP sessions set up for a delivery (connected, greeted, EHLO and TLS done), whether kept or not.",
)
SESSIONS_REUSED = Counter(
    "tempost_queue_smtp_sessions_reused_total",
    "Deliveries that took an idle session from the worker's connection cache (it answered RSET with 250).",
)
SESSION_REUSE_FAILURES = Counter(
    "tempost_queue_smtp_session_reuse_failures_total",
    "Idle sessions from the connection cache that failed their RSET (closed while idle, timed out) and "
    "were dropped for a fresh one.",
)
DELIVERY_DURATION = Histogram(
    "tempost_queue_delivery_duration_seconds",
    "Duration of one delivery try to one host (or relay), by attempt, transport, TLS mode and result.",
    ["attempt", "transport", "tlsmode", "result"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 20, 30, 60, 120),
)
DESTINATIONS = Counter("tempost_queue_destinations_total", "Hosts tried in direct delivery.")
DESTINATIONS_AUTHENTIC = Counter(
    "tempost_queue_destinations_authentic_total",
    "Hosts tried whose DNS chain was DNSSEC-authentic (DANE candidates).",
)
DANE_REQUIRED = Counter(
    "tempost_queue_destination_dane_required_total", "Hosts with TLSA records: DANE required."
)
DANE_STARTTLS_UNVERIFIED = Counter(
    "tempost_queue_destination_dane_starttlsunverified_total",
    "DANE required but every TLSA record unusable: STARTTLS without verification.",
)
DANE_GATHER_ERRORS = Counter("tempost_queue_destination_dane_gathertlsa_errors_total", "TLSA lookup errors.")
TLSREQUIREDNO_IGNORED = Counter(
    "tempost_queue_tlsrequiredno_ignored_total",
    "TLS policy findings ignored because the message has TLS-Required: No.",
    ["ignored"],
)
REQUIRETLS_UNSUPPORTED = Counter(
    "tempost_queue_requiretls_unsupported_total",
    "REQUIRETLS messages that could not be delivered to a host.",
    ["reason"],
)
PLAINTEXT_FALLBACK = Counter(
    "tempost_queue_plaintext_fallback_total", "Deliveries retried without TLS after a TLS failure."
)


def delivery_result(err: BaseException | None, replies: list[RcptReply] | None) -> str:
    """The `result` label: ok, okpartial, timeout, canceled, temperror, permerror or error (spec 01 §9)."""
    if err is None:
        delivered = sum(1 for r in replies or [] if r.success)
        failed = sum(1 for r in replies or [] if not r.success)
        if delivered == 0:
            return "error"
        return "okpartial" if failed else "ok"
    if isinstance(err, TimeoutError) or "timeout" in type(err).__name__.lower():
        return "timeout"
    if isinstance(err, SessionError):
        return "permerror" if err.permanent else "temperror"
    return "error"
