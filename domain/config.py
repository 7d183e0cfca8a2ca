"""Tempost's configuration: one TOML file validated by pydantic, env overrides for connections."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from domain.durations import parse_duration
from domain.unsubscribe import MIN_SECRET_LENGTH, check_public_url
from domain.webhooks import Event

LOCALSERVE = "localserve"
# Built-in transport: deliver to the recipient domain's MX hosts (spec 02 §1).
DIRECT = "direct"
BUILTIN_TRANSPORTS = (LOCALSERVE, DIRECT)
WEBHOOK_EVENTS = tuple(e.value for e in Event)


def _duration(v: object) -> object:
    if isinstance(v, str):
        return parse_duration(v)
    return v


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretFileError(ValueError):
    """A file the configuration names (a password, key or certificate) cannot be read."""


def read_secret_file(setting: str, path: str) -> str:
    """The stripped contents of a file named by a setting; the error names the setting and the path."""
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise SecretFileError(f"{setting} {path}: cannot read: {err.strerror or err}") from None


class DatabaseConfig(_Strict):
    """Where the system of record for data lives."""

    # libpq connection URL; TLS through its parameters (sslmode=verify-full, sslrootcert, sslcert, sslkey).
    url: str = "postgresql://postgres@127.0.0.1:5432/tempost"
    # File holding the password, so the URL (and the configuration file) carries none; "" for none.
    password_file: str = ""
    pool_min: int = 1
    pool_max: int = 10

    def password(self) -> str:
        """The password from password_file, "" when none is configured (never kept in this object)."""
        return read_secret_file("database.password_file", self.password_file) if self.password_file else ""


class TemporalConfig(_Strict):
    """Which Temporal frontend, namespace and task queue the worker and API use, and how to reach it."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "tempost"
    # TLS to the frontend; on by itself when any of the files below is set.
    tls: bool = False
    # PEM file of the CA that signed the frontend's certificate; "" trusts the system store.
    tls_ca_file: str = ""
    # Client certificate and its key (PEM) for mTLS; both or neither.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Name to send (SNI) and verify the certificate against, when it differs from the address's host.
    tls_server_name: str = ""
    # File holding an API key (Temporal Cloud), sent as a bearer token; TEMPOST_TEMPORAL_API_KEY wins.
    api_key_file: str = ""

    @model_validator(mode="after")
    def _cert_and_key(self) -> TemporalConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("temporal: set both tls_cert_file and tls_key_file, or neither")
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is TLS: asked for, or implied by any of the files or the server name (an
        API key is only ever sent over TLS)."""
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_server_name, self.api_key_file)
        return self.tls or any(files)


# Where the unsubscribe signing secret may come from instead of api.unsubscribe_secret_file.
UNSUBSCRIBE_SECRET_ENV = "TEMPOST_UNSUBSCRIBE_SECRET"


class ApiConfig(_Strict):
    """The HTTP API process."""

    listen: str = "127.0.0.1:8025"
    # The admin bearer token is a secret: it comes from a file or the TEMPOST_ADMIN_TOKEN environment
    # variable, never from this file.
    admin_token_file: str = ""
    max_message_size: int = 100 * 1024 * 1024
    # The API's public base URL ("https://mail.example.com"), for links in messages: one-click unsubscribe
    # (RFC 8058) links are <public_url>/unsubscribe/<token>. Required when an account has list_unsubscribe.
    public_url: str = ""
    # File holding the secret that signs unsubscribe tokens (at least 16 characters); the
    # TEMPOST_UNSUBSCRIBE_SECRET environment variable wins over it. The secret itself is never in the
    # configuration. Changing it invalidates every unsubscribe link already sent.
    unsubscribe_secret_file: str = ""
    # Unsubscribe requests (GET and POST) one client IP may make per minute; more get 429. Mailbox
    # providers make the one-click POSTs from their own servers, so leave room for them.
    unsubscribe_per_minute: int = Field(default=120, ge=1)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        return check_public_url(v) if v else v

    def unsubscribe_secret(self, environ: Mapping[str, str] | None = None) -> bytes:
        """The unsubscribe signing secret ("" when none is set up); ValueError when it is too short."""
        env = os.environ if environ is None else environ
        secret = env.get(UNSUBSCRIBE_SECRET_ENV, "")
        if not secret and self.unsubscribe_secret_file:
            secret = Path(self.unsubscribe_secret_file).read_text().strip()
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the unsubscribe secret must be at least {MIN_SECRET_LENGTH} characters")
        return secret.encode()


class WorkerConfig(_Strict):
    """The worker process."""

    metrics_listen: str = "127.0.0.1:9464"
    # The Temporal SDK's own metrics (workflow/activity task latencies, poller counts, ...) in Prometheus
    # format on this address ("" leaves them off).
    sdk_metrics_listen: str = ""
    # How often the retention schedule deletes retired messages and hooks past their keep period; the
    # first run comes at worker start. "0s" creates no schedule.
    retention_interval: Duration = timedelta(hours=1)
    # How often the MTA-STS refresh schedule deletes cached policies unused for 180 days and refreshes
    # those not updated for 12 hours (spread over 3 hours); the first run comes at worker start. "0s"
    # creates no schedule.
    mtasts_refresh_interval: Duration = timedelta(hours=24)
    max_concurrent_activities: int = 100
    # On shutdown, how long running activities (an SMTP transaction mid-DATA) may take to finish before
    # they are cancelled; a cancelled attempt is retried by the next worker.
    shutdown_grace: Duration = timedelta(seconds=15)
    # Address ("ip:port") of an SMTP listener for bounces to FromID addresses (spec 03 §4); empty: none.
    # Point the MX of the domains with a catch-all separator (or a forwarding rule) at it.
    bounces_listen: str = ""


class QueueConfig(_Strict):
    """Scheduling of delivery attempts (spec 01 §2)."""

    backoff_base: Duration = timedelta(minutes=7, seconds=30)
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Upper bound for one attempt (connect, TLS, transaction); the activity's start-to-close timeout.
    attempt_timeout: Duration = timedelta(minutes=10)
    # Transport used when a message names none: "direct" delivers to the recipient domain's MX hosts,
    # "localserve" simulates delivery (spec 01 §8); any other value must name an entry of [transports].
    default_transport: str = DIRECT
    # Deliveries (SMTP sessions) in flight at once over all workers; never more than one per recipient
    # domain on top of that (spec 01 §3) unless domain_concurrency allows more.
    max_concurrent_deliveries: int = Field(default=10, ge=1)
    # Deliveries in flight at once to a recipient domain, for the few big destinations that take several
    # connections; unlisted domains get one, as in mox.
    domain_concurrency: dict[str, Annotated[int, Field(ge=1)]] = {}
    # Optional rate limits: delivery attempts (SMTP transactions) per minute, by recipient domain.
    rate_limits: dict[str, Annotated[int, Field(ge=1)]] = {}
    # The SMTP connection cache of each worker process, as Postfix's: a session whose transaction ended
    # in a good state waits this long (smtp_connection_cache_time_limit) for the next message to the
    # same destination host, address, port and TLS policy, which reuses it after an RSET. "0s": off,
    # every attempt opens and QUITs its own session.
    connection_cache_time_limit: Duration = timedelta(seconds=2)
    # A session is taken from the cache at most this many times (smtp_connection_reuse_count_limit, which
    # is unlimited in Postfix; a bound spreads long runs over a server's other connections)...
    connection_reuse_count_limit: int = Field(default=100, ge=1)
    # ...and not after it has been open this long (smtp_connection_reuse_time_limit).
    connection_reuse_time_limit: Duration = timedelta(seconds=300)
    # Idle sessions kept per destination (host, address, port, TLS policy, EHLO name, login), and in all.
    connection_cache_destination_limit: int = Field(default=4, ge=1)
    connection_cache_limit: int = Field(default=100, ge=1)

    @field_validator("connection_cache_time_limit", "connection_reuse_time_limit")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @field_validator("domain_concurrency", "rate_limits")
    @classmethod
    def _domain_keys(cls, v: dict[str, int]) -> dict[str, int]:
        # Operators write "Gmail.com" or "bücher.example"; deliveries are keyed by the ASCII lowercase form.
        return {_ascii_domain(d): n for d, n in v.items()}

    def concurrency(self, domain: str) -> int:
        """Deliveries to domain allowed at once."""
        return self.domain_concurrency.get(_ascii_domain(domain), 1)

    def attempts_per_minute(self, domain: str) -> int:
        """The domain's rate limit, 0 for none."""
        return self.rate_limits.get(_ascii_domain(domain), 0)


def _ascii_domain(d: str) -> str:
    try:
        return d.rstrip(".").encode("idna").decode().lower()
    except UnicodeError:
        raise ValueError(f"invalid domain {d!r}") from None


class DirectConfig(_Strict):
    """Direct delivery to MX hosts (spec 02 §1)."""

    # Recursive resolvers as "ip" or "ip:port"; empty uses /etc/resolv.conf. DNSSEC results (DANE) are
    # only as good as this resolver's AD bit: point it at a validating resolver you trust.
    resolvers: list[str] = []
    # Port of remote SMTP servers; 25 except in tests.
    smtp_port: int = 25
    # Longest wait for one reply or write in an SMTP session.
    command_timeout: Duration = timedelta(minutes=5)
    # Extra trust anchors (PEM) for verifying remote certificates, besides the system store.
    ca_file: str = ""
    # Port of MTA-STS policy servers (RFC 8461 §3.3 says 443; other values are for tests).
    mtasts_port: int = 443


SASL_MECHANISMS = (
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "PLAIN",
)


class SMTPAuth(_Strict):
    """Credentials for a submission relay; the password comes from a file or the environment."""

    username: str
    password_file: str = ""
    # Name of an environment variable holding the password, as an alternative to password_file.
    password_env: str = ""
    # Tried in order; the first the server offers is used. PLAIN only when listed (spec 01 §7.4).
    mechanisms: list[str] = [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-1",
        "CRAM-MD5",
    ]

    @model_validator(mode="after")
    def _check(self) -> SMTPAuth:
        if bool(self.password_file) == bool(self.password_env):
            raise ValueError("auth: set exactly one of password_file and password_env")
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise ValueError("auth: duplicate mechanism")
        for m in self.mechanisms:
            if m not in SASL_MECHANISMS:
                raise ValueError(f"auth: unknown mechanism {m!r}")
        return self

    def password(self) -> str:
        """Read the secret (never stored in the configuration object itself)."""
        if self.password_env:
            return os.environ.get(self.password_env, "")
        return Path(self.password_file).read_text().strip()


class SMTPTransport(_Strict):
    """Relay everything to one SMTP server (spec 01 §7.4): smtp (25), submission (587), submissions (465)."""

    type: Literal["smtp", "submission", "submissions"] = "smtp"
    host: str
    # 0: the type's default port.
    port: int = 0
    # "required": STARTTLS must succeed; "opportunistic": used when offered; "none": never. Ignored for
    # submissions, which speaks TLS from the first byte.
    starttls: Literal["required", "opportunistic", "none"] = "required"
    # Verify the relay's certificate against the system trust store (and ca_file).
    tls_verify: bool = True
    ca_file: str = ""
    auth: SMTPAuth | None = None
    connect_timeout: Duration = timedelta(seconds=30)
    command_timeout: Duration = timedelta(minutes=5)

    @property
    def effective_port(self) -> int:
        """The configured port, or the type's default."""
        return self.port or {"smtp": 25, "submission": 587, "submissions": 465}[self.type]

    @property
    def verifies_tls(self) -> bool:
        """Whether every session is TLS with a verified certificate (what RequireTLS needs)."""
        return self.tls_verify and (self.type == "submissions" or self.starttls == "required")


class DirectTransport(_Strict):
    """Direct delivery, optionally over one address family only (spec 01 §7.4, Direct)."""

    type: Literal["direct"]
    disable_ipv4: bool = False
    disable_ipv6: bool = False

    @model_validator(mode="after")
    def _check(self) -> DirectTransport:
        if self.disable_ipv4 and self.disable_ipv6:
            raise ValueError("direct transport: cannot disable both IPv4 and IPv6")
        return self


class SocksTransport(_Strict):
    """Direct delivery with every connection made through a SOCKS5 proxy (spec 01 §7.4, Socks)."""

    type: Literal["socks"]
    # host:port of the proxy; no proxy authentication. DNS stays local.
    address: str
    # The proxy's public IPs, for documentation (SPF, reverse DNS); not used to connect.
    remote_ips: list[str] = []
    # The name the proxy's IPs are known by; used in EHLO.
    remote_hostname: str

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"socks address {v!r}: want host:port")
        return v


class FailTransport(_Strict):
    """Fails every message at once with a configured reply (spec 01 §7.4, Fail)."""

    type: Literal["fail"]
    smtp_code: int = Field(default=554, ge=400, le=599)
    smtp_message: str = Field(
        default="transport fail: explicit immediate delivery failure per configuration", max_length=256
    )


Transport = Annotated[
    SMTPTransport | DirectTransport | SocksTransport | FailTransport, Field(discriminator="type")
]


def _route_domain(d: str) -> str:
    if d == ".":
        return d
    dot = "." if d.startswith(".") else ""
    try:
        return dot + d.lstrip(".").encode("idna").decode().lower()
    except UnicodeError:
        raise ValueError(f"route: invalid domain {d!r}") from None


class Route(_Strict):
    """Sends matching messages through a named transport (spec 01 §7.3)."""

    from_domain: list[str] = []
    to_domain: list[str] = []
    # Only from this many completed attempts on: "use the smarthost after 3 failures".
    minimum_attempts: int = 0
    transport: str

    @field_validator("from_domain", "to_domain")
    @classmethod
    def _ascii(cls, v: list[str]) -> list[str]:
        return [_route_domain(d) for d in v]


class OutgoingWebhook(_Strict):
    """Where an account's delivery events go (spec 03 §3.1)."""

    url: str
    # The Authorization header value is a secret: read from a file or an environment variable.
    authorization_file: str = ""
    authorization_env: str = ""
    # Events to send; empty sends all of them.
    events: list[str] = []

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("outgoing_webhook.url: scheme must be http or https")
        return v

    @field_validator("events")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for e in v:
            if e not in WEBHOOK_EVENTS:
                raise ValueError(f"outgoing_webhook.events: unknown event {e!r}")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> OutgoingWebhook:
        if self.authorization_file and self.authorization_env:
            raise ValueError("outgoing_webhook: set at most one of authorization_file and authorization_env")
        return self

    def authorization(self) -> str:
        """The header value, read when a hook is queued (never kept in the configuration object)."""
        if self.authorization_env:
            return os.environ.get(self.authorization_env, "")
        if self.authorization_file:
            return Path(self.authorization_file).read_text().strip()
        return ""


class WebhookConfig(_Strict):
    """Delivery of outgoing webhooks (spec 03 §3.5–§3.7)."""

    # The first retry wait; later ones follow mox's schedule as multiples of it (1m, 2m, 4m, 7.5m ... 16h).
    first_retry: Duration = timedelta(minutes=1)
    # Calls in flight at once over all workers; one per URL on top of that.
    max_concurrent: int = Field(default=10, ge=1)
    # Limit for one whole HTTP exchange.
    timeout: Duration = timedelta(seconds=60)


# Header fields a DKIM signature covers unless a selector says otherwise: mox's list (the fields a reader or
# mail client interprets), plus the MIME fields that decide how the body is shown and RFC 8058's
# one-click unsubscribe fields, which RFC 8058 §4 requires to be signed.
DEFAULT_DKIM_HEADERS = (
    "From",
    "To",
    "Cc",
    "Bcc",
    "Reply-To",
    "References",
    "In-Reply-To",
    "Subject",
    "Date",
    "Message-Id",
    "Content-Type",
    "MIME-Version",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
DKIM_CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
# Fields no signature may cover: Return-Path and Received are added or changed by every hop (RFC 6376
# §5.4.1), and a signature cannot cover itself.
_UNSIGNABLE = {"return-path", "received", "dkim-signature"}
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


class DKIMSelector(_Strict):
    """One DKIM key of a domain, published at <name>._domainkey.<domain> (RFC 6376 §3.6.2.1)."""

    # "ed25519-sha256" (RFC 8463) or "rsa-sha256" (RFC 8301: at least 2048 bits here).
    algorithm: Literal["ed25519-sha256", "rsa-sha256"]
    # PEM file with the private key (PKCS#8, or PKCS#1 for RSA); read once when a process starts.
    private_key_file: str
    # Header fields to sign. With seal_headers each is signed once more than it occurs, so a copy added
    # in transit breaks the signature (RFC 6376 §8.15); as mox does by default.
    headers: list[str] = list(DEFAULT_DKIM_HEADERS)
    seal_headers: bool = True
    canonicalization: Literal["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"] = (
        "relaxed/relaxed"
    )
    # Signature lifetime: the x= tag (RFC 6376 §3.5), so replayed old mail stops verifying. 0s: none.
    expiration: Duration = timedelta(0)

    @field_validator("headers")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        lower = [h.lower() for h in v]
        for h in v:
            if not _FIELD_NAME.fullmatch(h):
                raise ValueError(f"dkim headers: {h!r} is not a header field name")
            if h.lower() in _UNSIGNABLE:
                raise ValueError(f"dkim headers: {h} must not be signed (RFC 6376 §5.4.1)")
        if "from" not in lower:
            raise ValueError("dkim headers: From must be signed (RFC 6376 §5.4)")
        if len(set(lower)) != len(lower):
            raise ValueError("dkim headers: a field is listed twice; seal_headers signs extra copies")
        return v

    @field_validator("expiration")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("dkim expiration must not be negative")
        return v


class DKIMConfig(_Strict):
    """A domain's DKIM selectors and the ones that sign now; rotation: add one, publish it, switch `sign`."""

    selectors: dict[str, DKIMSelector] = {}
    # Selectors that sign each message, in this order (e.g. an Ed25519 and an RSA one side by side).
    sign: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> DKIMConfig:
        for name in self.selectors:
            if not all(_LABEL.fullmatch(label) for label in name.split(".")):
                raise ValueError(f"dkim selector {name!r}: must be DNS labels (letters, digits, hyphens)")
        for name in self.sign:
            if name not in self.selectors:
                raise ValueError(f"dkim sign: unknown selector {name!r}")
        if len(set(self.sign)) != len(self.sign):
            raise ValueError("dkim sign: a selector is listed twice")
        return self


class DomainConfig(_Strict):
    """A sender domain of this installation."""

    # With a separator ("+"), localpart+anything@domain reaches localpart@domain: bounces to a unique
    # MAIL FROM (localpart+FROMID@domain) can then be matched to the message that caused them (spec 03 §4).
    localpart_catchall_separator: str = ""
    dkim: DKIMConfig = DKIMConfig()

    @field_validator("localpart_catchall_separator")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) > 1 or (v and (v.isalnum() or v in '@."\\ ')):
            raise ValueError("localpart_catchall_separator: one character such as + or -")
        return v


class AccountConfig(_Strict):
    """An account that may send mail over the webapi."""

    name: str
    full_name: str = ""
    addresses: list[str]
    # One of the two is required. password_hash is "pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>"
    # (make one with `tempost passwd`); password_file holds the password itself, for generated secrets.
    password_hash: str = ""
    password_file: str = ""
    # How long retired messages stay visible (spec 01 §6.2); 0 keeps none.
    keep_retired_period: Duration = timedelta(0)
    # Routes for this account's mail, checked before the sender domain's and the global ones.
    routes: list[Route] = []
    outgoing_webhook: OutgoingWebhook | None = None
    # Login addresses whose submissions get a unique MAIL FROM per recipient (FromID), so bounces can be
    # matched; each needs a domain with a catch-all separator.
    fromid_login_addresses: list[str] = []
    # How long delivered or failed webhook calls stay visible; 0 keeps none.
    keep_retired_webhook_period: Duration = timedelta(0)
    # Give every Send message one-click unsubscribe headers (RFC 8058) unless the request says
    # "ListUnsubscribe": false; needs api.public_url and the unsubscribe secret.
    list_unsubscribe: bool = False

    @model_validator(mode="after")
    def _one_password(self) -> AccountConfig:
        if bool(self.password_hash) == bool(self.password_file):
            raise ValueError(f"account {self.name!r}: set exactly one of password_hash and password_file")
        if not self.addresses:
            raise ValueError(f"account {self.name!r}: needs at least one address")
        return self


class Config(_Strict):
    """The whole configuration file."""

    hostname: str = "localhost"
    database: DatabaseConfig = DatabaseConfig()
    temporal: TemporalConfig = TemporalConfig()
    api: ApiConfig = ApiConfig()
    worker: WorkerConfig = WorkerConfig()
    queue: QueueConfig = QueueConfig()
    direct: DirectConfig = DirectConfig()
    webhooks: WebhookConfig = WebhookConfig()
    transports: dict[str, Transport] = {}
    # Routes per sender domain (Unicode or ASCII name), checked after the account's.
    domain_routes: dict[str, list[Route]] = {}
    # Global routes, checked last. No matching route: queue.default_transport.
    routes: list[Route] = []
    # Sender domains with settings of their own, by name (Unicode or ASCII).
    domains: dict[str, DomainConfig] = {}
    accounts: list[AccountConfig] = []

    @field_validator("transports")
    @classmethod
    def _no_reserved_names(cls, v: dict[str, Transport]) -> dict[str, Transport]:
        for name in BUILTIN_TRANSPORTS:
            if name in v:
                raise ValueError(f"transport name {name!r} is built in")
        return v

    @model_validator(mode="after")
    def _check_references(self) -> Config:
        dt = self.queue.default_transport
        if dt not in BUILTIN_TRANSPORTS and dt not in self.transports:
            raise ValueError(f"queue.default_transport {dt!r} is not a configured transport")
        all_routes = [*self.routes, *(r for rs in self.domain_routes.values() for r in rs)]
        all_routes += [r for acc in self.accounts for r in acc.routes]
        for r in all_routes:
            if r.transport not in BUILTIN_TRANSPORTS and r.transport not in self.transports:
                raise ValueError(f"route to unknown transport {r.transport!r}")
        for acc in self.accounts:
            for login in acc.fromid_login_addresses:
                where = f"account {acc.name!r}: fromid login {login!r}"
                if login.lower() not in (a.lower() for a in acc.addresses):
                    raise ValueError(f"{where} is not one of its addresses")
                if not self.separator(login.rpartition("@")[2]):
                    raise ValueError(f"{where} needs a domain with a catch-all separator")
        for acc in self.accounts:
            if acc.list_unsubscribe and not self.api.public_url:
                raise ValueError(
                    f"account {acc.name!r}: list_unsubscribe needs api.public_url, the base URL the API is"
                    " reached at from the internet (e.g. https://mail.example.com)"
                )
        seen: dict[str, str] = {}
        for acc in self.accounts:
            for addr in acc.addresses:
                key = addr.lower()
                if key in seen:
                    raise ValueError(f"address {addr!r} belongs to accounts {seen[key]!r} and {acc.name!r}")
                seen[key] = acc.name
        return self

    def account(self, name: str) -> AccountConfig | None:
        """The account with this name, if configured."""
        for acc in self.accounts:
            if acc.name == name:
                return acc
        return None

    def retired_webhook_keep(self, name: str) -> timedelta:
        """How long an account keeps retired hooks; a week for an account no longer configured (spec 03
        §3.1)."""
        acc = self.account(name)
        return acc.keep_retired_webhook_period if acc is not None else timedelta(hours=168)

    def domain_config(self, domain: str) -> DomainConfig | None:
        """The settings of a configured domain, by Unicode or ASCII name."""
        key = domain.lower().rstrip(".")
        for name, d in self.domains.items():
            n = name.lower().rstrip(".")
            if n == key:
                return d
            try:
                if n.encode("idna").decode() == key or key.encode("idna").decode() == n:
                    return d
            except UnicodeError:
                continue
        return None

    def separator(self, domain: str) -> str:
        """The catch-all separator of a configured domain ("" when none), by Unicode or ASCII name."""
        d = self.domain_config(domain)
        return d.localpart_catchall_separator if d is not None else ""

    def dkim_domains(self) -> list[tuple[str, DKIMConfig]]:
        """Every configured domain with DKIM selectors, by ASCII name (the d= tag and record names)."""
        return [(_ascii_domain(name), d.dkim) for name, d in self.domains.items() if d.dkim.selectors]

    def account_for_address(self, address: str) -> AccountConfig | None:
        """The account that owns this login address (case-insensitive)."""
        key = address.lower()
        for acc in self.accounts:
            if any(a.lower() == key for a in acc.addresses):
                return acc
        return None


# Environment variables that override connection settings, so one file serves several deployments.
ENV_OVERRIDES = {
    "TEMPOST_DATABASE_URL": ("database", "url"),
    "TEMPOST_TEMPORAL_ADDRESS": ("temporal", "address"),
    "TEMPOST_TEMPORAL_NAMESPACE": ("temporal", "namespace"),
    "TEMPOST_TEMPORAL_TASK_QUEUE": ("temporal", "task_queue"),
    "TEMPOST_API_LISTEN": ("api", "listen"),
    "TEMPOST_METRICS_LISTEN": ("worker", "metrics_listen"),
}


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment and validate a configuration file."""
    env = os.environ if environ is None else environ
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            raw.setdefault(section, {})[key] = env[var]
    return Config.model_validate(raw)
