"""Failed-authentication limiter: the scenarios of spec 03 §5.2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.ratelimit import AuthFailureLimiter

T0 = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)


def test_ten_failures_a_minute_from_one_address_then_refused() -> None:
    lim = AuthFailureLimiter()
    for _ in range(10):
        assert lim.allowed("192.0.2.1", T0)
        lim.failed("192.0.2.1", T0)
    assert not lim.allowed("192.0.2.1", T0)
    # The neighbour in the same /26 still has room (its own limit is 30 for the network).
    assert lim.allowed("192.0.2.2", T0)
    # Next minute the per-minute window is fresh again.
    assert lim.allowed("192.0.2.1", T0 + timedelta(minutes=1))


def test_wider_network_limit_catches_spread_out_failures() -> None:
    lim = AuthFailureLimiter()
    for i in range(30):
        lim.failed(f"192.0.2.{i}", T0)
    # 30 failures within 192.0.2.0/26 reach its limit even for an address that never failed.
    assert not lim.allowed("192.0.2.40", T0)
    assert lim.allowed("192.0.2.100", T0)  # another /26


def test_daily_limit_spans_minutes() -> None:
    lim = AuthFailureLimiter()
    for m in range(5):
        for _ in range(10):
            lim.failed("2001:db8::1", T0 + timedelta(minutes=m))
    assert not lim.allowed("2001:db8::1", T0 + timedelta(minutes=10))


def test_success_resets_the_address() -> None:
    lim = AuthFailureLimiter()
    for _ in range(10):
        lim.failed("192.0.2.1", T0)
    lim.succeeded("192.0.2.1", T0)
    assert lim.allowed("192.0.2.1", T0)


def test_attempts_in_flight_count_until_they_succeed() -> None:
    lim = AuthFailureLimiter()
    # Ten checks started together use up the address's minute before any of them has failed.
    assert all(lim.attempt("192.0.2.1", T0) for _ in range(10))
    assert not lim.attempt("192.0.2.1", T0)
    lim.succeeded("192.0.2.1", T0)
    assert lim.attempt("192.0.2.1", T0)


def test_successful_logins_do_not_fill_the_network_limit() -> None:
    lim = AuthFailureLimiter()
    # 40 different hosts of one /26 each log in successfully: the network limit (30) is not reached.
    for i in range(40):
        assert lim.attempt(f"192.0.2.{i}", T0)
        lim.succeeded(f"192.0.2.{i}", T0)
    assert lim.allowed("192.0.2.50", T0)
