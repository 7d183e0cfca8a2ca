"""DSN composition (spec 03 §1; RFC 3464, RFC 6533)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from domain.dsn import DSNError, DSNInput, DSNKind, compose_dsn, header_section, xtext_address

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ORIGINAL = b"From: a@example.org\r\nSubject: hi\r\nMessage-Id: <m1@example.org>\r\n\r\nbody text\r\n"


def _input(**kw: object) -> DSNInput:
    base: dict[str, object] = dict(
        kind=DSNKind.FAILED,
        hostname="mail.example.org",
        sender_path="a@example.org",
        recipient="b@example.com",
        recipient_unicode="b@example.com",
        message_id="<m1@example.org>",
        queued=NOW - timedelta(hours=2),
        last_attempt=NOW,
        error="550 5.1.1 no such user",
        secode="1.1",
        smtp_response=["5.1.1 no such user"],
        original_headers=header_section(ORIGINAL),
    )
    base.update(kw)
    return DSNInput(**base)  # type: ignore[arg-type]


def test_failure_dsn_parts_and_fields() -> None:
    data = compose_dsn(_input(), now=NOW, random_token=lambda: "tok")
    msg = message_from_bytes(data, policy=default_policy)
    assert msg["Subject"] == "mail delivery failed" and b"\r\nDate: 24 Nov 2026 12:00:00 +0000\r\n" in data
    human, status, headers = msg.get_payload()  # type: ignore[misc]
    per_msg, per_rcpt = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; mail.example.org"
    assert per_rcpt["Status"] == "5.1.1 (550 5.1.1 no such user)"
    assert "Will-Retry-Until" not in per_rcpt
    assert b"body text" not in data


def test_delayed_dsn_states_the_real_next_attempts() -> None:
    upcoming = [NOW + timedelta(hours=2), NOW + timedelta(hours=6)]
    data = compose_dsn(
        _input(kind=DSNKind.DELAYED, error="451 busy", secode="", next_attempts=upcoming),
        now=NOW,
        random_token=lambda: "tok",
    )
    msg = message_from_bytes(data, policy=default_policy)
    human = msg.get_payload()[0].get_content()  # type: ignore[index]
    assert "24 Nov 2026 14:00:00 +0000" in human and "24 Nov 2026 18:00:00 +0000" in human
    per_rcpt = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
    assert (
        per_rcpt["Status"] == "4.0.0 (451 busy)"
        and per_rcpt["Will-Retry-Until"] == "25 Nov 2026 16:00:00 +0000"
    )


def test_global_variant_for_smtputf8_messages() -> None:
    data = compose_dsn(
        _input(recipient="x@example.com", recipient_unicode="δοκιμή@παράδειγμα.example", smtputf8=True),
        now=NOW,
        random_token=lambda: "tok",
    )
    assert b"message/global-delivery-status" in data and b"message/global-headers" in data
    assert "Final-Recipient: utf-8;δοκιμή@παράδειγμα.example".encode() in data


def test_xtext_escapes_plus_equals_and_non_ascii() -> None:
    assert xtext_address("a+b=c@example.com") == "a\\x{2b}b\\x{3d}c@example.com"
    assert xtext_address("ü@example.com") == "\\x{fc}@example.com"


def test_no_dsn_without_message_id_or_header_separator() -> None:
    with pytest.raises(DSNError):
        compose_dsn(_input(message_id=""), now=NOW, random_token=lambda: "t")
    with pytest.raises(DSNError):
        header_section(b"Subject: no body separator\r\n")
