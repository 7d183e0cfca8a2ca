"""Authentication under load: password checks off the event loop, and the failed-auth limiter for both the
webapi's passwords and the admin API's bearer token (spec 03 §5.2)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from domain.passwords import hash_password
from tests.conftest import ADMIN_TOKEN, PASSWORD, SENDER, Stack

REQUEST = {"request": json.dumps({"To": [{"Address": "bob@example.com"}], "Text": "x"})}


def client_at(stack: Stack, ip: str) -> httpx.AsyncClient:
    """An HTTP client of the stack's app that connects from `ip`."""
    app = stack.http._transport.app  # type: ignore[attr-defined]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://t")


async def start_of_a_fresh_minute() -> None:
    """The limiter counts in fixed one-minute windows of the wall clock: start well inside one."""
    left = 60 - datetime.now(UTC).timestamp() % 60
    if left < 15:
        await asyncio.sleep(left + 0.1)


@pytest.fixture
async def api(stack_factory) -> Stack:
    # The production cost of a password hash (200,000 PBKDF2 rounds), so a check takes real time.
    return await stack_factory(worker=False, accounts={"alice": {"password_hash": hash_password(PASSWORD)}})


async def test_wrong_passwords_from_many_addresses_do_not_stall_other_requests(api: Stack) -> None:
    # Twenty attackers in different networks, so the limiter lets every one of them be checked.
    clients = [client_at(api, f"10.{i}.0.1") for i in range(20)]
    try:
        sends = [
            asyncio.create_task(c.post("/webapi/v0/Send", data=REQUEST, auth=(SENDER, "wrong")))
            for c in clients
        ]
        await asyncio.sleep(0)
        health = await api.http.get("/healthz")
        checked_before_health = sum(t.done() for t in sends)
        results = await asyncio.gather(*sends)
    finally:
        for c in clients:
            await c.aclose()
    assert health.status_code == 200
    # On the event loop the twenty checks ran one after another before /healthz got its turn; off the
    # loop /healthz answers while most of them are still running.
    assert checked_before_health < 10, checked_before_health
    assert [r.status_code for r in results] == [401] * 20
    # The right password still logs in.
    assert (await api.http.post("/webapi/v0/Send", data=REQUEST, auth=(SENDER, PASSWORD))).status_code == 200


async def test_checks_in_flight_together_cannot_pass_the_limit(api: Stack) -> None:
    await start_of_a_fresh_minute()
    results = await asyncio.gather(
        *(api.http.post("/webapi/v0/Send", data=REQUEST, auth=(SENDER, f"wrong{i}")) for i in range(20))
    )
    codes = sorted(r.status_code for r in results)
    # Ten attempts a minute per address (spec 03 §5.2), even when all twenty guesses arrive at once.
    assert codes == [401] * 10 + [429] * 10


async def test_a_burst_of_first_requests_with_the_right_password_is_one_check(api: Stack) -> None:
    # An application starting up sends many requests at once before any login is remembered: they wait
    # for one password check together and are neither refused as too many attempts nor as busy.
    await start_of_a_fresh_minute()
    results = await asyncio.gather(
        *(api.http.post("/webapi/v0/Send", data=REQUEST, auth=(SENDER, PASSWORD)) for _ in range(30))
    )
    assert [r.status_code for r in results] == [200] * 30


async def test_wrong_admin_tokens_are_limited_per_address(api: Stack) -> None:
    await start_of_a_fresh_minute()
    for _ in range(10):
        r = await api.http.get("/admin/v0/queue/count", headers={"Authorization": "Bearer guess"})
        assert r.status_code == 401 and r.json()["Code"] == "unauthorized"
    r = await api.admin("GET", "/queue/count")
    assert r.status_code == 429 and r.json()["Code"] == "tooManyAuthAttempts"
    # The webapi shares the limiter: the same address cannot go on guessing passwords there.
    r = await api.http.post("/webapi/v0/Send", data=REQUEST, auth=(SENDER, PASSWORD))
    assert r.status_code == 429
    # Another network is not affected, and a success there does not lift the first address's limit.
    async with client_at(api, "198.51.100.7") as other:
        r = await other.get("/admin/v0/queue/count", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200 and r.json() == {"Count": 0}
    assert (await api.admin("GET", "/queue/count")).status_code == 429
