"""Destination hosts and dial order (spec 02 §1.2, §1.5; scenarios 45, 46, 49 of §10)."""

from __future__ import annotations

import random

import pytest

from activities.smtpclient import parse_rcpt_max, split_enhanced
from domain.nexthop import Host, NextHopError, destination_hosts, ip_literal, order_ips


def no_shuffle(names: list[str]) -> None:
    return None


def test_46_hosts_in_preference_order() -> None:
    hosts = destination_hosts("example.com", [(20, "b.example.com."), (10, "A.example.com.")], no_shuffle)
    assert hosts == [Host("a.example.com"), Host("b.example.com")]


def test_46_equal_preference_hosts_are_shuffled_by_the_given_source() -> None:
    mx = [(10, f"mx{i}.example.com") for i in range(6)] + [(20, "backup.example.com")]
    orders = {
        tuple(h.name for h in destination_hosts("example.com", mx, random.Random(seed).shuffle))
        for seed in range(10)
    }
    assert len(orders) > 1
    assert all(o[-1] == "backup.example.com" for o in orders)


def test_46_no_mx_means_the_domain_itself() -> None:
    assert destination_hosts("example.com", None, no_shuffle) == [Host("example.com")]


def test_46_null_mx_is_permanent() -> None:
    with pytest.raises(NextHopError) as err:
        destination_hosts("example.com", [(0, ".")], no_shuffle)
    assert err.value.permanent


def test_46_ip_literal_is_itself() -> None:
    assert destination_hosts("[192.0.2.1]", None, no_shuffle) == [Host("192.0.2.1", is_ip=True)]
    assert ip_literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert ip_literal("example.com") is None


def test_49_families_alternate_and_a_family_reused_once_starts_with_the_same_ip() -> None:
    ips = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"]
    assert order_ips(ips, []) == ips
    # After 10.0.0.2: IPv6 first, then the same IPv4 address again (greylisting-friendly).
    assert order_ips(ips, ["10.0.0.2"]) == ["2001:db8::1", "2001:db8::2", "10.0.0.2", "10.0.0.1"]
    # IPv4 used twice already: resolver order within the family.
    assert order_ips(ips, ["10.0.0.2", "10.0.0.2"])[2:] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize(
    "limits,expected",
    [
        ("MAILMAX=123 OTHER=ignored RCPTDOMAINMAX=1 RCPTMAX=321", 321),
        ("unknown=a=b -_1oK=xY", 0),
        ("RCPTMAX=invalid", 0),
        ("invalid syntax", 0),
        ("RCPTMAX=1 RCPTMAX=2", 0),
        ("RCPTMAX=1234567", 0),
        ("", 0),
    ],
)
def test_45_limits_rcptmax(limits: str, expected: int) -> None:
    assert parse_rcpt_max(limits) == expected


def test_enhanced_code_must_match_the_reply_class() -> None:
    assert split_enhanced("5.1.1 no such user", 550) == ("1.1", "no such user")
    assert split_enhanced("4.1.1 mismatch", 550) == ("", "4.1.1 mismatch")
    assert split_enhanced("no code here", 250) == ("", "no code here")
