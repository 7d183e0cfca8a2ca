"""Hold rules (spec 01 §4): which messages are held when queued, and which queued ones a new rule holds.

The two questions have different answers in mox and Tempost keeps both, on purpose: at queue time any
matching field holds (OR, an empty rule field equal to an empty message field), while a newly added rule
holds existing messages only where every field it sets matches (AND). Operators should read the rules
with that in mind: a rule naming only an account also holds every null-sender message (DSNs) at queue time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HoldRule:
    """A hold rule; every field empty is the "all" rule that pauses the whole queue."""

    id: int
    account: str = ""
    sender_domain_str: str = ""  # Unicode names
    recipient_domain_str: str = ""

    @property
    def is_all(self) -> bool:
        """Whether the rule holds everything."""
        return not (self.account or self.sender_domain_str or self.recipient_domain_str)


def holds_new(rule: HoldRule, account: str, sender_domain_str: str, recipient_domain_str: str) -> bool:
    """Whether the rule holds a message being queued (spec 01 §4.2: OR over fields, mox's quirk kept)."""
    return (
        rule.is_all
        or rule.account == account
        or rule.sender_domain_str == sender_domain_str
        or rule.recipient_domain_str == recipient_domain_str
    )


def describe(rule: HoldRule) -> str:
    """One line for listings (the CLI prints it)."""
    if rule.is_all:
        return f"id {rule.id}: all messages"
    return (
        f'id {rule.id}: account "{rule.account}", sender domain "{rule.sender_domain_str}", '
        f'recipient domain "{rule.recipient_domain_str}"'
    )
