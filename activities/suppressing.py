"""Automatic suppression-list additions after a failure (spec 03 §2.3), shared by delivery and bounces."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from domain.addresses import AddressError, parse_address
from domain.suppression import base_address, block_reason, history_reason, immediate_block, original_address
from store import suppressions
from store.db import Conn

log = logging.getLogger("tempost.suppression")

ADDED = Counter(
    "tempost_suppression_added_total",
    "Addresses put on a suppression list automatically, by source (queue, DSN) and rule (block, history).",
    ["source", "rule"],
)
REFUSED = Counter(
    "tempost_suppression_refused_total",
    "Deliveries refused because the recipient is on the suppression list.",
)


async def suppress_after_failure(
    conn: Conn,
    *,
    account: str,
    recipient: str,
    history_address: str,
    code: int,
    secode: str,
    permanent: bool,
    msg_id: int,
    source: str,
) -> bool:
    """Add the recipient to the account's list when the failure calls for it; whether an entry was added.

    Failures without an SMTP code never add. A blocking code adds at once; otherwise two earlier failed
    retired messages to the same address (history_address, the exact address) make three in a row.
    source is "queue" or "DSN" and goes into the reason text.
    """
    if code == 0:
        return False
    try:
        addr = parse_address(recipient)
    except AddressError:
        return False
    base, original = base_address(addr), original_address(addr)
    rule = "block"
    if permanent and immediate_block(code, secode):
        reason = block_reason(source, code, secode)
    else:
        rule = "history"
        history = await suppressions.recent_failures(conn, history_address, msg_id)
        if len(history) < 2 or any(history):
            return False
        reason = history_reason(source)
    added = await suppressions.add_automatic(conn, account, base, original, reason)
    if added:
        ADDED.labels(source, rule).inc()
        log.info("suppressing %s for account %s: %s", base, account, reason)
    return added
