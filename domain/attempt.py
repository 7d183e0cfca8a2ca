"""What one delivery attempt's replies decide for each message: the plan its outcome transaction carries out.

Pure: the deliver activity gathers the facts (the journal, the suppression list, the next hop's replies)
and the outcome recorder writes the plan in one transaction (activities/attempt_record.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from domain.backoff import DELAYED_DSN_ATTEMPT
from domain.contracts import AttemptMsg, Outcome, RecipientOutcome

# The journal keeps the next hop's whole reply line; the DATA reply's code is 250 by definition.
JOURNALED_CODE = 250
# Error texts in outcomes are cut to this length: they travel through workflow history.
OUTCOME_ERROR_MAX = 1000


@dataclass(frozen=True)
class RcptReply:
    """The next hop's verdict on one recipient."""

    success: bool
    permanent: bool = False
    code: int = 0
    secode: str = ""
    error: str = ""
    # The server that gave the reply, for the mail log: "name[ip]:port" and the TLS version, if any.
    relay: str = ""


def reply_secode(reply: str) -> str:
    """The enhanced code of a reply line like "250 2.0.0 Ok", without its class digit (RFC 3463 §2)."""
    parts = reply.split()
    if len(parts) > 1 and parts[1][:2] in ("2.", "4.", "5.") and parts[1].count(".") == 2:
        return parts[1][2:]
    return ""


@dataclass
class AttemptPlan:
    """Each settled message of an attempt, by what happens to it; ids are queue message ids."""

    # Retired as delivered, with the webhook event "delivered": the reply (code, secode) to record.
    delivered: dict[int, RcptReply] = field(default_factory=dict)
    # Refused before sending (on the account's suppression list): retired as "suppressed", with a
    # failure DSN; the reply carries the error text.
    suppressed: dict[int, RcptReply] = field(default_factory=dict)
    # Temporary failures that stay queued for the next attempt.
    deferred: dict[int, RcptReply] = field(default_factory=dict)
    # Permanent failures and the last attempt's temporary ones: retired as failed, with a failure DSN.
    failed: dict[int, RcptReply] = field(default_factory=dict)
    # Deferred messages whose delayed DSN goes out now (spec 03 §1.1: after the fifth attempt).
    delayed_dsn: list[int] = field(default_factory=list)
    # What the workflow hears, per message.
    outcomes: dict[int, RecipientOutcome] = field(default_factory=dict)


def plan_attempt(
    msgs: Mapping[int, AttemptMsg],
    *,
    journaled: Mapping[int, str],
    suppressed: Mapping[int, str],
    replies: Mapping[int, RcptReply],
) -> AttemptPlan:
    """Settle every message of the attempt that has a fact about it.

    journaled maps messages whose DATA an earlier try got accepted to the journaled reply line: they are
    delivered whatever came after (DESIGN §5). suppressed maps messages refused before sending to their
    error. replies holds the next hop's verdict on the ones sent in this try.
    """
    plan = AttemptPlan()
    for i, line in journaled.items():
        plan.delivered[i] = RcptReply(True, False, JOURNALED_CODE, reply_secode(line))
        plan.outcomes[i] = RecipientOutcome(msg_id=i, outcome=Outcome.DELIVERED, code=JOURNALED_CODE)
    for i, err in suppressed.items():
        plan.suppressed[i] = RcptReply(False, True, 0, "", err)
        plan.outcomes[i] = RecipientOutcome(msg_id=i, outcome=Outcome.FAILED, error=err)
    for i, rep in replies.items():
        if rep.success:
            plan.delivered[i] = rep
            plan.outcomes[i] = RecipientOutcome(msg_id=i, outcome=Outcome.DELIVERED, code=rep.code)
            continue
        final = rep.permanent or msgs[i].final
        (plan.failed if final else plan.deferred)[i] = rep
        plan.outcomes[i] = RecipientOutcome(
            msg_id=i,
            outcome=Outcome.FAILED if final else Outcome.DEFERRED,
            code=rep.code,
            secode=rep.secode,
            error=rep.error[:OUTCOME_ERROR_MAX],
        )
        if not final and msgs[i].attempt == DELAYED_DSN_ATTEMPT:
            plan.delayed_dsn.append(i)
    return plan
