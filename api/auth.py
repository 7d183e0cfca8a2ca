"""Authentication: HTTP basic per account for the webapi, a bearer token for the admin API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from domain.config import AccountConfig, Config
from domain.passwords import verify_password

# Verified credentials are remembered briefly so a busy sender does not pay a PBKDF2 run per request.
_CACHE_SECONDS = 60.0
# PBKDF2 runs on worker threads (hashlib releases the GIL), a few at once; beyond that many checks
# waiting, a login is refused at once rather than queueing work without bound.
_CHECK_THREADS = min(4, os.cpu_count() or 1)
_CHECKS_WAITING = 64


class AuthBusy(Exception):
    """Too many password checks are running or waiting; the caller should try again shortly."""


class AuthLimited(Exception):
    """The caller's address has failed too often: no password check is started for it."""


class _PasswordChecks:
    """The process's password-check threads and the bound on how many checks may be pending."""

    def __init__(self, threads: int, waiting: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="password-check")
        self._slots = threading.BoundedSemaphore(threads + waiting)

    async def run(self, account: AccountConfig, password: str) -> bool:
        """Whether the password is the account's, checked off the event loop; AuthBusy when full."""
        if not self._slots.acquire(blocking=False):
            raise AuthBusy
        # The slot is freed when the check itself ends, not when its caller stops waiting: a client
        # that hangs up cannot make room for more work than the threads can do.
        try:
            future = self._executor.submit(_password_ok, account, password)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)


_checks = _PasswordChecks(_CHECK_THREADS, _CHECKS_WAITING)


def _password_ok(account: AccountConfig, password: str) -> bool:
    if account.password_hash:
        return verify_password(password, account.password_hash)
    try:
        stored = Path(account.password_file).read_text().strip()
    except OSError:
        return False
    return hmac.compare_digest(stored.encode(), password.encode())


@dataclass(frozen=True)
class Login:
    """An authenticated webapi caller: the account and the address it logged in with."""

    account: AccountConfig
    address: str


class Authenticator:
    """Checks webapi and admin credentials against the configuration; secrets are never logged."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._cache: dict[bytes, float] = {}
        # Checks running, by credentials: requests with the same credentials wait for the one check (a
        # client's burst of first requests costs one PBKDF2 run and one attempt against the limiter).
        self._running: dict[bytes, asyncio.Future[bool]] = {}
        token = os.environ.get("TEMPOST_ADMIN_TOKEN", "")
        if not token and config.api.admin_token_file:
            token = Path(config.api.admin_token_file).read_text().strip()
        self._admin_digest = hashlib.sha256(token.encode()).digest() if token else b""

    async def basic(self, authorization: str | None, admit: Callable[[], bool] | None = None) -> Login | None:
        """The login for an `Authorization: Basic ...` header, or None when it does not authenticate.

        `admit` is asked before a password check starts, not for credentials verified a moment ago or
        being checked already; when it says no, AuthLimited. Raises AuthBusy when too many password
        checks are already pending.
        """
        if not authorization or not authorization.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        account = self._config.account_for_address(user)
        if account is None:
            return None
        key = hashlib.sha256(f"{account.name}\0{password}".encode()).digest()
        if self._cache.get(key, 0.0) > time.monotonic():
            return Login(account, user)
        running = self._running.get(key)
        if running is None:
            if admit is not None and not admit():
                raise AuthLimited
            running = asyncio.ensure_future(_checks.run(account, password))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        # Shielded: one caller hanging up must not cancel the check the others wait for.
        if not await asyncio.shield(running):
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = time.monotonic() + _CACHE_SECONDS
        return Login(account, user)

    def admin(self, authorization: str | None) -> bool:
        """Whether an `Authorization: Bearer ...` header carries the admin token."""
        if not self._admin_digest or not authorization or not authorization.lower().startswith("bearer "):
            return False
        got = hashlib.sha256(authorization[7:].strip().encode()).digest()
        return hmac.compare_digest(got, self._admin_digest)
