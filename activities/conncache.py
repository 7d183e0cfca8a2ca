"""A worker process's cache of idle SMTP sessions, so consecutive deliveries to one destination share one.

Modelled on Postfix's connection cache (smtp_connection_cache_*, smtp_connection_reuse_*): after a
transaction that left the session in a good state, the transport gives the session back here instead of
sending QUIT. The next delivery with the same key takes it, sends RSET and needs 250 before MAIL FROM; a
session that fails that check is dropped and the caller opens a fresh one, as if the cache were empty, so a
dead cached connection never costs an attempt. Idle sessions are QUIT when they have waited longer than the
idle limit (a reaper task runs while any are idle), when the session has carried its share of transactions
or grown too old, and when the worker stops.

The key holds everything that made the session, the TLS policy decision above all: a session is only ever
handed to an attempt that would have built the same one (a session verified by DANE for one TLSA set never
serves an attempt that needs another, a plaintext or opportunistic session never serves one that needs
verified TLS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from activities.metrics import SESSION_REUSE_FAILURES, SESSIONS_REUSED
from activities.smtpclient import SessionError, SMTPConnection
from domain.config import QueueConfig

# How long a cached session may take to answer RSET: Postfix's smtp_rset_timeout. Shorter than a command
# timeout because a fresh session is the cheap alternative.
_RSET_TIMEOUT = 20.0


@dataclass(frozen=True)
class SessionKey:
    """What a session was built for; only an attempt that would build the same session may reuse it."""

    transport: str
    # The name the session was made for (an MX host, a relay) and the address dialed ("" for a relay,
    # which is dialed by name), and the port.
    host: str
    ip: str
    port: int
    ehlo: str
    # The TLS policy decision the session was set up under: mode, certificate verification, DANE records
    # and names, TLS-Required: No. Compared whole, so no weaker session serves a stronger policy.
    tls: tuple[str, ...]
    # The SASL identity a relay session is logged in as ("" for none).
    login: str = ""
    # The SOCKS5 proxy the connection goes through ("" for none).
    proxy: str = ""


@dataclass
class _Idle:
    conn: SMTPConnection
    # When the session was given back (time.monotonic).
    since: float


class ConnectionCache:
    """Idle SMTP sessions by SessionKey, within Postfix-like limits; one per worker process."""

    def __init__(
        self,
        *,
        idle_limit: float,
        reuse_count_limit: int = 100,
        reuse_time_limit: float = 300.0,
        per_destination: int = 4,
        total: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle_limit = idle_limit
        self._reuse_count_limit = reuse_count_limit
        self._reuse_time_limit = reuse_time_limit
        self._per_destination = per_destination
        self._total = total
        self._clock = clock
        # Per key, oldest first: the newest is taken first, being the likeliest to be alive.
        self._idle: dict[SessionKey, list[_Idle]] = {}
        self._count = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, queue: QueueConfig) -> ConnectionCache:
        """The cache the [queue] settings describe (connection_cache_time_limit "0s": caching is off)."""
        return cls(
            idle_limit=queue.connection_cache_time_limit.total_seconds(),
            reuse_count_limit=queue.connection_reuse_count_limit,
            reuse_time_limit=queue.connection_reuse_time_limit.total_seconds(),
            per_destination=queue.connection_cache_destination_limit,
            total=queue.connection_cache_limit,
        )

    @property
    def enabled(self) -> bool:
        """Whether sessions are kept at all."""
        return self._idle_limit > 0 and not self._closed

    def idle(self) -> int:
        """How many sessions wait in the cache."""
        return self._count

    async def take(self, key: SessionKey) -> SMTPConnection | None:
        """An idle session for key that answered RSET with 250, or None: the caller opens a fresh one."""
        while True:
            entries = self._idle.get(key)
            if not entries:
                return None
            entry = entries.pop()
            if not entries:
                del self._idle[key]
            self._count -= 1
            conn = entry.conn
            if self._expired(entry, self._clock()):
                await conn.close()
                continue
            try:
                await conn.reset(_RSET_TIMEOUT)
            except SessionError:
                # Closed by the server while idle, timed out, or confused: never used again, and not the
                # attempt's concern (RFC 5321 §4.1.1.5 RSET is how Postfix finds out too).
                SESSION_REUSE_FAILURES.inc()
                conn.abort()
                continue
            except BaseException:
                conn.abort()
                raise
            conn.reuses += 1
            SESSIONS_REUSED.inc()
            return conn

    async def give_back(self, key: SessionKey, conn: SMTPConnection) -> None:
        """Keep a session whose transaction just ended for the next delivery to key, or QUIT it when it may
        not be kept: caching off, session not in a good state, reuse count or age used up."""
        now = self._clock()
        if (
            not self.enabled
            or not conn.reusable
            or conn.reuses >= self._reuse_count_limit
            or now - conn.opened_at >= self._reuse_time_limit
        ):
            await conn.close()
            return
        evicted: list[_Idle] = []
        entries = self._idle.setdefault(key, [])
        if len(entries) >= self._per_destination:
            evicted.append(entries.pop(0))
            self._count -= 1
        elif self._count >= self._total:
            evicted.append(self._pop_oldest())
        entries.append(_Idle(conn, now))
        self._count += 1
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="smtp-connection-cache-reaper")
        await _close_all(evicted)

    async def close(self) -> None:
        """QUIT every idle session and keep none from now on: for the worker's shutdown."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        entries = [e for es in self._idle.values() for e in es]
        self._idle.clear()
        self._count = 0
        await _close_all(entries)

    def _expired(self, entry: _Idle, now: float) -> bool:
        return (
            now - entry.since > self._idle_limit
            or now - entry.conn.opened_at >= self._reuse_time_limit
            or not entry.conn.reusable
        )

    def _pop_oldest(self) -> _Idle:
        key = min(self._idle, key=lambda k: self._idle[k][0].since)
        entries = self._idle[key]
        entry = entries.pop(0)
        if not entries:
            del self._idle[key]
        self._count -= 1
        return entry

    async def _reap(self) -> None:
        """QUIT sessions as they pass the idle limit; ends when none is left (the next give_back restarts
        it), so an idle worker holds no task and no connection."""
        while self._idle:
            now = self._clock()
            expired: list[_Idle] = []
            for key in list(self._idle):
                entries = self._idle[key]
                kept = [e for e in entries if not self._expired(e, now)]
                expired += [e for e in entries if self._expired(e, now)]
                if kept:
                    self._idle[key] = kept
                else:
                    del self._idle[key]
            self._count -= len(expired)
            await _close_all(expired)
            if not self._idle:
                return
            oldest = min(e.since for es in self._idle.values() for e in es)
            # A little past the limit, so the oldest has expired when the task wakes.
            await asyncio.sleep(max(0.0, oldest + self._idle_limit - self._clock()) + 0.01)


async def _close_all(entries: list[_Idle]) -> None:
    if entries:
        await asyncio.gather(*(e.conn.close() for e in entries), return_exceptions=True)
