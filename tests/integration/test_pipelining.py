"""SMTP transactions as the next hop sees them, pipelined (RFC 2920) and not, through the real workflow
(spec 02 §3.5, scenarios 2, 5, 27, 33, 34, 42, 43 and 44): which commands arrive together, which
recipients end up in which transaction, and how each reply is classified."""

from __future__ import annotations

from typing import Any

import pytest

from domain.contracts import MsgState
from tests.conftest import Stack
from tests.support.scriptedsmtp import Script, ScriptedSMTP

PIPELINING = ["PIPELINING", "ENHANCEDSTATUSCODES"]


async def deliver(
    stack_factory: Any, server: ScriptedSMTP, rcpts: list[str], attempts: int = 2
) -> tuple[Any, list[dict[str, Any]]]:
    """Send one message to rcpts through a relay to server; the end state and each recipient's row."""
    relay = {"type": "smtp", "host": "127.0.0.1", "port": server.port, "starttls": "none"}
    # The scripted server answers by position in a session, which assumes a session per attempt (and per
    # DSN): no connection cache here; test_conncache covers reuse.
    stack: Stack = await stack_factory(
        transports={"raw": relay},
        default_transport="raw",
        max_attempts=attempts,
        connection_cache_time_limit="0s",
    )
    resp = await stack.send_ok({"To": [{"Address": a} for a in rcpts], "Text": "x"})
    ids = [s["QueueMsgID"] for s in resp["Submissions"]]
    status = await stack.finished(ids[0])
    await server.idle()
    rows = [(await stack.admin("GET", f"/queue/{i}")).json() for i in ids]
    return status, rows


def outcome(status: Any) -> list[tuple[str, int]]:
    """(state, attempts) of every recipient, in send order."""
    return [(m.state, m.attempts) for m in status.msgs]


async def test_02_pipelined_burst_carries_mail_every_rcpt_and_data(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(extensions=PIPELINING))
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"])
    assert outcome(status) == [(MsgState.DELIVERED, 1)] * 2
    [session] = server.sessions
    # One round trip for the whole envelope: the server had all four commands before it said a word.
    assert session.bursts == [["MAIL", "RCPT", "RCPT", "DATA"]]
    assert len(session.messages) == 1 and session.commands[-1] == "QUIT"


async def test_02_without_pipelining_each_command_waits_for_its_reply(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(extensions=["ENHANCEDSTATUSCODES"]))
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"])
    assert outcome(status) == [(MsgState.DELIVERED, 1)] * 2
    verbs = [c.split(" ")[0].split(":")[0] for c in server.sessions[0].commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]


@pytest.mark.parametrize("too_many", ["452 4.5.3 too many recipients", "552 5.5.3 too many recipients"])
async def test_05_rcpt_refused_as_too_many_goes_in_a_second_transaction_on_the_same_connection(
    stack_factory: Any, peer: Any, too_many: str
) -> None:
    server = await peer(Script(extensions=PIPELINING, replies={"RCPT": ["250 ok", too_many, "250 ok"]}))
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"])
    assert outcome(status) == [(MsgState.DELIVERED, 1)] * 2
    [session] = server.sessions
    assert session.bursts == [["MAIL", "RCPT", "RCPT", "DATA"], ["MAIL", "RCPT", "DATA"]]
    assert len(session.messages) == 2
    # The first transaction ended with DATA, so the second needs no RSET.
    assert "RSET" not in session.commands


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("too_many", ["452 4.5.3 later", "552 5.5.3 later"])
async def test_33_each_recipient_keeps_its_own_reply(
    stack_factory: Any, peer: Any, pipelined: bool, too_many: str
) -> None:
    script = Script(
        extensions=PIPELINING if pipelined else ["ENHANCEDSTATUSCODES"],
        replies={"RCPT": ["250 ok", "554 5.7.1 not you", too_many, "250 ok"]},
    )
    server = await peer(script)
    status, rows = await deliver(stack_factory, server, ["a@example.com", "b@example.com", "c@example.com"])
    # a in the first transaction; b refused for good; c, refused as one too many, in a second one.
    assert outcome(status) == [(MsgState.DELIVERED, 1), (MsgState.FAILED, 1), (MsgState.DELIVERED, 1)]
    # (The failure DSN to the sender follows in a connection of its own.)
    assert len(server.sessions[0].messages) == 2
    assert [r["Results"][-1]["Code"] for r in rows] == [250, 554, 250]


async def test_34_single_recipient_pipelined_452_is_temporary(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(extensions=PIPELINING, replies={"RCPT": "452 maybe", "DATA": "503 no rcpts"}))
    status, _ = await deliver(stack_factory, server, ["a@example.com"], attempts=2)
    # Temporary: retried until the attempts ran out.
    assert outcome(status) == [(MsgState.FAILED, 2)]
    assert all(not s.messages for s in server.sessions)


async def test_43_pipelined_mail_550_then_hangup_is_permanent(stack_factory: Any, peer: Any) -> None:
    server = await peer(
        Script(extensions=PIPELINING, replies={"MAIL": "550 5.7.1 sender refused", "RCPT": ""})
    )
    status, _ = await deliver(stack_factory, server, ["a@example.com"], attempts=3)
    # The MAIL reply decides, not the closed connection after it.
    assert outcome(status) == [(MsgState.FAILED, 1)]


async def test_pipelined_refusal_stands_when_the_server_hangs_up_instead_of_answering_data(
    stack_factory: Any, peer: Any
) -> None:
    server = await peer(Script(extensions=PIPELINING, replies={"RCPT": "550 5.1.1 no such user", "DATA": ""}))
    status, rows = await deliver(stack_factory, server, ["a@example.com"], attempts=3)
    # The 550 decides (permanent, one attempt), not the closed connection after it.
    assert outcome(status) == [(MsgState.FAILED, 1)]
    assert rows[0]["Results"][-1]["Code"] == 550


async def test_44_no_recipient_accepted_lockstep_sends_no_data(stack_factory: Any, peer: Any) -> None:
    server = await peer(Script(replies={"RCPT": "451 try later"}))
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"], attempts=2)
    assert outcome(status) == [(MsgState.FAILED, 2)] * 2
    assert not any(c.startswith("DATA") for c in server.commands)


async def test_44_no_recipient_accepted_pipelined_resyncs_with_a_lone_dot(
    stack_factory: Any, peer: Any
) -> None:
    replies: dict[str, str | list[str]] = {"RCPT": "451 try later", "DATA": "354 go", ".": "503 no rcpts"}
    server = await peer(Script(extensions=PIPELINING, replies=replies))
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"], attempts=2)
    assert outcome(status) == [(MsgState.FAILED, 2)] * 2
    # The two attempts' sessions (failure DSNs to the sender follow in sessions of their own).
    for session in server.sessions[:2]:
        # An empty message ended the DATA the server had accepted, and the session still ended politely.
        assert session.messages == [b""] and session.commands[-1] == "QUIT"


async def test_27_42_transaction_left_open_is_reset_before_the_next_one(
    stack_factory: Any, peer: Any
) -> None:
    script = Script(
        extensions=["ENHANCEDSTATUSCODES", "LIMITS RCPTMAX=1"],
        replies={"RCPT": ["451 4.3.0 not now", "250 ok"], "DATA": "354 go", ".": "550 5.7.1 content refused"},
    )
    server = await peer(script)
    status, _ = await deliver(stack_factory, server, ["a@example.com", "b@example.com"], attempts=3)
    verbs = [c.split(" ")[0].split(":")[0] for c in server.sessions[0].commands]
    # a's transaction stopped after its RCPT; b's starts with RSET on the same connection.
    assert verbs[:7] == ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA"]
    # b's content was refused for good (scenario 42); a, refused temporarily in every new session, used
    # all three attempts.
    assert outcome(status) == [(MsgState.FAILED, 3), (MsgState.FAILED, 1)]
