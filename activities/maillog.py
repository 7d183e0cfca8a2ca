"""The mail log: one line per recipient per delivery attempt, the record operators grep first.

Like Postfix's maillog, each line names the message, the envelope, the attempt and the next hop's verdict.
With TEMPOST_LOG_FORMAT=json the same facts are fields (event, msg_id, base_id, from, to, attempt, code,
secode, error, relay, duration_s, next_attempt), ready for a log pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from domain.addresses import envelope_path
from domain.contracts import AttemptMsg, Outcome, RecipientOutcome

log = logging.getLogger("tempost.delivery")

_EVENTS = {Outcome.DELIVERED: "delivered", Outcome.DEFERRED: "deferred", Outcome.FAILED: "failed"}


def log_attempt(
    rows: Mapping[int, Mapping],
    plan: Mapping[int, AttemptMsg],
    outcomes: Mapping[int, RecipientOutcome],
    relays: Mapping[int, str],
    started: datetime,
    ended: datetime,
) -> None:
    """Log each recipient's outcome of one attempt.

    rows are the queue rows the attempt read; relays name the server that answered for a recipient.
    """
    duration = round((ended - started).total_seconds(), 3)
    for msg_id, out in outcomes.items():
        event = _EVENTS.get(out.outcome)
        row = rows.get(msg_id)
        if event is None or row is None:
            continue
        attempt = plan[msg_id].attempt
        fields = {
            "event": event,
            "msg_id": msg_id,
            "base_id": row["base_id"],
            "from": envelope_path(row["sender_localpart"], row["sender_domain"]),
            "to": envelope_path(row["recipient_localpart"], row["recipient_domain"]),
            "attempt": attempt,
            "code": out.code,
            "secode": out.secode,
            "error": out.error,
            "relay": relays.get(msg_id, ""),
            "duration_s": duration,
        }
        reply = " ".join(str(p) for p in (out.code or "", out.secode, out.error) if p)
        line = f"{event} msg {msg_id} from <{fields['from']}> to <{fields['to']}>, attempt {attempt}"
        if out.outcome == Outcome.DEFERRED:
            fields["next_attempt"] = plan[msg_id].next_attempt.isoformat(timespec="seconds")
            line += f", next attempt {fields['next_attempt']}"
        if fields["relay"]:
            line += f", via {fields['relay']}"
        line += f" ({duration:.2f}s)" + (f": {reply}" if reply else "")
        log.log(logging.INFO if event == "delivered" else logging.WARNING, "%s", line, extra=fields)
