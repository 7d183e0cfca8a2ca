"""Suppression lists (spec 03 §2): the base address entries are keyed by, and when failures add one."""

from __future__ import annotations

import re

from domain.addresses import Address

# Reply codes that block an address at once, and enhanced codes (without class) that do with a 5xx.
_BLOCK_CODES = {521, 550, 551, 553, 556}
_BLOCK_SECODES = {"1.1", "1.2", "1.3", "1.6", "2.1", "7.1"}
_DOT_ATOM = re.compile(
    r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+)*"
)


def base_address(addr: Address) -> str:
    """The address variants of one mailbox share: localpart cut at `+` then `-`, dots removed, lowercased.

    `M.j.l2+catchall@Mox.example` and `mjl2@mox.example` have the same base. The domain is in Unicode, an
    IP literal as the bare IP (spec 03 §2.2).
    """
    local = addr.localpart
    if local.startswith('"') and local.endswith('"'):
        local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    local = local.split("+", 1)[0].split("-", 1)[0].replace(".", "").lower()
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    domain = addr.domain_unicode
    if domain.startswith("[") and domain.endswith("]"):
        domain = domain[1:-1].removeprefix("IPv6:")
    return f"{local}@{domain}"


def original_address(addr: Address) -> str:
    """The address as failed, with the Unicode domain."""
    return addr.unicode


def immediate_block(code: int, secode: str) -> bool:
    """Whether a permanent failure with this reply adds the address at once (spec 03 §2.3 rule 2)."""
    return code in _BLOCK_CODES or (500 <= code < 600 and secode in _BLOCK_SECODES)


def block_reason(source: str, code: int, secode: str) -> str:
    """The reason text of an immediate block; SOURCE is "queue" or "DSN"."""
    return f'delivery failure from {source} with smtp code {code}, enhanced code "{secode}"'


def history_reason(source: str) -> str:
    """The reason text of a block after three failures in a row."""
    return f"delivery failure from {source} and three consecutive failures"


SUPPRESSED_ERROR = "not delivering to recipient address {addr}: address is on suppression list, permanent"
