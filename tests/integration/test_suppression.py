"""Suppression lists through the webapi and at delivery time (spec 03 §2, §5.5; spec 02 scenarios 23–25)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from domain.contracts import MsgState
from tests.conftest import PASSWORD, SENDER, Stack


async def call(
    stack: Stack, method: str, req: dict[str, Any], auth: tuple[str, str] = (SENDER, PASSWORD)
) -> httpx.Response:
    return await stack.http.post(f"/webapi/v0/{method}", data={"request": json.dumps(req)}, auth=auth)


async def test_53_54_55_webapi_add_present_list_remove_on_base_addresses(stack: Stack) -> None:
    r = await call(
        stack,
        "SuppressionAdd",
        {"EmailAddress": "M.j.l2+catchall@Mox.example", "Manual": True, "Reason": "tests"},
    )
    assert r.status_code == 200 and r.json() == {}
    # Any variant finds the entry; another account does not see it.
    assert (await call(stack, "SuppressionPresent", {"EmailAddress": "mjl2@mox.example"})).json() == {
        "Present": True
    }
    other = await call(
        stack,
        "SuppressionPresent",
        {"EmailAddress": "mjl2@mox.example"},
        ("bob@example.net", "bobs-password"),
    )
    assert other.json() == {"Present": False}
    [entry] = (await call(stack, "SuppressionList", {})).json()["Suppressions"]
    assert entry["Account"] == "alice" and entry["BaseAddress"] == "mjl2@mox.example"
    assert (
        entry["OriginalAddress"] == "M.j.l2+catchall@mox.example"
        and entry["Manual"]
        and entry["Reason"] == "tests"
    )
    dup = await call(stack, "SuppressionAdd", {"EmailAddress": "mjl2@mox.example"})
    assert dup.status_code == 400 and dup.json()["Code"] == "error" and "not unique" in dup.json()["Message"]
    assert (await call(stack, "SuppressionRemove", {"EmailAddress": "MJL2-x@mox.example"})).json() == {}
    gone = await call(stack, "SuppressionRemove", {"EmailAddress": "mjl2@mox.example"})
    assert gone.json() == {"Code": "error", "Message": "absent"}
    bad = await call(stack, "SuppressionPresent", {"EmailAddress": "not an address"})
    assert bad.json()["Code"] == "badAddress"
    unknown = await call(stack, "SuppressionList", {"Bogus": 1})
    assert unknown.json()["Code"] == "protocol"


async def test_24_suppressed_recipient_fails_without_a_connection(stack: Stack) -> None:
    await call(stack, "SuppressionAdd", {"EmailAddress": "bob@example.com"})
    resp = await stack.send_ok(
        {"To": [{"Address": "ok@example.com"}, {"Address": "Bob+news@example.com"}], "Text": "x"}
    )
    ok_id, bob_id = (s["QueueMsgID"] for s in resp["Submissions"])
    status = await stack.finished(ok_id)
    states = {m.id: m.state for m in status.msgs}
    # Every recipient of the batch is checked, not only the first.
    assert states == {ok_id: MsgState.DELIVERED, bob_id: MsgState.FAILED}
    assert stack.sink.delivered_to() == ["ok@example.com"]
    row = (await stack.admin("GET", f"/queue/{bob_id}")).json()
    assert row["Event"] == "suppressed" and row["Results"][-1]["Code"] == 0
    assert "address is on suppression list" in row["Results"][-1]["Error"]


async def test_23_a_550_adds_the_recipient_and_the_next_send_is_suppressed(stack: Stack) -> None:
    stack.sink.behaviour.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    resp = await stack.send_ok({"To": [{"Address": "gone@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    [entry] = (await call(stack, "SuppressionList", {})).json()["Suppressions"]
    assert entry["BaseAddress"] == "gone@example.com" and not entry["Manual"]
    assert entry["Reason"] == 'delivery failure from queue with smtp code 550, enhanced code "1.1"'
    resp = await stack.send_ok({"To": [{"Address": "gone@example.com"}], "Text": "again"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    assert (await stack.admin("GET", f"/queue/{msg_id}")).json()["Event"] == "suppressed"
    # The remote server was asked about the address once, by the first message only.
    assert stack.sink.rcpts_seen.count("gone@example.com") == 1


async def test_22_a_554_1_0_does_not_suppress(stack: Stack) -> None:
    stack.sink.behaviour.rcpt_replies["picky@example.com"] = "554 5.1.0 not today"
    resp = await stack.send_ok({"To": [{"Address": "picky@example.com"}], "Text": "x"})
    await stack.finished(resp["Submissions"][0]["QueueMsgID"])
    assert (await call(stack, "SuppressionList", {})).json() == {"Suppressions": []}


async def test_third_consecutive_failure_suppresses(stack_factory) -> None:
    stack = await stack_factory(max_attempts=1)
    stack.sink.behaviour.rcpt_replies["flaky@example.com"] = "554 5.0.0 try elsewhere"
    for n in range(3):
        resp = await stack.send_ok({"To": [{"Address": "flaky@example.com"}], "Text": f"try {n}"})
        await stack.finished(resp["Submissions"][0]["QueueMsgID"])
        listed = (await call(stack, "SuppressionList", {})).json()["Suppressions"]
        assert len(listed) == (1 if n == 2 else 0)
    assert listed[0]["Reason"] == "delivery failure from queue and three consecutive failures"
