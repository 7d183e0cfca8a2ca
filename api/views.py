"""JSON shapes of queue records on the admin API, in mox's field names (spec 04 §3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

Row = dict[str, Any]


def _time(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def _common(r: Row) -> dict[str, Any]:
    return {
        "ID": r["id"],
        "BaseID": r["base_id"],
        "Queued": _time(r["queued"]),
        "SenderAccount": r["sender_account"],
        "SenderLocalpart": r["sender_localpart"],
        "SenderDomainStr": r["sender_domain_str"],
        "FromID": r["from_id"],
        "RecipientLocalpart": r["recipient_localpart"],
        "RecipientDomain": r["recipient_domain"],
        "RecipientDomainStr": r["recipient_domain_str"],
        "Attempts": r["attempts"],
        "MaxAttempts": r["max_attempts"],
        "DialedIPs": r["dialed_ips"],
        "LastAttempt": _time(r["last_attempt"]),
        "Results": r["results"],
        "Has8bit": r["has8bit"],
        "SMTPUTF8": r["smtputf8"],
        "IsDMARCReport": r["is_dmarc_report"],
        "IsTLSReport": r["is_tls_report"],
        "Size": r["size"],
        "MessageID": r["message_id"],
        "Subject": r["subject"],
        "Transport": r["transport"],
        "RequireTLS": r["require_tls"],
        "FutureReleaseRequest": r["future_release_request"],
        "Extra": r["extra"],
    }


def queued_msg(r: Row) -> dict[str, Any]:
    """A queued message (mox's Msg)."""
    d = _common(r)
    d.update(
        Hold=r["hold"],
        SenderDomain=r["sender_domain"],
        NextAttempt=_time(r["next_attempt"]),
    )
    return d


def retired_msg(r: Row) -> dict[str, Any]:
    """A retired message (mox's MsgRetired)."""
    d = _common(r)
    d.update(
        RecipientAddress=r["recipient_address"],
        Success=r["success"],
        Event=r["event"],
        LastActivity=_time(r["last_activity"]),
        KeepUntil=_time(r["keep_until"]),
    )
    return d
