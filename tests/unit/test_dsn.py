"""DSN composition (spec 03 §1; RFC 3464, RFC 6533)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from domain.dsn import DSNError, DSNInput, DSNKind, compose_dsn, header_section, xtext_address
from domain.dsnparse import parse_dsn

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


# --- Spec 03 scenarios 1-6: compose, then read back with the incoming-DSN parser ---


def _parts(data: bytes) -> list[tuple[str, str, str | None]]:
    """(content type, transfer encoding, charset) of the report and each of its parts."""
    msg = message_from_bytes(data)
    out = [(msg.get_content_type(), "", None)]
    for part in msg.get_payload():  # type: ignore[union-attr]
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).lower()
        out.append((part.get_content_type(), cte, part.get_param("charset")))
    return out


def test_01_ascii_dsn_three_parts_and_final_recipient_round_trips() -> None:
    data = compose_dsn(_input(original_headers=b"Subject: test\r\n"), now=NOW, random_token=lambda: "tok")
    assert _parts(data) == [
        ("multipart/report", "", None),
        ("text/plain", "7bit", None),
        ("message/delivery-status", "7bit", None),
        ("text/rfc822-headers", "7bit", None),
    ]
    parsed = parse_dsn(data)
    assert [r.final_recipient for r in parsed.recipients] == ["b@example.com"]
    assert parsed.reporting_mta == "mail.example.org" and not parsed.global_


UTF8_HEADERS = "Subject: møx\r\nFrom: møx@remøte.example\r\n".encode()


def test_03_utf8_dsn_for_an_ascii_path_escapes_the_recipient() -> None:
    inp = _input(
        recipient="møx@xn--remte-kua.example",
        recipient_unicode="møx@remøte.example",
        original_headers=UTF8_HEADERS,
        smtputf8=False,
    )
    data = compose_dsn(inp, now=NOW, random_token=lambda: "tok")
    types = _parts(data)
    assert types[2][:2] == ("message/delivery-status", "7bit")
    assert types[3] == ("text/rfc822-headers", "base64", "utf-8")
    # The machine-readable recipient is escaped (RFC 6533 §3), and decodes back.
    assert b"Final-Recipient: rfc822;m\\x{f8}x@" in data
    [r] = parse_dsn(data).recipients
    assert r.final_recipient.startswith("møx@")


def test_04_utf8_dsn_for_a_utf8_path_uses_the_global_types() -> None:
    inp = _input(
        recipient="møx@remøte.example",
        recipient_unicode="møx@remøte.example",
        original_headers=UTF8_HEADERS,
        smtputf8=True,
    )
    data = compose_dsn(inp, now=NOW, random_token=lambda: "tok")
    assert [t[:2] for t in _parts(data)[1:]] == [
        ("text/plain", "8bit"),
        ("message/global-delivery-status", "8bit"),
        ("message/global-headers", "8bit"),
    ]
    parsed = parse_dsn(data)
    assert parsed.global_ and parsed.recipients[0].final_recipient == "møx@remøte.example"


def test_05_dsn_without_original_headers_has_two_parts() -> None:
    data = compose_dsn(_input(original_headers=b"", smtputf8=True), now=NOW, random_token=lambda: "tok")
    assert len(_parts(data)) == 3  # the report and its two parts
    assert len(parse_dsn(data).recipients) == 1


def test_06_future_release_request_and_remote_mta_compose_and_parse() -> None:
    data = compose_dsn(
        _input(future_release_request="for;123", remote_mta="mx.example.com"),
        now=NOW,
        random_token=lambda: "tok",
    )
    assert b"Future-Release-Request: for;123\r\n" in data
    [r] = parse_dsn(data).recipients
    assert r.action == "failed" and r.status == "5.1.1" and "mx.example.com" in r.remote_mta
