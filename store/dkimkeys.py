"""DKIM private keys read from their PEM files, once, when a process starts (the API signs submissions, the
worker signs DSNs). They live here, beside the database, as the other state Tempost reads at start; the
signing itself is pure (domain/dkim.py).

Key material is never logged: errors name the file and what is wrong, never the key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from domain.config import Config
from domain.dkim import ED25519, MIN_RSA_BITS, RSA, Keyring, PrivateKey, keyring


class KeyFileError(Exception):
    """A configured DKIM key cannot be used: unreadable, not a key, another algorithm, too small."""


def parse_private_key(pem: bytes, algorithm: str, where: str = "key") -> PrivateKey:
    """A PEM private key (PKCS#8, or PKCS#1 for RSA) checked against the selector's algorithm."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        # The library's message says what it could not parse, not the key itself.
        raise KeyFileError(f"{where}: not an unencrypted PEM private key ({err})") from None
    except Exception as err:  # noqa: BLE001 - unsupported key types raise the library's own errors
        raise KeyFileError(f"{where}: not a usable private key ({type(err).__name__})") from None
    if algorithm == ED25519:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"{where}: algorithm {algorithm} needs an Ed25519 key, not {_kind(key)}")
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PrivateKey(ED25519, key, public, 256)
    if algorithm == RSA:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyFileError(f"{where}: algorithm {algorithm} needs an RSA key, not {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(
                f"{where}: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed (RFC 8301 §3.2)"
            )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PrivateKey(RSA, key, public, key.key_size)
    raise KeyFileError(f"{where}: unknown algorithm {algorithm!r}")


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", " key")


def read_private_key(path: str | Path, algorithm: str) -> PrivateKey:
    """The key in a PEM file."""
    try:
        pem = Path(path).read_bytes()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read: {err.strerror}") from None
    return parse_private_key(pem, algorithm, str(path))


def load_keyring(config: Config) -> Keyring:
    """Every configured selector with its key; refuses, naming each, the keys that cannot be used."""
    keys: dict[tuple[str, str], PrivateKey] = {}
    problems = []
    for domain, dk in config.dkim_domains():
        for name, sel in dk.selectors.items():
            try:
                keys[(domain, name)] = read_private_key(sel.private_key_file, sel.algorithm)
            except KeyFileError as err:
                problems.append(f"dkim selector {name} of {domain}: {err}")
    if problems:
        raise KeyFileError("; ".join(problems))
    return keyring(config, keys)
