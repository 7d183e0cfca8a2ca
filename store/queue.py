"""Queue rows in PostgreSQL: submissions, per-recipient messages, the delivery journal and retirement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from domain.filters import (
    RETIRED_SORT_FIELDS,
    SORT_FIELDS,
    QueueFilter,
    QueueSort,
    RetiredFilter,
    TimeCondition,
)
from store import attempts as attempt_outcomes
from store.db import Conn, Pool

Row = dict[str, Any]

PLACEHOLDER_ERROR = "delivering..."


@dataclass(frozen=True)
class NewMsg:
    """One recipient of a submission, as the API queues it."""

    sender_localpart: str
    sender_domain: str
    sender_domain_str: str
    recipient_localpart: str
    recipient_domain: str
    recipient_domain_str: str
    next_attempt: datetime
    # The stored message's size; insert_submission adds the prefix's.
    size: int
    message_id: str
    subject: str
    has8bit: bool = False
    smtputf8: bool = False
    hold: bool = False
    max_attempts: int = 0
    require_tls: bool | None = None
    future_release_request: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    from_id: str = ""
    transport: str = ""


def result_entry(
    start: datetime,
    end: datetime,
    *,
    success: bool = False,
    code: int = 0,
    secode: str = "",
    error: str = "",
) -> dict[str, Any]:
    """One MsgResult in mox's JSON shape (spec 01 §1.5); Duration is in nanoseconds."""
    return {
        "Start": start.isoformat(),
        "Duration": int((end - start).total_seconds() * 1e9),
        "Success": success,
        "Code": code,
        "Secode": secode,
        "Error": error,
    }


async def _next_ids(conn: Conn, n: int) -> list[int]:
    cur = await conn.execute("SELECT nextval('msg_id_seq') AS id FROM generate_series(1, %s)", (n,))
    return sorted(r["id"] if isinstance(r, dict) else r[0] for r in await cur.fetchall())


async def reserve_ids(pool: Pool, n: int) -> list[int]:
    """n message ids, ascending, for messages whose bytes must name their own id before they are queued.

    An id reserved and never used leaves a gap, as a rolled-back submission does.
    """
    async with pool.connection() as conn:
        return await _next_ids(conn, n)


async def insert_submission(
    conn: Conn,
    account: str,
    data: bytes,
    queued: datetime,
    msgs: Sequence[NewMsg],
    *,
    ids: Sequence[int] | None = None,
    prefix: bytes | Callable[[int], bytes] = b"",
) -> tuple[int, list[int]]:
    """Store a body once and one row per recipient; returns the BaseID and the message ids.

    ids are ids from reserve_ids, ascending, one per message; without them new ones are drawn. `prefix`
    (header fields sent before the body: Received, DKIM-Signature) is stored once with it; given as a
    function it is made from the BaseID, which a Received field names. Each row's size should count
    prefix and body. Runs on the caller's connection so the caller decides the transaction boundary.
    """
    if not msgs:
        raise ValueError("must queue at least one message")
    if ids is None:
        ids = await _next_ids(conn, len(msgs))
    elif len(ids) != len(msgs) or list(ids) != sorted(ids):
        raise ValueError("reserved ids must be ascending, one per message")
    ids = list(ids)
    base_id = ids[0]
    head = prefix(base_id) if callable(prefix) else prefix
    await conn.execute(
        "INSERT INTO submissions (id, account, prefix, data, created) VALUES (%s, %s, %s, %s, %s)",
        (base_id, account, head, data, queued),
    )
    async with conn.cursor() as cur2:
        await cur2.executemany(
            """INSERT INTO queue_msgs (id, base_id, queued, hold, sender_account, sender_localpart,
                sender_domain, sender_domain_str, from_id, recipient_localpart, recipient_domain,
                recipient_domain_str, max_attempts, next_attempt, has8bit, smtputf8, size, message_id,
                subject, transport, require_tls, future_release_request, extra)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                %s, %s)""",
            [
                (
                    mid,
                    base_id,
                    queued,
                    m.hold,
                    account,
                    m.sender_localpart,
                    m.sender_domain,
                    m.sender_domain_str,
                    m.from_id,
                    m.recipient_localpart,
                    m.recipient_domain,
                    m.recipient_domain_str,
                    m.max_attempts,
                    m.next_attempt,
                    m.has8bit,
                    m.smtputf8,
                    m.size + len(head),
                    m.message_id,
                    m.subject,
                    m.transport,
                    m.require_tls,
                    m.future_release_request,
                    Jsonb(m.extra),
                )
                for mid, m in zip(ids, msgs, strict=True)
            ],
        )
    return base_id, ids


async def mark_workflow_started(pool: Pool, base_id: int) -> None:
    """Record that the submission's Delivery workflow exists, so the sweeper leaves it alone."""
    async with pool.connection() as conn:
        await conn.execute("UPDATE submissions SET workflow_started = true WHERE id = %s", (base_id,))


async def unstarted_submissions(pool: Pool, older_than: timedelta) -> list[int]:
    """BaseIDs committed without a known workflow for longer than `older_than`."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM submissions WHERE NOT workflow_started AND created < now() - %s ORDER BY id",
            (older_than,),
        )
        return [r["id"] for r in await cur.fetchall()]


async def started_submissions_with_queued_mail(pool: Pool) -> list[int]:
    """BaseIDs whose workflow was started and that still have queued messages: each must have a running
    workflow."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT DISTINCT m.base_id AS id FROM queue_msgs m JOIN submissions s ON s.id = m.base_id
               WHERE s.workflow_started ORDER BY 1"""
        )
        return [r["id"] for r in await cur.fetchall()]


async def submission_rows(pool: Pool, base_id: int) -> list[Row]:
    """The queue rows of one submission, in id order."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM queue_msgs WHERE base_id = %s ORDER BY id", (base_id,))
        return list(await cur.fetchall())


@dataclass(frozen=True)
class AttemptStart:
    """Where a delivery attempt starts: its queued rows, the body, the outcomes earlier tries recorded."""

    rows: list[Row]
    body: bytes | None
    # Message id -> the outcome an earlier try of the same attempt recorded (a RecipientOutcome as JSON).
    recorded: dict[int, dict[str, Any]]


async def begin_attempt(
    pool: Pool, attempts: Mapping[int, tuple[int, datetime]], now: datetime
) -> AttemptStart:
    """Write the attempt's bookkeeping before any network activity (spec 01 §2.3); return where it starts.

    attempts maps message id to (attempt number, next attempt time). A retried activity for the same
    attempt number does not append a second placeholder result.
    """
    ids = list(attempts)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT id, attempts, results FROM queue_msgs WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)
        )
        rows = await cur.fetchall()
        placeholder = result_entry(now, now, error=PLACEHOLDER_ERROR)
        for r in rows:
            attempt, next_attempt = attempts[r["id"]]
            results = r["results"]
            if r["attempts"] < attempt:
                results = results + [placeholder]
            await conn.execute(
                """UPDATE queue_msgs SET attempts = %s, last_attempt = %s, next_attempt = %s, results = %s
                   WHERE id = %s""",
                (attempt, now, next_attempt, Jsonb(results), r["id"]),
            )
        recorded = await attempt_outcomes.recorded(conn, {i: a for i, (a, _) in attempts.items()})
        cur = await conn.execute("SELECT * FROM queue_msgs WHERE id = ANY(%s) ORDER BY id", (ids,))
        full = list(await cur.fetchall())
        if not full:
            return AttemptStart([], None, recorded)
        cur = await conn.execute(
            "SELECT prefix || data AS data FROM submissions WHERE id = %s", (full[0]["base_id"],)
        )
        body = await cur.fetchone()
    return AttemptStart(full, bytes(body["data"]) if body else None, recorded)


async def record_accepted(pool: Pool, ids: Sequence[int], reply: str, now: datetime) -> None:
    """Journal that the next hop accepted DATA for these recipients; must happen before anything else."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE queue_msgs SET accepted_at = %s, accepted_reply = %s WHERE id = ANY(%s)",
            (now, reply, list(ids)),
        )


def _with_result(results: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    # The attempt's placeholder is completed in place; otherwise the outcome is a new entry.
    if "_end" in entry and results and results[-1].get("Error") == PLACEHOLDER_ERROR:
        start = results[-1]["Start"]
        entry = dict(entry, Start=start)
        entry["Duration"] = int(
            (datetime.fromisoformat(entry["_end"]) - datetime.fromisoformat(start)).total_seconds() * 1e9
        )
        return results[:-1] + [{k: v for k, v in entry.items() if k != "_end"}]
    return results + [{k: v for k, v in entry.items() if k != "_end"}]


def outcome_entry(now: datetime, *, success: bool, code: int, secode: str, error: str) -> dict[str, Any]:
    """A result entry ending now; its Start is taken from the attempt's placeholder when there is one."""
    e = result_entry(now, now, success=success, code=code, secode=secode, error=error)
    e["_end"] = now.isoformat()
    return e


async def record_results(conn: Conn, entries: Mapping[int, dict[str, Any]]) -> None:
    """Store the outcome of an attempt for messages that stay queued (temporary failures).

    Runs in the caller's transaction, which records the rest of the attempt's outcome with it.
    """
    cur = await conn.execute(
        "SELECT id, results FROM queue_msgs WHERE id = ANY(%s) FOR UPDATE", (list(entries),)
    )
    for r in await cur.fetchall():
        await conn.execute(
            "UPDATE queue_msgs SET results = %s WHERE id = %s",
            (Jsonb(_with_result(r["results"], entries[r["id"]])), r["id"]),
        )


async def record_dialed(conn: Conn, ids: Sequence[int], dialed: Mapping[str, list[str]]) -> None:
    """Remember which IPs direct delivery connected to, per host, for the next attempt's ordering."""
    await conn.execute(
        "UPDATE queue_msgs SET dialed_ips = %s WHERE id = ANY(%s)", (Jsonb(dict(dialed)), list(ids))
    )


_RETIRED_COLUMNS = (
    "id, base_id, queued, sender_account, sender_localpart, sender_domain_str, from_id, recipient_localpart,"
    " recipient_domain, recipient_domain_str, recipient_address, attempts, max_attempts, dialed_ips,"
    " last_attempt, results, has8bit, smtputf8, is_dmarc_report, is_tls_report, size, message_id, subject,"
    " transport, require_tls, future_release_request, extra, event, success, last_activity, keep_until"
)


def recipient_address(row: Row) -> str:
    """The recipient as an address string (Unicode domain; a bare IP for IP literals)."""
    dom = row["recipient_domain_str"]
    if dom.startswith("[") and dom.endswith("]"):
        dom = dom[1:-1]
    return f"{row['recipient_localpart']}@{dom}"


async def retire(
    pool: Pool,
    entries: Mapping[int, dict[str, Any] | None],
    event: str,
    keep: Mapping[str, timedelta],
    now: datetime,
) -> list[Row]:
    """Move messages out of the queue in a transaction of their own; see retire_rows."""
    async with pool.connection() as conn, conn.transaction():
        return await retire_rows(conn, entries, event, keep, now)


async def retire_rows(
    conn: Conn,
    entries: Mapping[int, dict[str, Any] | None],
    event: str,
    keep: Mapping[str, timedelta],
    now: datetime,
    on_retired: Callable[[Conn, list[Row]], Awaitable[None]] | None = None,
) -> list[Row]:
    """Move messages out of the queue in the caller's transaction (spec 01 §6.2); returns the retired rows.

    on_retired runs with the rows removed (to queue their webhooks in the same transaction).

    entries maps message id to the result entry to record (None: record nothing new). keep gives the
    account's retention; accounts without one keep nothing. Ids no longer queued are skipped, which
    makes a retried call harmless. The body is deleted with the submission's last queued row.
    """
    cur = await conn.execute("DELETE FROM queue_msgs WHERE id = ANY(%s) RETURNING *", (list(entries),))
    rows = list(await cur.fetchall())
    success = event == "delivered"
    retired = []
    for r in rows:
        entry = entries[r["id"]]
        if entry is not None:
            r["results"] = _with_result(r["results"], entry)
        if event == "failed" and r["last_attempt"] is None:
            r["last_attempt"] = now
        period = keep.get(r["sender_account"], timedelta(0))
        if period <= timedelta(0):
            continue
        r.update(
            recipient_address=recipient_address(r),
            event=event,
            success=success,
            last_activity=now,
            keep_until=now + period,
        )
        retired.append(r)
    if retired:
        cols = [c.strip() for c in _RETIRED_COLUMNS.split(",")]
        async with conn.cursor() as c2:
            await c2.executemany(
                f"INSERT INTO retired_msgs ({_RETIRED_COLUMNS}) VALUES ({', '.join(['%s'] * len(cols))})",
                [
                    tuple(Jsonb(r[c]) if c in ("dialed_ips", "results", "extra") else r[c] for c in cols)
                    for r in retired
                ],
            )
    if on_retired is not None and rows:
        await on_retired(conn, rows)
    base_ids = sorted({r["base_id"] for r in rows})
    if base_ids:
        await conn.execute(
            """DELETE FROM submissions s WHERE s.id = ANY(%s)
               AND NOT EXISTS (SELECT 1 FROM queue_msgs q WHERE q.base_id = s.id)""",
            (base_ids,),
        )
    return rows


async def project_versioned(pool: Pool, states: Sequence[tuple[int, bool, datetime, int]]) -> None:
    """Copy workflow-owned state (id, hold, next attempt, version) into the queryable rows, where the row
    has an older version: projections landing out of order keep the newest state."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE queue_msgs q SET hold = s.hold, next_attempt = s.next_attempt, state_version = s.version "
            "FROM unnest(%s::bigint[], %s::bool[], %s::timestamptz[], %s::bigint[]) "
            "AS s(id, hold, next_attempt, version) "
            "WHERE q.id = s.id AND q.state_version < s.version",
            ([s[0] for s in states], [s[1] for s in states], [s[2] for s in states], [s[3] for s in states]),
        )


async def project(pool: Pool, ids: Sequence[int], hold: bool | None, next_attempt: datetime | None) -> None:
    """Copy workflow-owned state (hold, next attempt) into the queryable rows, unordered (the projections
    of workflows started by earlier releases)."""
    async with pool.connection() as conn, conn.transaction():
        if hold is not None:
            await conn.execute("UPDATE queue_msgs SET hold = %s WHERE id = ANY(%s)", (hold, list(ids)))
        if next_attempt is not None:
            await conn.execute(
                "UPDATE queue_msgs SET next_attempt = %s WHERE id = ANY(%s)", (next_attempt, list(ids))
            )


async def get_msg(pool: Pool, msg_id: int) -> Row | None:
    """One queued message, or None."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM queue_msgs WHERE id = %s", (msg_id,))
        return await cur.fetchone()


async def get_retired(pool: Pool, msg_id: int) -> Row | None:
    """One retired message, or None."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM retired_msgs WHERE id = %s", (msg_id,))
        return await cur.fetchone()


async def message_facts(conn: Conn, msg_id: int) -> Row | None:
    """What webhooks tell about a message, queued or retired: its account and the ids and subject an
    application knows it by; None once it is gone."""
    cur = await conn.execute(
        """SELECT sender_account, from_id, message_id, subject, extra FROM queue_msgs WHERE id = %s
           UNION ALL
           SELECT sender_account, from_id, message_id, subject, extra FROM retired_msgs WHERE id = %s
           LIMIT 1""",
        (msg_id, msg_id),
    )
    return await cur.fetchone()


async def raw_message(pool: Pool, msg_id: int) -> bytes | None:
    """The bytes that will be sent for a queued message."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT s.prefix || s.data AS data FROM queue_msgs q JOIN submissions s ON s.id = q.base_id"
            " WHERE q.id = %s",
            (msg_id,),
        )
        r = await cur.fetchone()
        return bytes(r["data"]) if r else None


_SENDER = "(sender_localpart || '@' || sender_domain_str)"
_RCPT = "(recipient_localpart || '@' || trim(both '[]' from recipient_domain_str))"


def _common_conditions(
    f: QueueFilter | RetiredFilter,
    now: datetime,
    rcpt: str,
    times: Sequence[tuple[str, TimeCondition | None]],
) -> tuple[list[str], list[Any]]:
    """The filter fields queued and retired listings share (spec 01 §5.1, §6.5)."""
    conds: list[str] = []
    args: list[Any] = []
    if f.ids:
        conds.append("id = ANY(%s)")
        args.append(list(f.ids))
    if f.account:
        conds.append("sender_account = %s")
        args.append(f.account)
    # mox ORs From and To when both are given (spec 01 §5.1 QUIRK, kept).
    if f.from_ and f.to:
        conds.append(f"(strpos({_SENDER}, %s) > 0 OR strpos({rcpt}, %s) > 0)")
        args += [f.from_, f.to]
    elif f.from_:
        conds.append(f"strpos({_SENDER}, %s) > 0")
        args.append(f.from_)
    elif f.to:
        conds.append(f"strpos({rcpt}, %s) > 0")
        args.append(f.to)
    for col, tc in times:
        if tc is not None:
            conds.append(f"{col} {'<' if tc.before else '>'} %s")
            args.append(tc.reference(now))
    if f.transport is not None:
        conds.append("transport = %s")
        args.append(f.transport)
    return conds, args


def _filter_sql(f: QueueFilter, now: datetime) -> tuple[str, list[Any]]:
    conds, args = _common_conditions(
        f, now, _RCPT, (("queued", f.submitted), ("next_attempt", f.next_attempt))
    )
    if f.hold is not None:
        conds.append("hold = %s")
        args.append(f.hold)
    return (" AND ".join(conds) or "true"), args


async def _page(
    pool: Pool, table: str, where: str, args: list[Any], col: str, sort: QueueSort, limit: int
) -> list[Row]:
    """Rows in (col, id) order, strictly after the keyset position of `sort` (spec 01 §5.2)."""
    if sort.last_id > 0 and sort.last is not None:
        op = ">" if sort.asc else "<"
        where += f" AND id <> %s AND ({col}, id) {op} (%s, %s)"
        args = [*args, sort.last_id, sort.last, sort.last_id]
    direction = "ASC" if sort.asc else "DESC"
    sql = f"SELECT * FROM {table} WHERE {where} ORDER BY {col} {direction}, id {direction}"
    if limit > 0:
        sql += " LIMIT %s"
        args = [*args, limit]
    async with pool.connection() as conn:
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        return list(await cur.fetchall())


async def list_msgs(pool: Pool, f: QueueFilter, sort: QueueSort, now: datetime) -> list[Row]:
    """Queued messages matching a filter, in (field, id) order with keyset continuation."""
    where, args = _filter_sql(f, now)
    return await _page(pool, "queue_msgs", where, args, SORT_FIELDS[sort.field], sort, f.max)


async def count_msgs(pool: Pool, f: QueueFilter, now: datetime) -> int:
    """Number of queued messages matching a filter (held ones included)."""
    where, args = _filter_sql(f, now)
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) AS n FROM queue_msgs WHERE {where}", args)  # type: ignore[arg-type]
        r = await cur.fetchone()
        return int(r["n"]) if r else 0


async def cleanup_retired(pool: Pool, now: datetime) -> int:
    """Delete retired messages past their keep period (spec 01 §6.2); returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM retired_msgs WHERE keep_until < %s", (now,))
        return cur.rowcount


async def matching(pool: Pool, f: QueueFilter, now: datetime) -> list[Row]:
    """The (id, base_id) an admin operation applies to; Max caps them in id order (spec 01 §5.3)."""
    where, args = _filter_sql(f, now)
    sql = f"SELECT id, base_id FROM queue_msgs WHERE {where} ORDER BY id"
    if f.max > 0:
        sql += " LIMIT %s"
        args.append(f.max)
    async with pool.connection() as conn:
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        return list(await cur.fetchall())


# Columns an admin operation may set on queued rows, with the SQL that sets them.
_SETTABLE = {
    "hold": "hold = %s",
    "next_attempt": "next_attempt = %s",
    "add_next_attempt": "next_attempt = next_attempt + %s",
    "transport": "transport = %s",
    "require_tls": "require_tls = %s",
}


def settable_sql(column: str) -> str:
    """The SET clause for one admin-settable column, its value a single placeholder."""
    return _SETTABLE[column]


async def update_rows(pool: Pool, ids: Sequence[int], column: str, value: Any) -> list[Row]:
    """Set one admin-settable column on queued rows; returns (id, base_id, next_attempt) of rows written."""
    sql = f"UPDATE queue_msgs SET {_SETTABLE[column]} WHERE id = ANY(%s) RETURNING id, base_id, next_attempt"
    async with pool.connection() as conn:
        cur = await conn.execute(sql, (value, list(ids)))  # type: ignore[arg-type]
        return list(await cur.fetchall())


async def list_retired(pool: Pool, f: RetiredFilter, sort: QueueSort, now: datetime) -> list[Row]:
    """Retired messages matching a filter, in (field, id) order with keyset continuation (spec 01 §6.5)."""
    times = (("queued", f.submitted), ("last_activity", f.last_activity))
    conds, args = _common_conditions(f, now, "recipient_address", times)
    if f.success is not None:
        conds.append("success = %s")
        args.append(f.success)
    where = " AND ".join(conds) or "true"
    return await _page(pool, "retired_msgs", where, args, RETIRED_SORT_FIELDS[sort.field], sort, f.max)
