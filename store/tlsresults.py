"""TLS results in PostgreSQL, merged per policy domain, day and recipient domain (spec 02 §6)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from domain.tlsrpt import TLSResult
from store.db import Pool


async def record(
    pool: Pool, recipient_domain: str, results: Sequence[TLSResult], now: datetime, send_report: bool
) -> None:
    """Add an attempt's results to the day's rows; send_report, once true, stays true."""
    day = now.strftime("%Y%m%d")
    async with pool.connection() as conn, conn.transaction():
        for r in results:
            cur = await conn.execute(
                "SELECT result FROM tls_results"
                " WHERE policy_domain = %s AND day = %s AND recipient_domain = %s FOR UPDATE",
                (r.policy_domain, day, recipient_domain),
            )
            row = await cur.fetchone()
            if row is None:
                await conn.execute(
                    "INSERT INTO tls_results"
                    " (policy_domain, day, recipient_domain, is_host, send_report, result)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (r.policy_domain, day, recipient_domain, r.is_host, send_report, Jsonb(r.to_json())),
                )
                continue
            merged = TLSResult.from_json(row["result"])
            merged.merge(r)
            await conn.execute(
                "UPDATE tls_results SET result = %s, send_report = send_report OR %s, updated = %s"
                " WHERE policy_domain = %s AND day = %s AND recipient_domain = %s",
                (Jsonb(merged.to_json()), send_report, now, r.policy_domain, day, recipient_domain),
            )


async def list_results(pool: Pool, day: str = "", policy_domain: str = "") -> list[dict[str, Any]]:
    """Stored results, optionally for one day and/or policy domain."""
    where, args = [], []
    if day:
        where.append("day = %s")
        args.append(day)
    if policy_domain:
        where.append("policy_domain = %s")
        args.append(policy_domain)
    sql = "SELECT * FROM tls_results" + (" WHERE " + " AND ".join(where) if where else "")
    async with pool.connection() as conn:
        cur = await conn.execute(sql + " ORDER BY day, policy_domain, recipient_domain", args)  # type: ignore[arg-type]
        return list(await cur.fetchall())
