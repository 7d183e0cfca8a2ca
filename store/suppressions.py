"""Suppression list entries in PostgreSQL (spec 03 §2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from store.db import Conn, Pool


class DuplicateSuppression(Exception):
    """The account already has an entry for this base address."""


class AbsentSuppression(Exception):
    """No entry for this base address."""


async def add(
    pool: Pool, account: str, base: str, original: str, *, manual: bool, reason: str
) -> dict[str, Any]:
    """Add an entry; DuplicateSuppression when the base address is already listed for the account."""
    if not account:
        raise ValueError("a suppression needs an account")
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO suppressions (account, base_address, original_address, manual, reason)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING *",
                (account, base, original, manual, reason),
            )
            row = await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise DuplicateSuppression(f"suppression for {base} is not unique") from None
    assert row is not None
    return row


async def add_automatic(conn: Conn, account: str, base: str, original: str, reason: str) -> bool:
    """Add an entry unless one exists; whether it was added (the failure is then "suppressing")."""
    cur = await conn.execute(
        "INSERT INTO suppressions (account, base_address, original_address, manual, reason)"
        " VALUES (%s, %s, %s, false, %s) ON CONFLICT (account, base_address) DO NOTHING RETURNING id",
        (account, base, original, reason),
    )
    return await cur.fetchone() is not None


async def remove(pool: Pool, account: str, base: str) -> None:
    """Remove an entry; AbsentSuppression when there is none."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM suppressions WHERE account = %s AND base_address = %s RETURNING id", (account, base)
        )
        if await cur.fetchone() is None:
            raise AbsentSuppression("absent")


async def present(pool: Pool, account: str, base: str) -> bool:
    """Whether the base address is listed (any account when account is "")."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT 1 FROM suppressions WHERE (%s = '' OR account = %s) AND base_address = %s",
            (account, account, base),
        )
        return await cur.fetchone() is not None


async def listed(pool: Pool, account: str, bases: Sequence[str]) -> set[str]:
    """Which of the base addresses the account has listed."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT base_address FROM suppressions WHERE account = %s AND base_address = ANY(%s)",
            (account, list(bases)),
        )
        return {r["base_address"] for r in await cur.fetchall()}


async def list_account(pool: Pool, account: str) -> list[dict[str, Any]]:
    """The account's entries, oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM suppressions WHERE account = %s ORDER BY id", (account,))
        return list(await cur.fetchall())


async def recent_failures(conn: Conn, recipient_address: str, exclude_id: int) -> list[bool]:
    """Success flags of the two most recent retired messages to this exact address (spec 03 §2.3 rule 3)."""
    cur = await conn.execute(
        "SELECT success FROM retired_msgs WHERE recipient_address = %s AND id <> %s"
        " ORDER BY last_activity DESC LIMIT 2",
        (recipient_address, exclude_id),
    )
    return [r["success"] for r in await cur.fetchall()]


async def list_all(pool: Pool) -> list[dict[str, Any]]:
    """Every account's entries, by account then id."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM suppressions ORDER BY account, id")
        return list(await cur.fetchall())
