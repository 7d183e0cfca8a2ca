"""Outgoing webhooks (spec 03 §3): the events, the payload an application receives, the retry schedule.

Pure rules only: what to send and when to try again. Storage, HTTP and timers live elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Event(StrEnum):
    """The outgoing events an account can subscribe to (spec 03 §3.2)."""

    DELIVERED = "delivered"
    SUPPRESSED = "suppressed"
    DELAYED = "delayed"
    FAILED = "failed"
    RELAYED = "relayed"
    EXPANDED = "expanded"
    CANCELED = "canceled"
    UNRECOGNIZED = "unrecognized"
    # Tempost extension: the recipient used the message's one-click unsubscribe link (RFC 8058) and is now
    # on the account's suppression list.
    UNSUBSCRIBED = "unsubscribed"


# The 11 waits after failed attempts 1..11, in units of the first wait (1 minute in production): the
# schedule runs 1m, 2m, 4m, 7.5m, 15m ... 16h (spec 03 §3.6).
_SCHEDULE = (1.0, 2.0, 4.0, 7.5, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0)
MAX_ATTEMPTS = len(_SCHEDULE) + 1
# Success is this HTTP status and no other (spec 03 §3.5).
SUCCESS_STATUS = 200
# The part of a response body kept with an attempt's result.
RESPONSE_KEEP = 512
# The placeholder result written before a call, so a crash mid-call is visible and not retried at once.
IN_PROGRESS = "delivering..."
CANCELED_BY_ADMIN = "canceled by admin"


def retry_delay(attempts_before: int, first: timedelta, jitter: float) -> timedelta:
    """The wait after a failed attempt, given how many attempts were started before it.

    jitter is a factor in [-0.01, 0.0099] (mox's ±1 %); the result is scaled by `first`, the first wait.
    """
    if not -0.01 <= jitter < 0.01:
        raise ValueError(f"jitter {jitter} outside [-0.01, 0.01)")
    units = _SCHEDULE[min(attempts_before, len(_SCHEDULE) - 1)]
    return first * units * (1 + jitter)


def is_final(attempts: int, success: bool) -> bool:
    """Whether a hook leaves the queue after its attempt number `attempts` (1-based)."""
    return success or attempts >= MAX_ATTEMPTS


def subscribed(events: Sequence[str], event: Event) -> bool:
    """An empty filter means every event (spec 03 §3.1)."""
    return not events or event.value in events


def enhanced_code(code: int, secode: str) -> str:
    """The payload's SMTPEnhancedCode: "<class>.<subject>.<detail>" when an enhanced code is known."""
    if not secode or code < 100:
        return ""
    return f"{code // 100}.{secode}"


def format_time(t: datetime) -> str:
    """RFC 3339 with the sub-second part trimmed the way Go prints times (no trailing zeros)."""
    s = t.isoformat()
    if t.microsecond:
        head, _, rest = s.partition(".")
        frac, tz = rest[:6].rstrip("0"), rest[6:]
        s = f"{head}.{frac}{tz}"
    return s.replace("+00:00", "Z")


@dataclass(frozen=True)
class Outgoing:
    """What an application learns about one queued message's fate; serialised in mox's field order."""

    event: Event
    queue_msg_id: int
    from_id: str
    message_id: str
    subject: str
    queued: datetime  # when the hook was composed (WebhookQueued)
    dsn: bool = False
    suppressing: bool = False
    smtp_code: int = 0
    secode: str = ""
    error: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> str:
        """The JSON body, fixed at queue time so retries send identical bytes (spec 03 §3.3)."""
        doc = {
            "Version": 0,
            "Event": self.event.value,
            "DSN": self.dsn,
            "Suppressing": self.suppressing,
            "QueueMsgID": self.queue_msg_id,
            "FromID": self.from_id,
            "MessageID": self.message_id,
            "Subject": self.subject,
            "WebhookQueued": format_time(self.queued),
            "SMTPCode": self.smtp_code,
            "SMTPEnhancedCode": enhanced_code(self.smtp_code, self.secode),
            # DSN-originated events carry no delivery error of ours (spec 03 §3.3).
            "Error": "" if self.dsn else self.error,
            # Always an object, never null (the rewrite of a mox quirk).
            "Extra": dict(self.extra),
        }
        return json.dumps(doc, ensure_ascii=False)


def failure_text(status: int, reason: str) -> str:
    """The error recorded for a reply other than 200 (spec 03 §3.5)."""
    line = f"{status} {reason}".strip()
    return f'http status "{line}", expected 200 ok'
