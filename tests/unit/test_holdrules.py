"""Hold-rule matching for new mail (spec 01 §4.2), mox's quirks included."""

from __future__ import annotations

from domain.holdrules import HoldRule, describe, holds_new


def test_all_rule_holds_everything_and_fields_match_with_or() -> None:
    everything = HoldRule(1)
    assert everything.is_all and holds_new(everything, "shop", "example.org", "example.com")
    rule = HoldRule(2, account="shop", recipient_domain_str="example.com")
    assert holds_new(rule, "shop", "example.org", "other.example")
    assert holds_new(rule, "other", "example.org", "example.com")
    assert not holds_new(rule, "other", "example.org", "other.example")


def test_empty_rule_field_equals_an_empty_message_field() -> None:
    # mox's quirk, kept: a rule naming only an account also holds null-sender mail (DSNs).
    rule = HoldRule(3, account="shop")
    assert holds_new(rule, "other", "", "example.com")


def test_describe_names_each_field() -> None:
    assert describe(HoldRule(1)) == "id 1: all messages"
    assert describe(HoldRule(2, "shop", "", "example.com")) == (
        'id 2: account "shop", sender domain "", recipient domain "example.com"'
    )
