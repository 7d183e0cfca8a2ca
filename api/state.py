"""What every API request handler shares: configuration, clients and the authenticator."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.client import Client

from api.auth import Authenticator
from domain.config import Config
from domain.ratelimit import AuthFailureLimiter, RequestLimiter
from store.db import Pool


@dataclass
class AppState:
    """Process-wide handles of the API."""

    config: Config
    client: Client
    pool: Pool
    auth: Authenticator
    auth_limiter: AuthFailureLimiter = field(default_factory=AuthFailureLimiter)
    # Signs one-click unsubscribe tokens; empty when unsubscribe is not set up.
    unsubscribe_secret: bytes = field(default=b"", repr=False)
    unsubscribe_limiter: RequestLimiter = field(default_factory=lambda: RequestLimiter(120))
