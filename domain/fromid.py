"""Unique MAIL FROM addresses per recipient ("FromID", spec 03 §4.2), so bounces find their message."""

from __future__ import annotations


def sender_localpart(from_localpart: str, separator: str, from_id: str) -> str:
    """The MAIL FROM localpart: the From localpart up to its first separator, the separator, the FromID."""
    base = from_localpart.split(separator, 1)[0]
    return f"{base}{separator}{from_id}"


def from_id_of(rcpt_localpart: str, separator: str) -> str:
    """The FromID in a bounce's RCPT TO localpart: everything after the first separator ("" if none)."""
    if not separator or separator not in rcpt_localpart:
        return ""
    return rcpt_localpart.split(separator, 1)[1]
