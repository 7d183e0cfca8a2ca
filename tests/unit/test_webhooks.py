"""Pure webhook rules: retry schedule, payload fields and order, FromID addresses (spec 03 §3, §4.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.fromid import from_id_of, sender_localpart
from domain.webhooks import (
    MAX_ATTEMPTS,
    Event,
    Outgoing,
    enhanced_code,
    failure_text,
    format_time,
    is_final,
    retry_delay,
    subscribed,
)

MINUTE = timedelta(minutes=1)


def test_schedule_is_moxs_1m_to_16h_over_12_attempts() -> None:
    waits = [retry_delay(n, MINUTE, 0.0) for n in range(11)]
    assert waits == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
        timedelta(minutes=7, seconds=30),
        timedelta(minutes=15),
        timedelta(minutes=30),
        timedelta(hours=1),
        timedelta(hours=2),
        timedelta(hours=4),
        timedelta(hours=8),
        timedelta(hours=16),
    ]
    # About 32 hours from the first attempt to the last.
    assert timedelta(hours=31) < sum(waits, timedelta()) < timedelta(hours=32)
    assert MAX_ATTEMPTS == 12
    assert not is_final(11, False) and is_final(12, False) and is_final(1, True)


def test_jitter_is_within_one_percent_and_scales_with_the_first_wait() -> None:
    assert retry_delay(0, MINUTE, -0.01) == timedelta(seconds=59.4)
    assert retry_delay(0, MINUTE, 0.0099) == timedelta(seconds=60.594)
    assert retry_delay(3, timedelta(milliseconds=10), 0.0) == timedelta(milliseconds=75)
    with pytest.raises(ValueError):
        retry_delay(0, MINUTE, 0.02)


def test_empty_event_filter_means_all() -> None:
    assert subscribed([], Event.CANCELED)
    assert subscribed(["failed"], Event.FAILED) and not subscribed(["failed"], Event.DELIVERED)


def test_payload_fields_in_moxs_order() -> None:
    queued = datetime(2024, 4, 15, 10, 0, 5, 123000, tzinfo=UTC)
    out = Outgoing(
        event=Event.FAILED,
        queue_msg_id=10010,
        from_id="ZfV16EATHwKEufrSMo055Q",
        message_id="<abc@example.org>",
        subject="hi ☺",
        queued=queued,
        suppressing=True,
        smtp_code=554,
        secode="5.1",
        error="554 5.5.1 no",
        extra={"a": "1"},
    )
    doc = json.loads(out.payload())
    assert list(doc.items()) == [
        ("Version", 0),
        ("Event", "failed"),
        ("DSN", False),
        ("Suppressing", True),
        ("QueueMsgID", 10010),
        ("FromID", "ZfV16EATHwKEufrSMo055Q"),
        ("MessageID", "<abc@example.org>"),
        ("Subject", "hi ☺"),
        ("WebhookQueued", "2024-04-15T10:00:05.123Z"),
        ("SMTPCode", 554),
        ("SMTPEnhancedCode", "5.5.1"),
        ("Error", "554 5.5.1 no"),
        ("Extra", {"a": "1"}),
    ]
    # DSN-originated events carry no error of ours, and Extra is never null.
    dsn = Outgoing(Event.DELAYED, 1, "", "", "", queued, dsn=True, error="ignored", extra={})
    assert json.loads(dsn.payload())["Error"] == "" and json.loads(dsn.payload())["Extra"] == {}


def test_enhanced_code_and_times_and_failure_text() -> None:
    assert (
        enhanced_code(550, "1.1") == "5.1.1"
        and enhanced_code(550, "") == ""
        and enhanced_code(0, "1.1") == ""
    )
    assert format_time(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    plus2 = datetime(2024, 1, 2, 3, 4, 5, 500, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus2) == "2024-01-02T05:04:05.0005+02:00"
    assert (
        failure_text(500, "Internal Server Error")
        == 'http status "500 Internal Server Error", expected 200 ok'
    )
    assert failure_text(599, "") == 'http status "599", expected 200 ok'


def test_fromid_mail_from_and_matching() -> None:
    assert sender_localpart("alice", "+", "abc") == "alice+abc"
    # The base is the From localpart up to its first separator.
    assert sender_localpart("alice+news", "+", "abc") == "alice+abc"
    assert from_id_of("alice+abc", "+") == "abc"
    assert from_id_of("alice+abc+def", "+") == "abc+def"
    assert from_id_of("alice", "+") == "" and from_id_of("alice+abc", "") == ""
