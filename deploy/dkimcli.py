"""`tempost dkim gen|records|check`: make DKIM keys, print their DNS records, compare them with DNS."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from domain.config import Config
from domain.dkim import ED25519, MIN_RSA_BITS, RSA, Keyring, record_problem, record_value, txt_strings
from store.dkimkeys import KeyFileError, load_keyring, parse_private_key

ALGORITHMS = {"ed25519": ED25519, "rsa": RSA}


class DKIMCLIError(Exception):
    """A dkim command cannot do what was asked; the message says why."""


def generate_key(algorithm: str, bits: int = MIN_RSA_BITS) -> bytes:
    """A new private key as PKCS#8 PEM, for `algorithm` "ed25519-sha256" or "rsa-sha256"."""
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if algorithm == ED25519:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        if bits < MIN_RSA_BITS:
            raise DKIMCLIError(f"RSA keys need at least {MIN_RSA_BITS} bits (RFC 8301 §3.2)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only; an existing file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DKIMCLIError(f"{path} exists; not overwriting a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def zone_line(name: str, value: str) -> str:
    """The record as a zone file line, its value split into strings of at most 255 bytes."""
    return f'{name}. IN TXT ' + " ".join(f'"{s}"' for s in txt_strings(value))


def cmd_gen(args: argparse.Namespace) -> None:
    algorithm = ALGORITHMS[args.algorithm]
    pem = generate_key(algorithm, args.bits)
    key = parse_private_key(pem, algorithm)
    write_key(Path(args.out), pem)
    name = f"{args.selector}._domainkey.{args.domain.rstrip('.')}"
    print(f"wrote {args.out} ({args.algorithm}, mode 0600); publish this TXT record:")
    print(zone_line(name, record_value(key)))
    print()
    print("then add to the configuration:")
    print(f'[domains."{args.domain}".dkim.selectors.{args.selector}]')
    print(f'algorithm = "{algorithm}"')
    print(f'private_key_file = "{Path(args.out).resolve()}"')


def _keyring(config: Config) -> Keyring:
    try:
        return load_keyring(config)
    except KeyFileError as err:
        raise DKIMCLIError(str(err)) from None


def cmd_records(config: Config, out: Any = sys.stdout) -> None:
    """Print every configured selector's record."""
    ring = _keyring(config)
    if not ring.selectors:
        print("no DKIM selectors configured", file=out)
    for s in ring.selectors:
        state = "signing" if s.signing else "not signing"
        print(f"; {s.domain} selector {s.name}, {s.key.algorithm}, {state}", file=out)
        print(zone_line(s.record_name, s.record_value), file=out)


async def check_records(config: Config, ring: Keyring) -> list[tuple[str, str]]:
    """Per selector, its record name and what is wrong with its published record ("" when it matches)."""
    from activities.dns import DNSError, Resolver

    resolver = Resolver(config.direct.resolvers, timeout=10)
    out = []
    for s in ring.selectors:
        try:
            published = await resolver.txt(s.record_name)
        except DNSError as err:
            out.append((s.record_name, f"lookup failed: {err}"))
            continue
        out.append((s.record_name, record_problem(published, s.key)))
    return out


def cmd_check(config: Config) -> int:
    """Compare DNS with every configured key; the exit status is 1 when any does not match."""
    ring = _keyring(config)
    bad = 0
    for name, problem in asyncio.run(check_records(config, ring)):
        print(f"{name}: {'ok' if not problem else 'MISMATCH: ' + problem}")
        bad += bool(problem)
    return 1 if bad else 0
