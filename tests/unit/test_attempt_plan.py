"""How an attempt's facts settle each message (domain/attempt.py), without a server."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.attempt import RcptReply, plan_attempt, reply_secode
from domain.backoff import DELAYED_DSN_ATTEMPT
from domain.contracts import AttemptMsg, Outcome

NEXT = datetime(2026, 12, 1, tzinfo=UTC)


def msg(i: int, attempt: int = 1, final: bool = False) -> AttemptMsg:
    return AttemptMsg(id=i, attempt=attempt, next_attempt=NEXT, final=final)


def test_each_fact_settles_its_message_once() -> None:
    msgs = {i: msg(i) for i in range(1, 6)}
    plan = plan_attempt(
        msgs,
        journaled={1: "250 2.0.0 queued as X"},
        suppressed={2: "on the list"},
        replies={
            3: RcptReply(True, False, 250, "0.0"),
            4: RcptReply(False, False, 451, "2.0", "451 busy"),
            5: RcptReply(False, True, 550, "1.1", "550 no such user"),
        },
    )
    # An acceptance an earlier try journaled is delivered, with the journaled reply's enhanced code.
    assert plan.delivered[1] == RcptReply(True, False, 250, "0.0")
    assert set(plan.delivered) == {1, 3} and set(plan.suppressed) == {2}
    assert set(plan.deferred) == {4} and set(plan.failed) == {5} and plan.delayed_dsn == []
    assert {i: o.outcome for i, o in plan.outcomes.items()} == {
        1: Outcome.DELIVERED,
        2: Outcome.FAILED,
        3: Outcome.DELIVERED,
        4: Outcome.DEFERRED,
        5: Outcome.FAILED,
    }
    assert plan.outcomes[2].error == "on the list" and plan.outcomes[5].code == 550


def test_temporary_failure_of_the_last_attempt_fails_and_the_fifth_sends_the_delayed_dsn() -> None:
    msgs = {1: msg(1, attempt=3, final=True), 2: msg(2, attempt=DELAYED_DSN_ATTEMPT)}
    temp = RcptReply(False, False, 451, "", "451 later " + "x" * 2000)
    plan = plan_attempt(msgs, journaled={}, suppressed={}, replies={1: temp, 2: temp})
    assert set(plan.failed) == {1} and set(plan.deferred) == {2} and plan.delayed_dsn == [2]
    # The error travels through workflow history: it is cut, the recorded reply is not.
    assert len(plan.outcomes[2].error) == 1000 and plan.deferred[2].error == temp.error


def test_reply_secode() -> None:
    assert reply_secode("250 2.0.0 Ok") == "0.0"
    assert reply_secode("250 Ok") == "" and reply_secode("") == ""
