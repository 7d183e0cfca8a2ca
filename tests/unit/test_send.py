"""Send composition (spec 03 §5.4): what the recipient's mail reader gets, and every refusal code."""

from __future__ import annotations

import base64
import itertools
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest

from domain.errors import WebAPIError
from domain.send import (
    MAX_RECIPIENTS,
    AccountIdentity,
    ComposedMessage,
    UploadedFile,
    compose_send,
    decode_send_request,
)

NOW = datetime(2026, 11, 24, 10, 30, 0, tzinfo=UTC)
ACCOUNT = AccountIdentity(
    name="alice", full_name="Alice Ä", addresses=["alice@example.org", "sales@example.org"]
)


def compose(obj: dict[str, Any], **kw: Any) -> ComposedMessage:
    tokens = (f"tok{i}" for i in itertools.count())
    args: dict[str, Any] = dict(
        login_address="alice@example.org",
        account=ACCOUNT,
        hostname="mail.example.org",
        now=NOW,
        max_message_size=1 << 20,
        random_token=lambda: next(tokens),
        inline_uploads=[],
        attached_uploads=[],
    )
    args.update(kw)
    return compose_send(decode_send_request(json.dumps(obj)), **args)


def parsed(m: ComposedMessage) -> EmailMessage:
    msg = message_from_bytes(m.data, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def code_of(obj: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(WebAPIError) as err:
        compose(obj, **kw)
    return err.value.code


def test_minimal_message_defaults_from_date_and_message_id() -> None:
    m = compose({"To": [{"Address": "bob@example.com"}], "Subject": "hi", "Text": "hello"})
    msg = parsed(m)
    assert msg["From"] == "Alice Ä <alice@example.org>"
    assert msg["To"] == "bob@example.com"
    assert b"\r\nDate: 24 Nov 2026 10:30:00 +0000\r\n" in m.data
    assert m.message_id == msg["Message-Id"] == "<tok0@mail.example.org>"
    assert msg["User-Agent"] and msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain" and msg.get_content() == "hello\r\n"
    # Received and DKIM-Signature go into the submission's prefix when it is queued, not the message.
    assert msg["Received"] is None and m.dkim_domain == "example.org"
    assert [a for _, a in m.recipients][0].ascii == "bob@example.com"
    assert not m.has8bit and not m.smtputf8 and m.future_release is None


def test_every_line_ends_in_crlf() -> None:
    m = compose({"To": [{"Address": "b@x.example"}], "Text": "one\ntwo\r\nthree", "HTML": "<p>x</p>"})
    assert b"\n" not in m.data.replace(b"\r\n", b"")


def test_bcc_is_a_recipient_but_never_a_header_and_order_is_to_cc_bcc() -> None:
    m = compose(
        {
            "To": [{"Address": "a@x.example"}],
            "CC": [{"Address": "c@x.example"}],
            "BCC": [{"Address": "secret@y.example"}],
            "Text": "x",
        }
    )
    assert [given for given, _ in m.recipients] == ["a@x.example", "c@x.example", "secret@y.example"]
    assert b"secret" not in m.data


def test_non_ascii_subject_is_rfc2047_encoded_and_reads_back() -> None:
    m = compose({"To": [{"Address": "b@x.example"}], "Subject": "Grüße ☺ " * 8, "Text": "x"})
    assert b"=?utf-8?" in m.data
    assert parsed(m)["Subject"] == ("Grüße ☺ " * 8).strip() or parsed(m)["Subject"] == "Grüße ☺ " * 8
    assert all(len(line) <= 78 for line in m.data.split(b"\r\n\r\n")[0].split(b"\r\n"))


def test_smtputf8_when_a_localpart_is_non_ascii() -> None:
    m = compose({"To": [{"Address": "δοκιμή@παράδειγμα.example"}], "Subject": "Grüße", "Text": "x"})
    assert m.smtputf8 and m.has8bit
    msg = parsed(m)
    assert msg["To"] == "δοκιμή@παράδειγμα.example" and msg["Subject"] == "Grüße"


def test_text_and_html_make_alternative_with_files_in_related_and_mixed() -> None:
    pdf = b"%PDF-1.4 fake"
    m = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "plain",
            "HTML": "<img src=cid:logo>",
            "InlineFiles": [
                {
                    "Name": "logo.png",
                    "ContentType": "image/png",
                    "ContentID": "<logo>",
                    "Data": base64.b64encode(b"\x89PNGdata").decode(),
                }
            ],
            "AttachedFiles": [{"Name": "report.pdf", "Data": base64.b64encode(pdf).decode()}],
        },
        attached_uploads=[UploadedFile("notes.txt", "", "", b"some notes\n")],
    )
    msg = parsed(m)
    assert msg.get_content_type() == "multipart/mixed"
    related, report, notes = msg.get_payload()  # type: ignore[misc]
    assert related.get_content_type() == "multipart/related"
    alternative, logo = related.get_payload()
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    assert logo["Content-ID"] == "<logo>" and logo.get_content_disposition() == "inline"
    # No content type given: sniffed from the data.
    assert report.get_content_type() == "application/pdf" and report.get_content() == pdf
    assert report.get_filename() == "report.pdf"
    # JSON files come before uploaded ones.
    assert notes.get_filename() == "notes.txt" and notes.get_content_type() == "text/plain"


def test_long_lines_are_quoted_printable_and_round_trip() -> None:
    text = "x" * 2000 + "\nünïcode"
    msg = parsed(compose({"To": [{"Address": "b@x.example"}], "Text": text}))
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n") == text + "\n"


def test_given_message_id_date_references_and_custom_headers() -> None:
    date = datetime(2024, 4, 15, 21, 49, 2, tzinfo=timezone(timedelta(hours=2)))
    m = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "x",
            "MessageID": "<mine@host>",
            "Date": date.isoformat(),
            "References": ["<a@h>", "<b@h>"],
            "Headers": [["List-Id", "<list.example.org>"], ["X-Mailer", "app 1.0"]],
        }
    )
    msg = parsed(m)
    assert m.message_id == msg["Message-Id"] == "<mine@host>"
    assert b"\r\nDate: 15 Apr 2024 21:49:02 +0200\r\n" in m.data
    assert msg["In-Reply-To"] == "<b@h>" and "<a@h>" in msg["References"]
    assert msg["List-Id"] == "<list.example.org>" and msg["User-Agent"] is None


def test_future_release_within_sixty_days_sets_first_attempt_and_dsn_value() -> None:
    later = NOW + timedelta(days=2)
    m = compose({"To": [{"Address": "b@x.example"}], "Text": "x", "FutureRelease": later.isoformat()})
    assert m.future_release == later and m.future_release_request == "until;2026-11-26T10:30:00Z"
    past = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "x",
            "FutureRelease": (NOW - timedelta(hours=1)).isoformat(),
        }
    )
    assert past.future_release is None and past.future_release_request.startswith("until;")


def test_keys_are_case_insensitive_and_null_is_zero() -> None:
    req = decode_send_request('{"to": [{"address": "b@x.example"}], "TEXT": "x", "cc": null}')
    assert req.To[0].Address == "b@x.example" and req.Text == "x" and req.CC == []


@pytest.mark.parametrize(
    "obj,code",
    [
        ({"To": [{"Address": "b@x.example"}]}, "missingBody"),
        (
            {
                "From": [{"Address": "alice@example.org"}, {"Address": "sales@example.org"}],
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
            },
            "multipleFrom",
        ),
        (
            {"From": [{"Address": "mallory@example.org"}], "To": [{"Address": "b@x.example"}], "Text": "x"},
            "badFrom",
        ),
        ({"Text": "x"}, "noRecipients"),
        ({"To": [{"Address": "b@"}], "Text": "x"}, "badAddress"),
        ({"To": [{"Address": "b@x.example"}], "ReplyTo": [{"Address": "nope"}], "Text": "x"}, "badAddress"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "MessageID": "bare@id"}, "malformedMessageID"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "Subject": "a\nb"}, "user"),
        ({"To": [{"Name": "Evil\r\nBcc: x", "Address": "b@x.example"}], "Text": "x"}, "user"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "Headers": [["Bad Name", "v"]]}, "user"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "Headers": [["X-A", "v\r\nInjected: 1"]]}, "user"),
        (
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "FutureRelease": (NOW + timedelta(days=61)).isoformat(),
            },
            "user",
        ),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "AttachedFiles": [{"Data": "%%%"}]}, "user"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "AlternativeFiles": [{"Data": "%%%"}]}, "user"),
        (
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "AlternativeFiles": [{"ContentType": "text/calendar\r\nBcc: x@y.example", "Data": ""}],
            },
            "user",
        ),
        (
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "AttachedFiles": [{"ContentType": "text/plain\nX-Injected: 1", "Data": ""}],
            },
            "user",
        ),
        # Alternative bodies beside no body at all are still no body.
        ({"To": [{"Address": "b@x.example"}], "AlternativeFiles": [{"Data": "eA=="}]}, "missingBody"),
    ],
)
def test_refusals_have_their_codes(obj: dict[str, Any], code: str) -> None:
    assert code_of(obj) == code


def test_more_recipients_than_one_submission_carries() -> None:
    many = [{"Address": f"r{i}@x.example"} for i in range(MAX_RECIPIENTS)]
    assert len(compose({"To": many[:-1], "CC": many[-1:], "Text": "x"}).recipients) == MAX_RECIPIENTS
    assert code_of({"To": many, "BCC": [{"Address": "one@more.example"}], "Text": "x"}) == "tooManyRecipients"


def test_message_too_large() -> None:
    assert code_of({"To": [{"Address": "b@x.example"}], "Text": "x" * 5000}, max_message_size=1000) == (
        "messageTooLarge"
    )


@pytest.mark.parametrize(
    "raw",
    ["not json", "[]", '{"Bogus": 1}', '{"To": "b@x.example"}', '{"FutureRelease": "2026-12-01T00:00:00"}'],
)
def test_undecodable_requests_are_protocol_errors(raw: str) -> None:
    with pytest.raises(WebAPIError) as err:
        decode_send_request(raw)
    assert err.value.code == "protocol"


# --- Part ends (RFC 2046 §5.1.1), as mox composes them ------------------------------------------------

CALENDAR = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:1@example.org\r\n"
    b"SUMMARY:Planning\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def _boundaries(data: bytes) -> list[bytes]:
    return re.findall(rb'boundary="([^"]+)"', data)


def _delimiters_own_their_crlf(data: bytes) -> None:
    """Every delimiter line (RFC 2046 §5.1.1) follows a line break that is its own, after the part's:
    the part before it (or the headers' blank line, for the first) ends in CRLF, then comes the
    delimiter's CRLF. A delimiter that took the part's last CRLF would be preceded by one CRLF only."""
    for b in _boundaries(data):
        at = [i for i in range(len(data)) if data.startswith(b"--" + b, i)]
        assert at, b
        for i in at:
            assert data[i - 4 : i] == b"\r\n\r\n", (b, data[i - 40 : i + 40])
        # The close delimiter ends the entity with its own line break.
        assert data.count(b"--" + b + b"--\r\n") == 1


def test_text_and_html_parts_keep_their_last_line_break() -> None:
    text, html = "Hello,\n\nsee you.\n", "<p>Hello</p>\n"
    m = compose({"To": [{"Address": "b@x.example"}], "Text": text, "HTML": html})
    plain, rich = parsed(m).get_payload()  # type: ignore[misc]
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n") == html
    # Byte for byte as mox (Go's multipart writer): the part's CRLF, then the delimiter's.
    (b,) = _boundaries(m.data)
    assert m.data.endswith(
        b"Hello,\r\n\r\nsee you.\r\n\r\n--" + b + b"\r\n"
        b"Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        b"<p>Hello</p>\r\n\r\n--" + b + b"--\r\n"
    )
    _delimiters_own_their_crlf(m.data)


def test_text_without_final_newline_gets_one_that_survives_the_boundary() -> None:
    m = compose({"To": [{"Address": "b@x.example"}], "Text": "no newline", "HTML": "<b>x</b>"})
    plain, rich = parsed(m).get_payload()  # type: ignore[misc]
    assert plain.get_content() == "no newline\r\n" and rich.get_content() == "<b>x</b>\r\n"
    _delimiters_own_their_crlf(m.data)


def test_quoted_printable_and_8bit_parts_keep_their_last_line_break() -> None:
    text, html = "x" * 1200 + "\nend\n", "<p>Grüße ☺</p>\n"
    m = compose({"To": [{"Address": "b@x.example"}], "Text": text, "HTML": html})
    plain, rich = parsed(m).get_payload()  # type: ignore[misc]
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich["Content-Transfer-Encoding"] == "8bit" and rich.get_content().replace("\r\n", "\n") == html
    _delimiters_own_their_crlf(m.data)


@pytest.mark.parametrize("field", ["Text", "HTML"])
def test_single_part_message_ends_in_exactly_one_crlf(field: str) -> None:
    m = compose({"To": [{"Address": "b@x.example"}], field: "line one\nline two"})
    assert m.data.endswith(b"\r\n\r\nline one\r\nline two\r\n") and not m.data.endswith(b"\r\n\r\n")
    assert parsed(m).get_content() == "line one\r\nline two\r\n"
    assert not _boundaries(m.data)


def test_files_end_in_crlf_lines_of_76_and_decode_to_their_bytes() -> None:
    blob = bytes(range(256)) * 3  # 768 bytes: 1024 base64 characters, the last line short
    m = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "see attached\n",
            "HTML": "<img src=cid:pic>\n",
            "InlineFiles": [{"ContentType": "image/png", "ContentID": "<pic>", "Data": _b64(b"\x89PNG..")}],
            "AttachedFiles": [
                {"Name": "blob.bin", "ContentType": "application/octet-stream", "Data": _b64(blob)},
                {"Name": "empty.txt", "ContentType": "text/plain", "Data": ""},
            ],
        }
    )
    _delimiters_own_their_crlf(m.data)
    related, attached, empty = parsed(m).get_payload()  # type: ignore[misc]
    alternative, pic = related.get_payload()
    plain, rich = alternative.get_payload()
    assert plain.get_content() == "see attached\r\n" and rich.get_content() == "<img src=cid:pic>\r\n"
    assert pic.get_content() == b"\x89PNG.." and attached.get_content() == blob
    assert empty.get_payload(decode=True) == b""
    # The attachment's body: whole lines of 76 (RFC 2045 §6.8), the last one short, each with its CRLF, and
    # the delimiter's CRLF after that.
    body = m.data.split(b'filename="blob.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n', 1)[1]
    body = body.split(b"\r\n\r\n--", 1)[0] + b"\r\n"
    lines = body.split(b"\r\n")[:-1]
    assert [len(x) for x in lines] == [76] * 13 + [1024 - 76 * 13]
    assert base64.b64decode(b"".join(lines)) == blob
    # An empty file has no lines at all: its headers' blank line, then the delimiter's line break.
    assert b'filename="empty.txt"\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n--' in m.data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- AlternativeFiles --------------------------------------------------------------------------------


def test_alternative_files_join_text_and_html_in_the_alternative_part() -> None:
    m = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "You are invited.\n",
            "HTML": "<p>You are invited.</p>\n",
            "AlternativeFiles": [
                {"Name": "invite.ics", "ContentType": "text/calendar; method=REQUEST", "Data": _b64(CALENDAR)}
            ],
            "InlineFiles": [{"ContentType": "image/png", "ContentID": "<logo>", "Data": _b64(b"\x89PNG")}],
            "AttachedFiles": [{"Name": "agenda.pdf", "Data": _b64(b"%PDF-1.4 agenda")}],
        }
    )
    msg = parsed(m)
    assert msg.get_content_type() == "multipart/mixed"
    related, agenda = msg.get_payload()  # type: ignore[misc]
    alternative, logo = related.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, rich, calendar = alternative.get_payload()
    assert [plain.get_content_type(), rich.get_content_type()] == ["text/plain", "text/html"]
    assert calendar.get_content_type() == "text/calendar" and calendar.get_param("method") == "REQUEST"
    assert calendar.get_filename() == "invite.ics" and calendar.get_content_disposition() == "inline"
    assert calendar.get_payload(decode=True) == CALENDAR
    assert logo["Content-ID"] == "<logo>" and agenda.get_filename() == "agenda.pdf"
    _delimiters_own_their_crlf(m.data)


def test_text_and_one_alternative_file_make_a_multipart_alternative() -> None:
    m = compose(
        {
            "To": [{"Address": "b@x.example"}],
            "Text": "You are invited.",
            "AlternativeFiles": [{"ContentType": "text/calendar; method=REQUEST", "Data": _b64(CALENDAR)}],
        }
    )
    msg = parsed(m)
    assert msg.get_content_type() == "multipart/alternative"
    plain, calendar = msg.get_payload()  # type: ignore[misc]
    assert plain.get_content() == "You are invited.\r\n"
    assert calendar.get_payload(decode=True) == CALENDAR
    _delimiters_own_their_crlf(m.data)


def test_alternative_files_as_mox_clients_send_them() -> None:
    """mox's Go client sends every field: null when it has no alternative files, keys in any case."""
    none = decode_send_request('{"To": [{"Address": "b@x.example"}], "Text": "x", "AlternativeFiles": null}')
    assert none.AlternativeFiles == []
    assert (
        parsed(
            compose({"To": [{"Address": "b@x.example"}], "Text": "x", "AlternativeFiles": None})
        ).get_content_type()
        == "text/plain"
    )
    req = decode_send_request(
        json.dumps(
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "alternativefiles": [
                    {"name": "i.ics", "contenttype": "text/calendar", "data": _b64(CALENDAR)}
                ],
            }
        )
    )
    assert req.AlternativeFiles[0].Name == "i.ics" and req.AlternativeFiles[0].ContentType == "text/calendar"
    with pytest.raises(WebAPIError) as err:
        decode_send_request('{"Text": "x", "AlternativeFiles": [{"Data": "", "Content": ""}]}')
    assert err.value.code == "protocol"
