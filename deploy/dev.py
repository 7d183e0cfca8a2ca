"""`tempost dev`: the embedded default stack on one machine (DESIGN §8).

Temporal's dev server and PostgreSQL run as child processes with their state under the data directory;
the worker and the API run in this process. Ctrl-C stops everything in order; the next start finds the
queued mail and the timers where they were.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from deploy.dkimcli import generate_key, write_key
from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port
from deploy.serve import install_stop_signals, serve_all
from domain.config import (
    DIRECT,
    LOCALSERVE,
    Config,
    FailTransport,
    SMTPTransport,
    SocksTransport,
    load_config,
)
from workflows.searchattrs import CLI_TYPES

DEV_ACCOUNT = "dev"
DEV_ADDRESS = "dev@localhost"
DEV_DOMAIN = "localhost"
# The dev domain's DKIM selectors: an Ed25519 and an RSA key signing side by side, as in production.
DEV_SELECTORS = (("ed25519", "ed25519-sha256"), ("rsa", "rsa-sha256"))
# Temporal's own convention: the Web UI listens 1000 above the frontend (7233 -> 8233).
UI_PORT_OFFSET = 1000


def _secret_file(path: Path, env_var: str) -> str:
    """The secret from the environment (written to the file) or the file, generating one on first use."""
    value = os.environ.get(env_var, "")
    if not value and path.exists():
        value = path.read_text().strip()
    if not value:
        value = secrets.token_urlsafe(18)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def dev_keys(data_dir: Path) -> None:
    """Generate the dev domain's DKIM keys under the data directory, once; later starts keep them."""
    keys = data_dir / "dkim"
    keys.mkdir(mode=0o700, exist_ok=True)
    for selector, algorithm in DEV_SELECTORS:
        path = keys / f"{selector}.pem"
        if not path.exists():
            write_key(path, generate_key(algorithm))


def _dkim_section(data_dir: Path) -> str:
    lines = [f'[domains."{DEV_DOMAIN}".dkim]', f"sign = {[s for s, _ in DEV_SELECTORS]!r}".replace("'", '"')]
    for selector, algorithm in DEV_SELECTORS:
        lines += [
            "",
            f'[domains."{DEV_DOMAIN}".dkim.selectors.{selector}]',
            f'algorithm = "{algorithm}"',
            f'private_key_file = "{data_dir / "dkim" / f"{selector}.pem"}"',
        ]
    return "\n".join(lines) + "\n"


def write_dev_config(path: Path, data_dir: Path, api_port: int) -> None:
    """Write the embedded stack's configuration file, choosing free ports once."""
    pg_port = free_port()
    path.write_text(
        f"""# Written by `tempost dev` on first start; edit freely (all settings: tempost.example.toml).
hostname = "localhost"

[database]
url = "postgresql://postgres@127.0.0.1:{pg_port}/tempost"

[temporal]
address = "127.0.0.1:7233"

[api]
listen = "127.0.0.1:{api_port}"
admin_token_file = "{data_dir / "admin-token"}"
# One-click unsubscribe links (Send with "ListUnsubscribe": true) point here and are signed with this.
public_url = "http://127.0.0.1:{api_port}"
unsubscribe_secret_file = "{data_dir / "unsubscribe-secret"}"

[worker]
metrics_listen = ""

[queue]
default_transport = "localserve"

[[accounts]]
name = "{DEV_ACCOUNT}"
full_name = "Dev"
addresses = ["{DEV_ADDRESS}"]
password_file = "{data_dir / "dev-password"}"
keep_retired_period = "168h"

# Dev mail is DKIM-signed with keys made on first start (GET /admin/v0/dkim shows their records).
{_dkim_section(data_dir)}"""
    )


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def run_dev(data_dir: Path, api_port: int | None) -> None:
    """Start the embedded stack and serve until SIGINT/SIGTERM."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = data_dir / "tempost.toml"
    dev_keys(data_dir)
    if not cfg_path.exists():
        write_dev_config(cfg_path, data_dir, api_port or 8025)
    elif "[domains" not in cfg_path.read_text():
        # A data directory from before dev mail was signed: sign it from now on.
        with cfg_path.open("a") as f:
            f.write("\n" + _dkim_section(data_dir))
    password = _secret_file(data_dir / "dev-password", "TEMPOST_DEV_PASSWORD")
    token = _secret_file(data_dir / "admin-token", "TEMPOST_ADMIN_TOKEN")
    _secret_file(data_dir / "unsubscribe-secret", "TEMPOST_UNSUBSCRIBE_SECRET")
    config = load_config(cfg_path)
    if api_port is not None:
        listen = f"127.0.0.1:{api_port}"
        api = {"listen": listen}
        if config.api.public_url == f"http://{config.api.listen}":
            # The links point at the dev API itself: they follow it to its new port.
            api["public_url"] = f"http://{listen}"
        config = config.model_copy(update={"api": config.api.model_copy(update=api)})

    pg = EmbeddedPostgres(
        data_dir / "postgres",
        _port(config.database.url.rsplit("/", 1)[0]),
        log_file=data_dir / "postgres.log",
    )
    temporal = TemporalDevServer(
        data_dir / "temporal.db",
        port=_port(config.temporal.address),
        ui_port=_port(config.temporal.address) + UI_PORT_OFFSET,
        log_file=data_dir / "temporal.log",
        # Registered at start so the UI can filter on them from the first workflow.
        search_attributes=sorted(CLI_TYPES.items()),
    )
    try:
        print("starting PostgreSQL ...", flush=True)
        pg.start()
        print("starting Temporal dev server ...", flush=True)
        temporal.start()
        asyncio.run(_serve(config, password, token))
    finally:
        temporal.stop()
        pg.stop()
        print("stopped", flush=True)


def _on_this_machine(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _transport_words(config: Config, name: str) -> tuple[str, bool]:
    """What a transport does with mail, in the banner's words, and whether the mail leaves this machine."""
    if name == LOCALSERVE:
        return "simulated (localserve)", False
    if name == DIRECT:
        return "direct to each recipient domain's MX hosts", True
    t = config.transports[name]
    if isinstance(t, SMTPTransport):
        local = _on_this_machine(t.host)
        where = " on this machine" if local else ""
        return f'relayed to {t.host}:{t.effective_port}{where} ({t.type}, transport "{name}")', not local
    if isinstance(t, SocksTransport):
        return f'direct, through the SOCKS5 proxy {t.address} (transport "{name}")', True
    assert isinstance(t, FailTransport)
    return f'failed at once with {t.smtp_code}, nothing sent (transport "{name}")', False


def delivery_summary(config: Config) -> str:
    """The banner's line on delivery: the loaded configuration's default transport, the other transports
    its routes can pick, and whether any mail leaves this machine."""
    default = config.queue.default_transport
    routes = [*config.routes, *(r for rs in config.domain_routes.values() for r in rs)]
    routes += [r for acc in config.accounts for r in acc.routes]
    routed = list(dict.fromkeys(r.transport for r in routes if r.transport != default))
    words, leaves = _transport_words(config, default)
    line = f"Delivery: {words}."
    if routed:
        described = [_transport_words(config, name) for name in routed]
        line += " Routes send some mail: " + "; ".join(w for w, _ in described) + "."
        leaves = leaves or any(out for _, out in described)
    return line + (" Mail leaves this machine." if leaves else " No mail leaves this machine.")


def banner(config: Config, password: str, token: str) -> str:
    """What `tempost dev` prints once it serves: where everything is and how it logs in."""
    return f"""
Tempost is running.
  API:          http://{config.api.listen}/  (webapi: /webapi/v0/, admin: /admin/v0/, ready: /readyz)
  Temporal UI:  http://127.0.0.1:{_port(config.temporal.address) + UI_PORT_OFFSET}/
  Dev account:  {DEV_ADDRESS}  password: {password}
  Admin token:  {token}
{delivery_summary(config)} Ctrl-C stops everything.
"""


async def _serve(config: Config, password: str, token: str) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        print(banner(config, password, token), flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await serve_all(config, stop, started)
    finally:
        announcer.cancel()
    sys.stdout.flush()
