"""How every Tempost process reaches Temporal: address, namespace, TLS, client certificate and API key.

One function turns the `[temporal]` settings into `Client.connect` keyword arguments, so the worker, the
API, `tempost serve`/`dev` and the CLI tools that talk to Temporal connect alike. Files are read here, at
connect time, and never kept in the configuration object; a file that cannot be read stops the start
with its setting and path named (domain.config.SecretFileError).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from temporalio.service import TLSConfig

from domain.config import SecretFileError, TemporalConfig, read_secret_file

API_KEY_ENV = "TEMPOST_TEMPORAL_API_KEY"


def _read_pem(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise SecretFileError(f"{setting} {path}: cannot read: {err.strerror or err}") from None
    if b"-----BEGIN " not in data:
        raise SecretFileError(f"{setting} {path}: not a PEM file")
    return data


def api_key(config: TemporalConfig, environ: Mapping[str, str] | None = None) -> str:
    """The API key: the environment variable's, else api_key_file's, else "" (none)."""
    env = os.environ if environ is None else environ
    if env.get(API_KEY_ENV):
        return env[API_KEY_ENV].strip()
    if config.api_key_file:
        key = read_secret_file("temporal.api_key_file", config.api_key_file)
        if not key:
            raise SecretFileError(f"temporal.api_key_file {config.api_key_file}: empty")
        return key
    return ""


def temporal_connect_options(
    config: TemporalConfig, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`Client.connect` keyword arguments for the configured namespace, TLS and API key."""
    key = api_key(config, environ)
    options: dict[str, Any] = {"namespace": config.namespace, "tls": False}
    if config.uses_tls or key:

        def pem(setting: str, path: str) -> bytes | None:
            return _read_pem(f"temporal.{setting}", path) if path else None

        options["tls"] = TLSConfig(
            server_root_ca_cert=pem("tls_ca_file", config.tls_ca_file),
            client_cert=pem("tls_cert_file", config.tls_cert_file),
            client_private_key=pem("tls_key_file", config.tls_key_file),
            domain=config.tls_server_name or None,
        )
    if key:
        options["api_key"] = key
        # Temporal Cloud routes a request authenticated by API key by this header as well.
        options["rpc_metadata"] = {"temporal-namespace": config.namespace}
    return options


# How the SDK reports a connection the server dropped right after the handshake.
_DROPPED = ("closed", "broken pipe", "reset", "transport error")


class TemporalConnectError(RuntimeError):
    """Connecting to Temporal failed; the message says why in an operator's words."""


def describe_connect_error(config: TemporalConfig, err: BaseException, tls: bool | None = None) -> str:
    """Why connecting to Temporal failed, in an operator's words, then the SDK's own; never a secret.

    The SDK reports TLS failures in its Rust core's terms; these are the ones a configuration causes.
    `tls` says whether the connection used TLS (an API key from the environment turns it on).
    """
    text = " ".join(str(err).split())
    low = text.lower()
    if "unknownissuer" in low or "unknown issuer" in low:
        hint = "the server's certificate is not trusted (temporal.tls_ca_file names the CA that signed it)"
    elif "notvalidforname" in low:
        hint = "the server's certificate is not valid for this name (temporal.tls_server_name)"
    elif "invalidcertificate" in low or "certificate" in low and "invalid" in low:
        hint = "the server's certificate was refused"
    elif "after connection" in low and any(w in low for w in _DROPPED):
        if config.uses_tls if tls is None else tls:
            # TLS 1.3: the server checks the client's certificate after the client considers the
            # handshake done, and closes the connection when it has none or does not trust it.
            hint = (
                "the server closed the connection after the TLS handshake: it requires a client certificate"
                " it trusts (temporal.tls_cert_file, tls_key_file)"
            )
        else:
            hint = "the server closed the connection: it may require TLS (temporal.tls)"
    elif "unauthenticated" in low or "permissiondenied" in low or "permission denied" in low:
        hint = "the server refused the credentials (client certificate or API key)"
    elif "connection refused" in low:
        hint = "nothing accepts connections there"
    else:
        hint = "not reachable"
    return f"{hint}: {text[:400]}"
