"""Hold rules in PostgreSQL (spec 01 §4)."""

from __future__ import annotations

from domain.holdrules import HoldRule
from store.db import Conn, Pool


def _rule(r: dict) -> HoldRule:
    return HoldRule(r["id"], r["account"], r["sender_domain_str"], r["recipient_domain_str"])


async def list_rules(conn: Conn) -> list[HoldRule]:
    """Every rule, in id order."""
    cur = await conn.execute("SELECT * FROM hold_rules ORDER BY id")
    return [_rule(r) for r in await cur.fetchall()]


async def add(
    pool: Pool, account: str, sender: tuple[str, str] | None, recipient: tuple[str, str] | None
) -> HoldRule:
    """Store a rule; sender/recipient are (ASCII, Unicode) domain names or None."""
    s_ascii, s_str = sender or ("", "")
    r_ascii, r_str = recipient or ("", "")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO hold_rules (account, sender_domain, recipient_domain, sender_domain_str,"
            " recipient_domain_str) VALUES (%s, %s, %s, %s, %s) RETURNING *",
            (account, s_ascii, r_ascii, s_str, r_str),
        )
        row = await cur.fetchone()
    assert row is not None
    return _rule(row)


async def remove(pool: Pool, rule_id: int) -> bool:
    """Delete a rule; False when there was none. Held messages stay held (spec 01 §4.4)."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM hold_rules WHERE id = %s RETURNING id", (rule_id,))
        return await cur.fetchone() is not None


async def queued_matches(pool: Pool, rule: HoldRule) -> list[dict]:
    """(id, base_id) of queued messages a new rule holds (AND of its set fields, §4.3)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT id, base_id FROM queue_msgs WHERE true
                 AND (%s = '' OR sender_account = %s)
                 AND (%s = '' OR sender_domain_str = %s)
                 AND (%s = '' OR recipient_domain_str = %s)
               ORDER BY id""",
            (
                rule.account,
                rule.account,
                rule.sender_domain_str,
                rule.sender_domain_str,
                rule.recipient_domain_str,
                rule.recipient_domain_str,
            ),
        )
        return list(await cur.fetchall())


async def count_held(pool: Pool) -> int:
    """Queued messages on hold (the hold gauge, always a full count as in mox)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM queue_msgs WHERE hold")
        row = await cur.fetchone()
        return int(row["n"]) if row else 0
