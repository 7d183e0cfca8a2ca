"""DSNs about outgoing messages reach the sender's MTA, field by field (spec 03 §1)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from typing import Any

from domain.contracts import MsgState
from tests.conftest import SENDER, Stack


def _dsns(stack: Stack) -> list[tuple[Any, Message]]:
    """Transactions the sink received with the null reverse path: the DSNs."""
    return [
        (t, message_from_bytes(t.data, policy=default_policy))
        for t in stack.sink.transactions
        if t.mail_from in ("", "<>")
    ]


async def _wait_for_dsns(stack: Stack, n: int) -> list[tuple[Any, Message]]:
    # A DSN is a delivery of its own (a new workflow, an attempt): give a slow machine time for it, by a
    # deadline rather than a count of polls.
    deadline = asyncio.get_running_loop().time() + 60
    while len(got := _dsns(stack)) < n:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {n} DSNs, got {len(got)}")
        await asyncio.sleep(0.05)
    return got


async def test_permanent_failure_sends_a_failure_dsn_to_the_sender(stack: Stack) -> None:
    stack.sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    resp = await stack.send_ok(
        {"To": [{"Address": "nobody@example.com"}], "Subject": "order 42", "Text": "x"}
    )
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.FAILED
    [(t, dsn)] = await _wait_for_dsns(stack, 1)
    # Null reverse path, to the original sender (RFC 3461 §6.2).
    assert t.mail_from in ("", "<>") and t.rcpt_tos == [SENDER]
    assert b"From: <postmaster@tempost.test>\r\n" in t.data and f"To: <{SENDER}>\r\n".encode() in t.data
    assert dsn["Subject"] == "mail delivery failed" and dsn["References"] == resp["MessageID"]
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    human, status_part, headers = dsn.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain" and "nobody@example.com" in human.get_content()
    assert "550 5.1.1 no such user" in human.get_content()
    assert status_part.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = status_part.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; tempost.test" and per_msg["Arrival-Date"]
    assert per_rcpt["Final-Recipient"] == "rfc822;nobody@example.com"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"].startswith("5.1.1 (")
    assert per_rcpt["Diagnostic-Code"] == "smtp; 5.1.1 no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    original = headers.get_payload() if isinstance(headers.get_payload(), str) else headers.as_string()
    # Only the header section of the original, never its body.
    assert "Subject: order 42" in original and "Content-Transfer-Encoding" in original
    # Stored and listed for the admin.
    [listed] = (await stack.admin("GET", "/dsns")).json()["DSNs"]
    assert listed["Kind"] == "failed" and listed["Recipient"] == "nobody@example.com"
    raw = (await stack.admin("GET", f"/dsns/{listed['ID']}/raw")).content
    assert raw == t.data


async def test_08_delayed_dsn_after_the_fifth_attempt_then_failure_dsn(stack_factory) -> None:
    stack = await stack_factory(max_attempts=6)
    stack.sink.behaviour.rcpt_replies["slow@example.com"] = "451 4.2.0 mailbox busy"
    resp = await stack.send_ok({"To": [{"Address": "slow@example.com"}], "Text": "x"})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 6
    got = await _wait_for_dsns(stack, 2)
    # The two DSNs are deliveries of their own and may reach the sink in either order; Tempost composed
    # (and stored) the delayed one first.
    by_subject = {d["Subject"]: d for _, d in got}
    assert sorted(by_subject) == ["mail delivery delayed", "mail delivery failed"]
    stored = (await stack.admin("GET", "/dsns")).json()["DSNs"]
    assert [d["Kind"] for d in reversed(stored)] == ["delayed", "failed"]
    delayed = by_subject["mail delivery delayed"].get_payload()[1].get_payload()[1]  # type: ignore[index]
    assert delayed["Action"] == "delayed" and delayed["Status"].startswith("4.2.0")
    assert delayed["Will-Retry-Until"]
    final = by_subject["mail delivery failed"].get_payload()[1].get_payload()[1]  # type: ignore[index]
    # Attempts exhausted on a temporary error: still a failure with class 5.
    assert final["Action"] == "failed" and final["Status"].startswith("5.2.0")


async def test_07_admin_fail_sends_a_dsn_and_drop_does_not(stack: Stack) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    resp = await stack.send_ok(
        {
            "To": [{"Address": "a@example.com"}, {"Address": "b@example.com"}],
            "Text": "x",
            "FutureRelease": later,
        }
    )
    a, b = (s["QueueMsgID"] for s in resp["Submissions"])
    assert (await stack.admin("POST", f"/queue/{a}/fail")).status_code == 200
    assert (await stack.admin("POST", f"/queue/{b}/drop")).status_code == 200
    [(_, dsn)] = await _wait_for_dsns(stack, 1)
    per_rcpt = dsn.get_payload()[1].get_payload()[1]  # type: ignore[index]
    assert per_rcpt["Final-Recipient"] == "rfc822;a@example.com"
    assert "delivery canceled by admin" in per_rcpt["Status"]
    assert [d["Kind"] for d in (await stack.admin("GET", "/dsns")).json()["DSNs"]] == ["failed"]


async def test_a_failing_dsn_gets_no_dsn_of_its_own(stack: Stack) -> None:
    # The sender's own address refuses mail: the failure DSN fails too, and nothing more is sent.
    stack.sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    stack.sink.behaviour.rcpt_replies[SENDER] = "550 5.1.1 sender gone"
    resp = await stack.send_ok({"To": [{"Address": "nobody@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    # The second DSN is stored only after the first one's own delivery failed: allow a slow machine time.
    async with asyncio.timeout(60):
        while len(listed := (await stack.admin("GET", "/dsns")).json()["DSNs"]) < 2:
            await asyncio.sleep(0.05)
    # One DSN about the original; one stored about the DSN itself, never queued.
    assert sorted((d["Sender"], d["DeliveryBaseID"] is None) for d in listed) == [("", True), (SENDER, False)]


async def test_09_requiretls_without_a_verified_path_fails_at_once_with_a_dsn(stack: Stack) -> None:
    # The test relay speaks no TLS at all, so no hop can honour REQUIRETLS (RFC 8689): the message fails
    # on its first attempt, and the sender learns why.
    resp = await stack.send_ok({"To": [{"Address": "rcpt@example.com"}], "Text": "x", "RequireTLS": True})
    status = await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert status.msgs[0].state == MsgState.FAILED and status.msgs[0].attempts == 1
    [(t, dsn)] = await _wait_for_dsns(stack, 1)
    _, status_part, _ = dsn.get_payload()  # type: ignore[misc]
    per_rcpt = status_part.get_payload()[1]
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"].startswith("5.7.30")
    assert stack.sink.delivered_to() == []
