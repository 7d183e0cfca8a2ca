"""Parsing and classifying incoming DSNs (spec 03 §1.9, §4.3; RFC 3464, RFC 6522, RFC 6533)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.dsn import DSNInput, DSNKind, compose_dsn
from domain.dsnparse import (
    Classification,
    DSNParseError,
    RecipientStatus,
    classify,
    is_report,
    parse_dsn,
    reply_codes,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ORIGINAL_HEADERS = b"From: a@example.org\r\nSubject: hi\r\nMessage-Id: <m1@example.org>\r\n"


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def _composed(**kw: object) -> bytes:
    base: dict[str, object] = dict(
        kind=DSNKind.FAILED,
        hostname="mail.example.org",
        sender_path="a+fromid@example.org",
        recipient="b@example.com",
        recipient_unicode="b@example.com",
        message_id="<m1@example.org>",
        queued=NOW - timedelta(hours=2),
        last_attempt=NOW,
        error="550 5.1.1 no such user",
        secode="1.1",
        smtp_response=["550 5.1.1 no such user"],
        remote_mta="mx.example.com",
        original_headers=ORIGINAL_HEADERS,
    )
    base.update(kw)
    return compose_dsn(DSNInput(**base), now=NOW, random_token=lambda: "tok")  # type: ignore[arg-type]


def _report(status: str, *, status_type: str = "message/delivery-status", extra_parts: int = 1) -> bytes:
    """A minimal multipart/report around the given delivery-status text."""
    text = (
        "From: <postmaster@mx.example.net>\n"
        "To: <a+fromid@example.org>\n"
        "Subject: Delivery report\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type="delivery-status"; boundary="b1"\n'
        "\n"
        "--b1\n"
        "Content-Type: text/plain\n"
        "\n"
        "Report.\n"
        "--b1\n"
        f"Content-Type: {status_type}\n"
        "\n"
        f"{status}"
    )
    for _ in range(extra_parts):
        text += "--b1\nContent-Type: text/rfc822-headers\n\nSubject: hi\n"
    return _crlf(text + "--b1--\n")


ONE_RECIPIENT = """Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; user@example.com
Action: {action}
Status: 5.0.0
Diagnostic-Code: smtp; 554 5.0.0 error
"""

POSTFIX_BOUNCE = _crlf(
    """Return-Path: <>
Received: by mail.example.org (Postfix)
\tid 4VJ1X2Y3Z4; Mon, 15 Apr 2024 10:00:01 +0200 (CEST)
Date: Mon, 15 Apr 2024 10:00:01 +0200 (CEST)
From: MAILER-DAEMON@mail.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: sender+fromid@example.org
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4VJ1X2Y3Z4.1713168001/mail.example.org"
Content-Transfer-Encoding: 7bit
Message-Id: <20240415080001.4VJ1X2Y3Z4@mail.example.org>

This is a MIME-encapsulated message.

--4VJ1X2Y3Z4.1713168001/mail.example.org
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<nobody@example.com>: host mx.example.com[192.0.2.25] said: 550 5.1.1
    <nobody@example.com>: Recipient address rejected: User unknown (in reply to
    RCPT TO command)

--4VJ1X2Y3Z4.1713168001/mail.example.org
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.org
X-Postfix-Queue-ID: 4VJ1X2Y3Z4
X-Postfix-Sender: rfc822; sender+fromid@example.org
Arrival-Date: Mon, 15 Apr 2024 10:00:00 +0200 (CEST)

Final-Recipient: rfc822; nobody@example.com
Original-Recipient: rfc822;nobody@example.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>: Recipient address
    rejected: User unknown

--4VJ1X2Y3Z4.1713168001/mail.example.org
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <sender+fromid@example.org>
From: sender@example.org
To: nobody@example.com
Subject: hello
Message-Id: <m1@example.org>

--4VJ1X2Y3Z4.1713168001/mail.example.org--
"""
)

EXIM_BOUNCE = _crlf(
    """Return-path: <>
Envelope-to: sender@example.org
Received: from mail by mx.example.net with local (Exim 4.96)
\tid 1rwXyZ-000ABC-12
\tfor sender@example.org;
\tMon, 15 Apr 2024 11:00:00 +0000
X-Failed-Recipients: user@example.com
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: sender@example.org
Content-Type: multipart/report; report-type=delivery-status; boundary=1713178800-eximdsn-1804289383
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1rwXyZ-000ABC-12@mx.example.net>
Date: Mon, 15 Apr 2024 11:00:00 +0000

--1713178800-eximdsn-1804289383
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  user@example.com
    mailbox is full: retry timeout exceeded

--1713178800-eximdsn-1804289383
Content-type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Action: failed
Final-Recipient: rfc822;user@example.com
Status: 5.0.0
X-Exim-Diagnostic: X-str; mailbox is full: retry timeout exceeded
Diagnostic-Code: X-Exim; mailbox is full: retry timeout exceeded

--1713178800-eximdsn-1804289383
Content-type: message/rfc822

Return-path: <sender@example.org>
From: sender@example.org
To: user@example.com
Subject: hello
Message-Id: <m2@example.org>

hello
--1713178800-eximdsn-1804289383--
"""
)

GMAIL_DELAY = _crlf(
    """Return-Path: <>
MIME-Version: 1.0
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: sender+fromid@example.org
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Delay)
Message-ID: <6620c0de.abc@mx.google.com>
Date: Mon, 15 Apr 2024 05:12:34 -0700 (PDT)
Content-Type: multipart/report; boundary="000000000000a1b2c3d4e5f60718"; report-type=delivery-status

--000000000000a1b2c3d4e5f60718
Content-Type: multipart/related; boundary="000000000000a1b2c3d4e5f60729"

--000000000000a1b2c3d4e5f60729
Content-Type: multipart/alternative; boundary="000000000000a1b2c3d4e5f6073a"

--000000000000a1b2c3d4e5f6073a
Content-Type: text/plain; charset="UTF-8"

** Message not delivered yet **

There was a temporary problem delivering your message to friend@example.net.
Gmail will retry for 46 more hours.
--000000000000a1b2c3d4e5f6073a
Content-Type: text/html; charset="UTF-8"

<html><body><p>Message not delivered yet</p></body></html>
--000000000000a1b2c3d4e5f6073a--
--000000000000a1b2c3d4e5f60729--
--000000000000a1b2c3d4e5f60718
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; sender@example.org
Arrival-Date: Mon, 15 Apr 2024 01:02:03 -0700 (PDT)
X-Original-Message-ID: <CAxyz@mail.gmail.com>

Final-Recipient: rfc822; friend@example.net
Action: delayed
Status: 4.4.1
Diagnostic-Code: smtp; The recipient server did not accept our requests to
 connect. Learn more at https://support.google.com/mail/answer/7720
 [mx.example.net 192.0.2.7: timed out]
Last-Attempt-Date: Mon, 15 Apr 2024 05:12:34 -0700 (PDT)
Will-Retry-Until: Tue, 16 Apr 2024 01:02:03 -0700 (PDT)

--000000000000a1b2c3d4e5f60718
Content-Type: message/rfc822

From: sender@example.org
To: friend@example.net
Subject: hello

hello
--000000000000a1b2c3d4e5f60718--
"""
)


def test_dsn_composed_by_tempost_round_trips() -> None:
    data = _composed()
    assert is_report(data)
    dsn = parse_dsn(data)
    assert dsn.reporting_mta == "mail.example.org" and dsn.global_ is False
    (r,) = dsn.recipients
    assert r.final_recipient == "b@example.com" and r.original_recipient == ""
    assert r.action == "failed" and r.status == "5.1.1"
    assert r.diagnostic_code == "smtp; 550 5.1.1 no such user"
    assert r.remote_mta == "dns;mx.example.com"
    assert r.last_attempt_date == NOW and r.will_retry_until is None
    assert classify(data) == Classification("failed", True, 550, "1.1", "", "b@example.com")


def test_delayed_dsn_composed_by_tempost_falls_back_to_status_codes() -> None:
    data = _composed(kind=DSNKind.DELAYED, error="connection refused", secode="", smtp_response=[])
    (r,) = parse_dsn(data).recipients
    assert r.action == "delayed" and r.status == "4.0.0" and r.diagnostic_code == ""
    assert r.will_retry_until == NOW + timedelta(hours=28)
    assert classify(data) == Classification("delayed", True, 400, "0.0", "", "b@example.com")


def test_composed_xtext_localpart_is_decoded() -> None:
    data = _composed(recipient="a+b@example.com", recipient_unicode="a+b@example.com")
    assert b"Final-Recipient: rfc822;a\\x{2b}b@example.com" in data
    assert parse_dsn(data).recipients[0].final_recipient == "a+b@example.com"


def test_postfix_bounce_is_failed_550_with_secode() -> None:
    dsn = parse_dsn(POSTFIX_BOUNCE)
    assert dsn.reporting_mta == "mail.example.org"
    (r,) = dsn.recipients
    assert r.final_recipient == "nobody@example.com" and r.original_recipient == "nobody@example.com"
    assert r.remote_mta == "dns; mx.example.com" and r.last_attempt_date is None
    assert " ".join(r.diagnostic_code.split()) == (
        "smtp; 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    )
    assert classify(POSTFIX_BOUNCE) == Classification("failed", True, 550, "1.1", "", "nobody@example.com")


def test_exim_bounce_with_non_smtp_diagnostic_uses_status_codes() -> None:
    (r,) = parse_dsn(EXIM_BOUNCE).recipients
    assert r.diagnostic_code == "X-Exim; mailbox is full: retry timeout exceeded"
    assert reply_codes(r) == (500, "0.0")
    assert classify(EXIM_BOUNCE) == Classification("failed", True, 500, "0.0", "", "user@example.com")


def test_gmail_delay_with_nested_first_part_and_weekday_dates() -> None:
    dsn = parse_dsn(GMAIL_DELAY)
    assert dsn.reporting_mta == "googlemail.com"
    (r,) = dsn.recipients
    pdt = timezone(timedelta(hours=-7))
    assert r.last_attempt_date == datetime(2024, 4, 15, 5, 12, 34, tzinfo=pdt)
    assert r.will_retry_until == datetime(2024, 4, 16, 1, 2, 3, tzinfo=pdt)
    assert "\n" not in r.diagnostic_code and r.diagnostic_code.endswith("timed out]")
    assert classify(GMAIL_DELAY) == Classification("delayed", True, 400, "4.1", "", "friend@example.net")


def test_two_recipient_blocks_are_unrecognized() -> None:
    status = ONE_RECIPIENT.format(action="failed") + "\nFinal-Recipient: rfc822;other@example.com\n"
    status += "Action: failed\nStatus: 5.1.1\n"
    data = _report(status)
    assert len(parse_dsn(data).recipients) == 2
    assert classify(data) == Classification(
        "unrecognized", True, 0, "", "incoming dsn has 2 recipients, expecting 1", ""
    )


def test_bogus_action_is_a_parse_error_and_unrecognized() -> None:
    data = _report(ONE_RECIPIENT.format(action="bogus"))
    with pytest.raises(DSNParseError, match="unknown action"):
        parse_dsn(data)
    result = classify(data)
    assert result.event == "unrecognized" and result.dsn is True and result.code == 0
    assert result.error.startswith("parsing incoming dsn: ")


def test_plain_text_message_is_not_a_dsn() -> None:
    data = _crlf("From: a@example.net\nTo: a+fromid@example.org\nSubject: hi\n\nHello there.\n")
    assert not is_report(data)
    with pytest.raises(DSNParseError, match="not multipart/report"):
        parse_dsn(data)
    assert classify(data) == Classification("unrecognized", False, 0, "", "incoming message not a dsn", "")


def test_global_dsn_with_utf8_address() -> None:
    data = _composed(recipient="x@example.com", recipient_unicode="δοκιμή@παράδειγμα.example", smtputf8=True)
    dsn = parse_dsn(data)
    assert dsn.global_ is True
    assert dsn.recipients[0].final_recipient == "δοκιμή@παράδειγμα.example"
    assert classify(data).recipient == "δοκιμή@παράδειγμα.example"


def test_utf8_address_type_outside_global_dsn_is_rejected() -> None:
    status = "Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: utf-8; u@example.com\n"
    status += "Action: failed\nStatus: 5.1.1\n"
    with pytest.raises(DSNParseError, match="unsupported address type"):
        parse_dsn(_report(status))
    assert parse_dsn(_report(status, status_type="message/global-delivery-status")).global_ is True


@pytest.mark.parametrize("action", ["relayed", "delivered", "delayed", "Delivered"])
def test_non_failure_actions_keep_claimed_codes(action: str) -> None:
    data = _report(ONE_RECIPIENT.format(action=action))
    assert classify(data) == Classification(action.lower(), True, 554, "0.0", "", "user@example.com")


def test_missing_reporting_mta_is_an_error() -> None:
    data = _report("Arrival-Date: Mon, 15 Apr 2024 10:00:00 +0200\n\n" + ONE_RECIPIENT.split("\n\n")[1])
    with pytest.raises(DSNParseError, match="reporting-mta"):
        parse_dsn(data)
    assert classify(data).error.startswith("parsing incoming dsn: per-message block: missing")


@pytest.mark.parametrize(
    "status, message",
    [
        ("Reporting-MTA: x400; foo\n\n" + ONE_RECIPIENT.split("\n\n")[1], "expected dns"),
        ("Reporting-MTA: dns; a\nReporting-MTA: dns; b\n\n" + ONE_RECIPIENT.split("\n\n")[1], "duplicate"),
        ("Reporting-MTA: dns; a\n\nFinal-Recipient: rfc822; u@example.com\nAction: failed\n", "status"),
        ("Reporting-MTA: dns; a\n\nAction: failed\nStatus: 5.0.0\n", "final-recipient"),
        (ONE_RECIPIENT.format(action="failed") + "Last-Attempt-Date: yesterday\n", "unparsable date"),
        ("Reporting-MTA: dns; a\nnot a field line\n", "malformed line"),
    ],
)
def test_malformed_status_parts_are_rejected(status: str, message: str) -> None:
    with pytest.raises(DSNParseError, match=message):
        parse_dsn(_report(status))


def test_unparsable_will_retry_until_is_ignored() -> None:
    data = _report(ONE_RECIPIENT.format(action="delayed") + "Will-Retry-Until: someday (soon)\n")
    assert parse_dsn(data).recipients[0].will_retry_until is None


def test_part_count_and_second_part_type_are_checked() -> None:
    status = ONE_RECIPIENT.format(action="failed")
    assert not is_report(_report(status, status_type="text/plain"))
    with pytest.raises(DSNParseError, match="expected 2 or 3"):
        parse_dsn(_report(status, extra_parts=2))
    assert is_report(_report(status, extra_parts=2))
    assert len(parse_dsn(_report(status, extra_parts=0)).recipients) == 1


@pytest.mark.parametrize(
    "diagnostic, status, codes",
    [
        ("smtp; 550 5.1.1 user unknown", "5.1.1", (550, "1.1")),
        ("smtp; 250 2.0.0 ok", "2.0.0", (250, "")),
        ("smtp; 421 try later", "4.7.0", (421, "")),
        ("smtp; 55 short code", "5.2.2", (500, "2.2")),
        ("X-Postfix; host said: 550 no", "5.0.0", (500, "0.0")),
        ("", "2.0.0", (0, "")),
    ],
)
def test_reply_codes_from_diagnostic_or_status(diagnostic: str, status: str, codes: tuple[int, str]) -> None:
    r = RecipientStatus("u@example.com", "", "failed", status, diagnostic, "", None, None)
    assert reply_codes(r) == codes


def test_truncated_messages_parse_or_raise_dsn_parse_error() -> None:
    for cut in range(0, len(POSTFIX_BOUNCE), 7):
        data = POSTFIX_BOUNCE[:cut]
        try:
            parse_dsn(data)
        except DSNParseError:
            pass
        assert classify(data).event in {"failed", "unrecognized"}
