"""Go-style durations and the admin filter syntax (spec 01 §5.1, §5.2)."""

from datetime import UTC, datetime, timedelta

import pytest

from domain.durations import format_duration, parse_duration
from domain.filters import FilterError, parse_sort, parse_time_condition


@pytest.mark.parametrize(
    "text,expected",
    [
        ("90s", timedelta(seconds=90)),
        ("7m30s", timedelta(minutes=7, seconds=30)),
        ("-1h30m", -timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "1h x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_like_go() -> None:
    assert format_duration(timedelta(minutes=7, seconds=30)) == "7m30s"
    assert format_duration(timedelta(hours=1)) == "1h0m0s"
    assert format_duration(timedelta(0)) == "0s"


def test_time_condition_reference_and_direction() -> None:
    now = datetime(2024, 4, 15, 12, tzinfo=UTC)
    c = parse_time_condition("nextattempt", "<-1h")
    assert c.before and c.reference(now) == now - timedelta(hours=1)
    c = parse_time_condition("submitted", "> now")
    assert not c.before and c.reference(now) == now


def test_time_condition_needs_direction() -> None:
    with pytest.raises(FilterError, match="must start with"):
        parse_time_condition("submitted", "1h")
    with pytest.raises(FilterError, match="submitted"):
        parse_time_condition("submitted", "<soon")


def test_sort_validation() -> None:
    assert parse_sort("", False, 0, "").field == "nextattempt"
    with pytest.raises(FilterError, match="unknown sort order field"):
        parse_sort("size", True, 0, "")
    with pytest.raises(FilterError, match="last should be string"):
        parse_sort("queued", True, 3, "")
    s = parse_sort("Queued", True, 3, "2024-04-15T12:00:00.123456789Z")
    assert s.last == datetime(2024, 4, 15, 12, 0, 0, 123456, tzinfo=UTC)
