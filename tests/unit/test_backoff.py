"""mox's retry schedule (spec 01 §2.1, §2.2)."""

from datetime import timedelta

import pytest

from domain.backoff import backoff, effective_max_attempts, is_final

BASE = timedelta(minutes=7, seconds=30)


@pytest.mark.parametrize(
    "attempts_before,expected",
    [
        (0, timedelta(minutes=7, seconds=30)),
        (1, timedelta(minutes=15)),
        (4, timedelta(hours=2)),
        (6, timedelta(hours=8)),
    ],
)
def test_schedule_doubles_from_seven_and_a_half_minutes(attempts_before: int, expected: timedelta) -> None:
    assert backoff(attempts_before, BASE, 0) == expected


def test_jitter_is_whole_seconds_before_doubling() -> None:
    assert backoff(0, BASE, -5) == timedelta(seconds=445)
    assert backoff(0, BASE, 4) == timedelta(seconds=454)
    assert backoff(3, BASE, -5) == timedelta(seconds=445 * 8)


def test_jitter_outside_mox_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        backoff(0, BASE, 5)


def test_scaled_base_keeps_jitter_ratio() -> None:
    assert backoff(1, timedelta(seconds=4.5), -5) == timedelta(seconds=4.45 * 2)


def test_timeline_of_eight_attempts_spans_almost_sixteen_hours() -> None:
    total = sum((backoff(a, BASE, 0) for a in range(7)), timedelta())
    assert total == timedelta(hours=15, minutes=52, seconds=30)


def test_final_when_permanent_or_exhausted() -> None:
    assert is_final(True, 1, 8)
    assert not is_final(False, 7, 8)
    assert is_final(False, 8, 8)
    assert effective_max_attempts(0) == 8 and is_final(False, 8, 0)
