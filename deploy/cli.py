"""The `tempost` command: dev, worker, api, migrate, config check, passwd, dkim."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from deploy.admincli import CLIError, add_commands
from deploy.logs import configure as configure_logging
from domain.config import Config, SecretFileError, load_config
from domain.passwords import hash_password

DEFAULT_CONFIG = os.environ.get("TEMPOST_CONFIG", "tempost.toml")


def _config(path: str) -> Config:
    try:
        return load_config(path)
    except FileNotFoundError:
        raise SystemExit(f"tempost: configuration file {path} not found") from None
    except (ValidationError, ValueError) as err:
        raise SystemExit(f"tempost: {path}: {err}") from None


def _end_process(run: Callable[[], None]) -> None:
    """Run a long-lived process to its end, then exit at once: 0 after a stop, 1 after an error.

    By the time `run` returns, workers, servers and pools are stopped and nothing is left to clean up. The
    interpreter's own finalization would only race the Temporal SDK's Rust threads, which can still call
    into Python then and abort the process with SIGABRT (sdk-python#300): a supervisor would record a
    crash for a clean stop. So the logs are flushed and the process ends without finalizing.
    """
    # Here, not at the top: the Temporal SDK's import costs every short command a tenth of a second.
    from worker.connect import TemporalCredentialsError

    code = 0
    try:
        run()
    except (SecretFileError, TemporalCredentialsError) as err:
        # A configuration mistake, not a bug: one line naming the setting and the file, or the credentials
        # Temporal refused.
        print(f"tempost: {err}", file=sys.stderr)
        code = 1
    except Exception:  # noqa: BLE001 - reported like an uncaught exception, then the same orderly exit
        traceback.print_exc()
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_dev(args: argparse.Namespace) -> None:
    from deploy.dev import run_dev

    _end_process(lambda: run_dev(Path(args.data_dir), args.api_port))


def _run_until_signal(
    args: argparse.Namespace, run: Callable[[Config, asyncio.Event], Awaitable[None]]
) -> None:
    """Run a long-lived process (worker, api or both) until SIGINT or SIGTERM."""
    from deploy.serve import install_stop_signals

    config = _config(args.config)

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(config, stop)

    _end_process(lambda: asyncio.run(go()))


def _cmd_worker(args: argparse.Namespace) -> None:
    from deploy.serve import serve_worker

    _run_until_signal(args, serve_worker)


def _cmd_api(args: argparse.Namespace) -> None:
    from deploy.serve import serve_api

    _run_until_signal(args, serve_api)


def _cmd_serve(args: argparse.Namespace) -> None:
    from deploy.serve import serve_all

    _run_until_signal(args, serve_all)


def _cmd_migrate(args: argparse.Namespace) -> None:
    import psycopg

    from store import db

    config = _config(args.config)
    url = db.conninfo(config.database)
    try:
        applied = asyncio.run(db.migrate(url))
    except psycopg.OperationalError as err:
        # libpq says what failed (refused, TLS, authentication) and never repeats the password; one line
        # naming the database is all an operator needs, not a traceback.
        reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise CLIError(f"PostgreSQL at {db.server_name(url)}: {reason}") from None
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is current"))


def _cmd_config_check(args: argparse.Namespace) -> None:
    from store.dkimkeys import KeyFileError, load_keyring

    config = _config(args.file)
    # DKIM keys are checked as the processes will load them: readable, of the selector's algorithm, RSA
    # of at least 2048 bits.
    try:
        ring = load_keyring(config)
    except KeyFileError as err:
        raise SystemExit(f"tempost: {args.file}: {err}") from None
    print(
        f"{args.file}: ok ({len(config.accounts)} accounts, {len(config.transports)} transports,"
        f" {len(ring.selectors)} dkim selectors)"
    )


def _cmd_dkim(args: argparse.Namespace) -> None:
    from deploy import dkimcli

    try:
        if args.dkim_cmd == "gen":
            dkimcli.cmd_gen(args)
        elif args.dkim_cmd == "records":
            dkimcli.cmd_records(_config(args.config))
        else:
            sys.exit(dkimcli.cmd_check(_config(args.config)))
    except dkimcli.DKIMCLIError as err:
        raise SystemExit(f"tempost: {err}") from None


def _cmd_passwd(args: argparse.Namespace) -> None:
    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not pw:
        raise SystemExit("tempost: empty password")
    print(hash_password(pw))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand."""
    p = argparse.ArgumentParser(prog="tempost", description="Durable outgoing-mail delivery queue.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("dev", help="run the embedded stack (Temporal dev server, PostgreSQL, worker, API)")
    d.add_argument("--data-dir", default=os.environ.get("TEMPOST_DATA_DIR", "tempost-data"))
    d.add_argument("--api-port", type=int, default=None)
    d.set_defaults(func=_cmd_dev)

    for name, func, help_ in (
        ("worker", _cmd_worker, "run a worker process"),
        ("api", _cmd_api, "run the HTTP API"),
        ("serve", _cmd_serve, "run a worker and the HTTP API in one process"),
        ("migrate", _cmd_migrate, "apply database migrations"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", "-c", default=DEFAULT_CONFIG)
        s.set_defaults(func=func)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    cc = csub.add_parser("check", help="validate a configuration file")
    cc.add_argument("file")
    cc.set_defaults(func=_cmd_config_check)

    pw = sub.add_parser("passwd", help="print a password hash for an account's password_hash")
    pw.set_defaults(func=_cmd_passwd)

    dk = sub.add_parser("dkim", help="DKIM keys and their DNS records")
    dsub = dk.add_subparsers(dest="dkim_cmd", required=True)
    g = dsub.add_parser("gen", help="write a new private key (mode 0600) and print its DNS record")
    g.add_argument("--domain", required=True)
    g.add_argument("--selector", required=True)
    g.add_argument("--algorithm", choices=("ed25519", "rsa"), default="ed25519")
    g.add_argument("--bits", type=int, default=2048, help="RSA key size (at least 2048)")
    g.add_argument("--out", required=True, help="file for the private key; never overwritten")
    g.set_defaults(func=_cmd_dkim)
    for name, help_ in (
        ("records", "print the DNS record of every configured selector"),
        ("check", "look the records up through [direct] resolvers and compare them with the keys"),
    ):
        s = dsub.add_parser(name, help=help_)
        s.add_argument("--config", "-c", default=DEFAULT_CONFIG)
        s.set_defaults(func=_cmd_dkim)

    add_commands(sub)

    args = p.parse_args(argv)
    configure_logging()
    try:
        args.func(args)
    except (CLIError, SecretFileError) as err:
        print(f"tempost: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
