"""What every API request handler shares: configuration, clients and the authenticator."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.client import Client

from api.auth import Authenticator
from domain.config import Config
from domain.dkim import Keyring
from domain.ratelimit import AuthFailureLimiter
from store.db import Pool


@dataclass
class AppState:
    """Process-wide handles of the API."""

    config: Config
    client: Client
    pool: Pool
    auth: Authenticator
    # DKIM keys, loaded once at start.
    dkim: Keyring = field(default_factory=Keyring)
    auth_limiter: AuthFailureLimiter = field(default_factory=AuthFailureLimiter)
