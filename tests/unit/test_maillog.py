"""The mail log line per recipient and attempt, and the JSON log format."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from activities.maillog import log_attempt
from deploy.logs import JSONFormatter, configure
from domain.contracts import AttemptMsg, Outcome, RecipientOutcome

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _row(msg_id: int, rcpt: str) -> dict:
    local, _, domain = rcpt.partition("@")
    return {
        "id": msg_id,
        "base_id": 7,
        "sender_localpart": "alice",
        "sender_domain": "example.org",
        "recipient_localpart": local,
        "recipient_domain": domain,
    }


def test_one_line_per_recipient_with_the_verdict(caplog: pytest.LogCaptureFixture) -> None:
    rows = {7: _row(7, "bob@example.com"), 8: _row(8, "carol@example.com"), 9: _row(9, "dan@example.com")}
    retry = T0 + timedelta(minutes=7, seconds=30)
    plan = {i: AttemptMsg(id=i, attempt=2, next_attempt=retry, final=False) for i in rows}
    outcomes = {
        7: RecipientOutcome(msg_id=7, outcome=Outcome.DELIVERED, code=250),
        8: RecipientOutcome(msg_id=8, outcome=Outcome.DEFERRED, code=451, secode="4.7.1", error="greylisted"),
        9: RecipientOutcome(msg_id=9, outcome=Outcome.FAILED, code=550, secode="5.1.1", error="no such user"),
    }
    with caplog.at_level(logging.INFO, logger="tempost.delivery"):
        relays = {7: "mx.example.com[192.0.2.1]:25 TLSv1.3", 8: "[192.0.2.2]:25"}
        log_attempt(rows, plan, outcomes, relays, T0, T0 + timedelta(milliseconds=250))
    lines = {r.msg_id: r for r in caplog.records}  # type: ignore[attr-defined]
    assert lines[7].getMessage() == (
        "delivered msg 7 from <alice@example.org> to <bob@example.com>, attempt 2, "
        "via mx.example.com[192.0.2.1]:25 TLSv1.3 (0.25s): 250"
    )
    assert lines[7].levelno == logging.INFO
    assert lines[8].getMessage() == (
        "deferred msg 8 from <alice@example.org> to <carol@example.com>, attempt 2, "
        "next attempt 2026-11-27T12:07:30+00:00, via [192.0.2.2]:25 (0.25s): 451 4.7.1 greylisted"
    )
    assert lines[8].levelno == logging.WARNING and lines[8].next_attempt == "2026-11-27T12:07:30+00:00"  # type: ignore[attr-defined]
    assert lines[8].relay == "[192.0.2.2]:25" and lines[9].relay == ""  # type: ignore[attr-defined]
    assert lines[9].event == "failed" and lines[9].code == 550 and lines[9].secode == "5.1.1"  # type: ignore[attr-defined]


def test_busy_and_vanished_recipients_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    plan = {1: AttemptMsg(id=1, attempt=1, next_attempt=T0, final=False)}
    with caplog.at_level(logging.INFO, logger="tempost.delivery"):
        log_attempt(
            {1: _row(1, "a@b.example")},
            plan,
            {1: RecipientOutcome(msg_id=1, outcome=Outcome.BUSY)},
            {},
            T0,
            T0,
        )
        log_attempt({}, plan, {1: RecipientOutcome(msg_id=1, outcome=Outcome.DELIVERED)}, {}, T0, T0)
    assert caplog.records == []


def test_json_lines_carry_the_fields() -> None:
    record = logging.LogRecord(
        "tempost.delivery", logging.WARNING, __file__, 1, "%s", ("deferred msg 8",), None
    )
    record.__dict__.update({"event": "deferred", "msg_id": 8, "to": "carol@example.com", "when": T0})
    out = json.loads(JSONFormatter().format(record))
    assert out["level"] == "warning" and out["logger"] == "tempost.delivery"
    assert out["message"] == "deferred msg 8"
    assert out["event"] == "deferred" and out["msg_id"] == 8 and out["to"] == "carol@example.com"
    assert out["when"] == str(T0)
    assert "args" not in out and "levelno" not in out


def test_log_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv("TEMPOST_LOG_FORMAT", "xml")
        with pytest.raises(SystemExit, match="text or json"):
            configure()
        monkeypatch.setenv("TEMPOST_LOG_FORMAT", "json")
        monkeypatch.setenv("TEMPOST_LOG_LEVEL", "loud")
        with pytest.raises(SystemExit, match="not a level"):
            configure()
        monkeypatch.setenv("TEMPOST_LOG_LEVEL", "warning")
        configure()
        assert root.level == logging.WARNING and isinstance(root.handlers[0].formatter, JSONFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
