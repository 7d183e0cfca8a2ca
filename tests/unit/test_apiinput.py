"""Strict decoding of untrusted API input: JSON, forms and query strings, durations, filters, addresses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.addresses import AddressError, parse_address
from domain.apiinput import InputError, load_json, parse_form, query_string_problem, request_body_limit
from domain.durations import parse_duration
from domain.filters import FilterError, parse_time, queue_filter


def test_deeply_nested_json_is_an_input_error_not_a_recursion_error() -> None:
    with pytest.raises(InputError, match="nested too deeply"):
        load_json("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "text", [b'{"a": "\xff"}', '{"a": "\\ud800"}', '{"a": NaN}', '{"a": Infinity}', "1" * 5000, "{"]
)
def test_invalid_json_text_is_refused(text: str | bytes) -> None:
    with pytest.raises(InputError):
        load_json(text)


def test_a_surrogate_pair_is_one_character() -> None:
    assert load_json('"\\ud83d\\ude00"') == "\U0001f600"


def test_forms_and_query_strings_decode_strict_utf8() -> None:
    assert parse_form(b"request=%C3%A9&x=") == [("request", "é"), ("x", "")]
    with pytest.raises(InputError):
        parse_form(b"request=%FF")
    with pytest.raises(InputError):
        parse_form(b"request=\xff")
    assert query_string_problem(b"account=a%00b") == "query string contains a NUL byte"
    assert query_string_problem(b"account=%FF") is not None
    assert query_string_problem(b"&".join([b"a=1"] * 1000)) is not None
    assert query_string_problem(b"account=alice&max=3") is None


def test_body_limit_leaves_room_for_base64_and_form_encoding() -> None:
    # A 4 MiB attachment base64 and percent-encoded in a form: about 5.7 MiB for a 5.6 MiB message.
    assert request_body_limit(5 * 1024 * 1024) > 4 * 1024 * 1024 * 4 / 3 * 1.07


@pytest.mark.parametrize("text", ["99999999999999h", "9" * 400 + "h", "2562048h", "-99999999999999h"])
def test_durations_out_of_go_range_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_longest_go_duration_is_accepted() -> None:
    assert parse_duration("2562047h").days == 106751


@pytest.mark.parametrize(
    "raw",
    [
        [1, 2],
        5,
        "x",
        {"max": "99999999999999999999"},
        {"max": 2**64},
        {"max": -1},
        {"max": 1.5},
        {"ids": "1,99999999999999999999"},
        {"ids": 7},
        {"ids": [True]},
        {"account": ["a"]},
        {"account": "a\0b"},
        {"hold": "maybe"},
        {"hold": 1},
        {"submitted": "<99999999999h"},
        {"submitted": 5},
        {"nextattempt": ">"},
    ],
)
def test_malformed_queue_filters_are_filter_errors(raw: object) -> None:
    with pytest.raises(FilterError):
        queue_filter(raw)  # type: ignore[arg-type]


def test_queue_filter_takes_query_strings_and_json_values_alike() -> None:
    a = queue_filter({"IDs": "1,2", "Hold": "true", "Max": "5", "Submitted": "<1h"})
    b = queue_filter({"ids": [1, 2], "hold": True, "max": 5, "submitted": "<1h"})
    assert a == b and a.ids == (1, 2) and a.max == 5


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "2026-01-01T00:00:00", "tomorrow", 5])
def test_bad_times_are_filter_errors(text: object) -> None:
    with pytest.raises(FilterError):
        parse_time("Set", text)


def test_times_are_taken_in_utc() -> None:
    assert parse_time("Set", "2026-01-01T02:00:00+02:00") == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "address",
    [
        "a" * 65 + "@example.org",
        "é" * 33 + "@example.org",
        "a@" + ".".join(["b" * 63] * 4),
        "a@" + "b" * 64 + ".org",
        "b\ufffdob@example.org",
        "b\ud800ob@example.org",
        "a" * 60 + "@" + ".".join(["c" * 60] * 4) + ".org",
    ],
)
def test_addresses_over_rfc_5321_limits_are_refused(address: str) -> None:
    with pytest.raises(AddressError):
        parse_address(address)


def test_addresses_at_the_limits_are_taken() -> None:
    assert parse_address("a" * 64 + "@example.org").localpart == "a" * 64
    assert parse_address("é" * 32 + "@example.org")
    assert parse_address("a@" + ".".join(["b" * 63] * 3) + ".org")
