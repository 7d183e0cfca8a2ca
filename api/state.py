"""What every API request handler shares: configuration, clients and the authenticator."""

from __future__ import annotations

from temporalio.client import Client

from api.auth import Authenticator
from domain.config import Config
from domain.dkim import Keyring
from domain.errors import WebAPIError
from domain.ratelimit import AuthFailureLimiter, RequestLimiter
from store.db import Pool


class NotConnected(WebAPIError):
    """A request needs PostgreSQL or Temporal before the process has reached it: 503, try again later."""

    def __init__(self, part: str) -> None:
        super().__init__("unavailable", f"{part} is not reachable yet; try again later", 503)


class AppState:
    """Process-wide handles of the API.

    The API listens before PostgreSQL and Temporal are reachable (the parts of a deployment start in any
    order), so the pool and the client arrive later; until then a handler that needs one gets NotConnected.
    """

    def __init__(
        self,
        config: Config,
        auth: Authenticator,
        client: Client | None = None,
        pool: Pool | None = None,
        *,
        unsubscribe_secret: bytes = b"",
        unsubscribe_limiter: RequestLimiter | None = None,
        dkim: Keyring | None = None,
    ) -> None:
        self.config = config
        self.auth = auth
        self.auth_limiter = AuthFailureLimiter()
        self.connected_client = client
        self.connected_pool = pool
        # Signs one-click unsubscribe tokens; empty when unsubscribe is not set up.
        self.unsubscribe_secret = unsubscribe_secret
        self.unsubscribe_limiter = unsubscribe_limiter or RequestLimiter(120)
        # DKIM keys, loaded once at start.
        self.dkim = dkim or Keyring()

    @property
    def client(self) -> Client:
        """The Temporal client, once connected."""
        if self.connected_client is None:
            raise NotConnected("Temporal")
        return self.connected_client

    @property
    def pool(self) -> Pool:
        """The PostgreSQL pool, once PostgreSQL answered."""
        if self.connected_pool is None:
            raise NotConnected("PostgreSQL")
        return self.connected_pool
