"""Webhook rows in PostgreSQL: pending hooks, retired hooks, and the leases that bound calls in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from domain.config import Config
from domain.webhooks import CANCELED_BY_ADMIN, IN_PROGRESS, Outgoing, subscribed
from store.db import Conn, Pool

Row = dict[str, Any]

# Serialises lease decisions across processes; any constant shared by every process works.
_LEASE_LOCK = 7_314_160

_RETIRED_COLUMNS = (
    "id, queue_msg_id, from_id, message_id, subject, extra, account, url, has_auth, is_incoming,"
    " outgoing_event, payload, submitted, superseded_by_id, attempts, results, success, last_activity,"
    " keep_until"
)


@dataclass(frozen=True)
class NewHook:
    """A hook to queue: an event about one message, for one account's URL."""

    account: str
    url: str
    auth_header: str
    payload: str
    outgoing_event: str
    queue_msg_id: int = 0
    from_id: str = ""
    message_id: str = ""
    subject: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    is_incoming: bool = False


def event_hook(config: Config, account: str, out: Outgoing, *, incoming_msg_id: str = "") -> NewHook | None:
    """The hook that tells the account about an event; None when it has no webhook subscribed to it.

    The Authorization value is read now and kept with the hook, as mox does (spec 03 §3.1).
    """
    acc = config.account(account)
    hook_cfg = acc.outgoing_webhook if acc is not None else None
    if hook_cfg is None or not subscribed(hook_cfg.events, out.event):
        return None
    return NewHook(
        account=account,
        url=hook_cfg.url,
        auth_header=hook_cfg.authorization(),
        payload=out.payload(),
        outgoing_event=out.event.value,
        queue_msg_id=out.queue_msg_id,
        from_id=out.from_id,
        # For DSN-triggered hooks the record names the incoming DSN; the payload names the original.
        message_id=incoming_msg_id or out.message_id,
        subject=out.subject,
        extra={} if out.dsn else dict(out.extra),
    )


@dataclass(frozen=True)
class Queued:
    """A hook just inserted, and the pending hook it superseded (0 when none)."""

    id: int
    superseded: int


def result_entry(
    start: datetime, end: datetime, *, url: str, success: bool, code: int, error: str, response: str
) -> dict[str, Any]:
    """One attempt's result in mox's shape (spec 03 §3.4); Duration in nanoseconds."""
    return {
        "Start": start.isoformat(),
        "Duration": int((end - start).total_seconds() * 1e9),
        "URL": url,
        "Success": success,
        "Code": code,
        "Error": error,
        "Response": response,
    }


async def insert(conn: Conn, hook: NewHook, now: datetime, keep: timedelta) -> Queued:
    """Queue a hook in the caller's transaction; the pending hook for the same message is superseded.

    Only the latest event per message stays pending (spec 03 §3.4). The superseded one is kept as a retired
    hook pointing at its successor when the account keeps retired hooks.
    """
    cur = await conn.execute("SELECT nextval('hook_id_seq') AS id")
    row = await cur.fetchone()
    assert row is not None
    hook_id = int(row["id"])
    superseded = 0
    if hook.queue_msg_id > 0:
        cur = await conn.execute(
            "DELETE FROM hooks WHERE queue_msg_id = %s RETURNING *", (hook.queue_msg_id,)
        )
        old = await cur.fetchone()
        if old is not None:
            superseded = int(old["id"])
            if keep > timedelta(0):
                await _insert_retired(
                    conn, old, success=False, last_activity=now, keep=keep, superseded_by=hook_id
                )
    await conn.execute(
        """INSERT INTO hooks (id, queue_msg_id, from_id, message_id, subject, extra, account, url,
               auth_header, is_incoming, outgoing_event, payload, submitted, next_attempt)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            hook_id,
            hook.queue_msg_id,
            hook.from_id,
            hook.message_id,
            hook.subject,
            Jsonb(hook.extra),
            hook.account,
            hook.url,
            hook.auth_header,
            hook.is_incoming,
            hook.outgoing_event,
            hook.payload,
            now,
            now,
        ),
    )
    return Queued(hook_id, superseded)


async def _insert_retired(
    conn: Conn, row: Row, *, success: bool, last_activity: datetime, keep: timedelta, superseded_by: int = 0
) -> None:
    values = dict(row)
    values.update(
        has_auth=bool(row["auth_header"]),
        superseded_by_id=superseded_by,
        success=success,
        last_activity=last_activity,
        keep_until=last_activity + keep,
    )
    cols = [c.strip() for c in _RETIRED_COLUMNS.split(",")]
    await conn.execute(
        f"INSERT INTO retired_hooks ({_RETIRED_COLUMNS}) VALUES ({', '.join(['%s'] * len(cols))})"
        " ON CONFLICT (id) DO NOTHING",  # type: ignore[arg-type]
        tuple(Jsonb(values[c]) if c in ("extra", "results") else values[c] for c in cols),
    )


async def get(pool: Pool, hook_id: int) -> Row | None:
    """A pending hook."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM hooks WHERE id = %s", (hook_id,))
        return await cur.fetchone()


async def get_retired(pool: Pool, hook_id: int) -> Row | None:
    """A retired hook."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM retired_hooks WHERE id = %s", (hook_id,))
        return await cur.fetchone()


async def begin_attempt(
    pool: Pool, hook_id: int, next_attempt: datetime, placeholder: dict[str, Any]
) -> Row | None:
    """Count an attempt and move the next one forward before calling, so a crash cannot loop tightly."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """UPDATE hooks SET attempts = attempts + 1, next_attempt = %s, results = results || %s
               WHERE id = %s RETURNING *""",
            (next_attempt, Jsonb([placeholder]), hook_id),
        )
        return await cur.fetchone()


async def finish_attempt(
    pool: Pool, hook_id: int, result: dict[str, Any], *, final: bool, keep: timedelta, now: datetime
) -> str:
    """Replace the attempt's placeholder by its result; retire the hook when final.

    Returns "pending", "retired", or "gone" when the hook left the queue during the call (superseded or
    canceled): its result then goes to the retired record, marked "(superseded)".
    """
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT * FROM hooks WHERE id = %s FOR UPDATE", (hook_id,))
        row = await cur.fetchone()
        if row is None:
            late = dict(result, Error=(result["Error"] + " (superseded)").strip())
            await conn.execute(
                "UPDATE retired_hooks SET results = results || %s WHERE id = %s", (Jsonb([late]), hook_id)
            )
            return "gone"
        results = list(row["results"])
        if results and results[-1].get("Error") == IN_PROGRESS and results[-1].get("Duration") == 0:
            results[-1] = result
        else:
            results.append(result)
        if not final:
            await conn.execute("UPDATE hooks SET results = %s WHERE id = %s", (Jsonb(results), hook_id))
            return "pending"
        await conn.execute("DELETE FROM hooks WHERE id = %s", (hook_id,))
        if keep > timedelta(0):
            row["results"] = results
            start = datetime.fromisoformat(result["Start"])
            await _insert_retired(conn, row, success=result["Success"], last_activity=start, keep=keep)
        return "retired"


async def acquire_lease(pool: Pool, url: str, hook_id: int, now: datetime, cap: int, ttl: timedelta) -> bool:
    """Take the URL's call slot if it is free and fewer than `cap` calls run anywhere (spec 03 §3.7)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASE_LOCK,))
        await conn.execute("DELETE FROM hook_leases WHERE expires < %s", (now,))
        cur = await conn.execute(
            "SELECT count(*) AS n, coalesce(bool_or(url = %s), false) AS busy FROM hook_leases", (url,)
        )
        row = await cur.fetchone()
        assert row is not None
        if row["busy"] or row["n"] >= cap:
            return False
        await conn.execute(
            "INSERT INTO hook_leases (url, hook_id, expires) VALUES (%s, %s, %s)", (url, hook_id, now + ttl)
        )
        return True


async def release_lease(pool: Pool, url: str, hook_id: int) -> None:
    """Give the URL's slot back."""
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM hook_leases WHERE url = %s AND hook_id = %s", (url, hook_id))


async def mark_workflow_started(pool: Pool, hook_ids: Sequence[int]) -> None:
    """Remember that these hooks' workflows exist, so the sweeper leaves them alone."""
    async with pool.connection() as conn:
        await conn.execute("UPDATE hooks SET workflow_started = true WHERE id = ANY(%s)", (list(hook_ids),))


async def unstarted(pool: Pool, older_than: timedelta) -> list[Row]:
    """Hooks committed a while ago whose workflow was never started (their starter died)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, next_attempt FROM hooks WHERE NOT workflow_started AND submitted < now() - %s"
            " ORDER BY id LIMIT 1000",
            (older_than,),
        )
        return list(await cur.fetchall())


async def started_pending(pool: Pool) -> list[Row]:
    """Pending hooks whose workflow was started: each must have a running workflow."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, next_attempt FROM hooks WHERE workflow_started ORDER BY id")
        return list(await cur.fetchall())


@dataclass(frozen=True)
class HookFilter:
    """Which hooks an admin operation or listing applies to (spec 03 §3.9); empty fields match all."""

    ids: tuple[int, ...] = ()
    account: str = ""
    event: str = ""  # "incoming" selects incoming hooks, anything else an outgoing event
    submitted: tuple[str, datetime] | None = None  # ("<" or ">", instant)
    next_attempt: tuple[str, datetime] | None = None
    last_activity: tuple[str, datetime] | None = None
    max: int = 0


def _where(f: HookFilter, retired: bool) -> tuple[str, list[Any]]:
    conds: list[str] = []
    args: list[Any] = []
    if f.ids:
        conds.append("id = ANY(%s)")
        args.append(list(f.ids))
    if f.account:
        conds.append("account = %s")
        args.append(f.account)
    if f.event == "incoming":
        conds.append("is_incoming")
    elif f.event:
        conds.append("outgoing_event = %s")
        args.append(f.event)
    times = [("submitted", f.submitted)]
    times.append(("last_activity", f.last_activity) if retired else ("next_attempt", f.next_attempt))
    for col, cond in times:
        if cond is not None:
            conds.append(f"{col} {'<' if cond[0] == '<' else '>'} %s")
            args.append(cond[1])
    return (" WHERE " + " AND ".join(conds)) if conds else "", args


async def list_hooks(
    pool: Pool, f: HookFilter, *, retired: bool, sort: str, asc: bool, last: tuple[datetime, int] | None
) -> list[Row]:
    """Hooks (or retired hooks) matching f, sorted by `sort` then id, after the keyset `last`."""
    table = "retired_hooks" if retired else "hooks"
    where, args = _where(f, retired)
    if last is not None:
        op = ">" if asc else "<"
        where += (" AND " if where else " WHERE ") + f"({sort}, id) {op} (%s, %s)"
        args += [last[0], last[1]]
    direction = "ASC" if asc else "DESC"
    sql = f"SELECT * FROM {table}{where} ORDER BY {sort} {direction}, id {direction}"
    if f.max > 0:
        sql += f" LIMIT {int(f.max)}"
    async with pool.connection() as conn:
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        return list(await cur.fetchall())


async def count(pool: Pool) -> int:
    """Number of pending hooks."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM hooks")
        row = await cur.fetchone()
        return int(row["n"]) if row else 0


async def schedule(pool: Pool, f: HookFilter, *, at: datetime | None, add: timedelta | None) -> list[Row]:
    """Set or shift the next attempt of matching hooks; returns (id, next_attempt) of those changed."""
    where, args = _where(f, retired=False)
    eargs: list[Any]
    if at is not None:
        expr, eargs = "%s", [at]
    else:
        expr, eargs = "next_attempt + %s", [add or timedelta(0)]
    sql = f"UPDATE hooks SET next_attempt = {expr}{where} RETURNING id, next_attempt"
    async with pool.connection() as conn:
        cur = await conn.execute(sql, [*eargs, *args])  # type: ignore[arg-type]
        return list(await cur.fetchall())


async def cancel(pool: Pool, f: HookFilter, now: datetime, keep: Callable[[str], timedelta]) -> list[int]:
    """Remove matching hooks; retired with a "canceled by admin" result when their account keeps them."""
    where, args = _where(f, retired=False)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(f"DELETE FROM hooks{where} RETURNING *", args)  # type: ignore[arg-type]
        rows = list(await cur.fetchall())
        for r in rows:
            period = keep(r["account"])
            if period > timedelta(0):
                r["results"] = [
                    *r["results"],
                    result_entry(
                        now, now, url=r["url"], success=False, code=0, error=CANCELED_BY_ADMIN, response=""
                    ),
                ]
                await _insert_retired(conn, r, success=False, last_activity=now, keep=period)
    return [r["id"] for r in rows]


async def cleanup_retired(pool: Pool, now: datetime) -> int:
    """Delete retired hooks past their keep period."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM retired_hooks WHERE keep_until < %s", (now,))
        return cur.rowcount
