"""How every Tempost process reaches Temporal: address, namespace, TLS, client certificate and API key.

One function turns the `[temporal]` settings into `Client.connect` keyword arguments, so the worker, the
API, `tempost serve`/`dev` and the CLI tools that talk to Temporal connect alike. Files are read here, at
connect time, and never kept in the configuration object; a file that cannot be read stops the start
with its setting and path named (domain.config.SecretFileError), and so does a server that refuses the
API key or client certificate (TemporalCredentialsError, naming where the key came from, never the key).
"""

from __future__ import annotations

import os
import re
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


def _key_source(config: TemporalConfig, environ: Mapping[str, str]) -> str:
    """Where the API key comes from, in the words an operator configured it with."""
    if environ.get(API_KEY_ENV):
        return API_KEY_ENV
    return f"temporal.api_key_file {config.api_key_file}"


def api_key(config: TemporalConfig, environ: Mapping[str, str] | None = None) -> str:
    """The API key: the environment variable's, else api_key_file's, else "" (none).

    Read at every connect, so a restarted process (or one still waiting for Temporal) uses a rotated key.
    Surrounding whitespace is dropped; a key with spaces, line breaks or non-ASCII characters inside stops
    the start, since the SDK would silently send no key at all or a key the server cannot match.
    """
    env = os.environ if environ is None else environ
    if env.get(API_KEY_ENV):
        key = env[API_KEY_ENV].strip()
    elif config.api_key_file:
        key = read_secret_file("temporal.api_key_file", config.api_key_file)
        if not key:
            raise SecretFileError(f"temporal.api_key_file {config.api_key_file}: empty")
    else:
        return ""
    # A bearer token is visible ASCII without spaces (RFC 6750 §2.1); the key itself is never shown.
    if not key or not all("!" <= c <= "~" for c in key):
        raise SecretFileError(
            f"{_key_source(config, env)}: not an API key: spaces, line breaks or non-ASCII characters inside"
        )
    return key


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


# The message of a gRPC status as the SDK's Rust core prints it: `Status { code: ..., message: "...", ...`.
_STATUS_MESSAGE = re.compile(r'Status \{ code: \w+, message: "((?:[^"\\]|\\.)*)"')


class TemporalCredentialsError(ValueError):
    """Temporal refused the API key or client certificate: a configuration mistake that retrying does not
    mend, so the process stops at start (its supervisor restarts it, reading the files again)."""


def connect_error(
    config: TemporalConfig, err: BaseException, tls: bool, key: str, environ: Mapping[str, str] | None = None
) -> TemporalConnectError | TemporalCredentialsError:
    """The error to raise for a failed connect: credentials refused, or why the server is not reachable.

    `key` is the API key the connection used ("" for none): it is named by its source and cut from the
    SDK's text, which repeats what the server said.
    """
    env = os.environ if environ is None else environ
    text = " ".join(str(err).split())
    if key:
        text = text.replace(key, "[API key]")
    low = text.lower()
    where = f"Temporal at {config.address}"
    # The server's own words from the SDK's gRPC status; all of the SDK's text when it has none.
    said = _STATUS_MESSAGE.search(text)
    detail = (said.group(1) if said else text)[:400]
    if "unauthenticated" in low:
        if key:
            why = f"refused the API key from {_key_source(config, env)}"
        elif config.tls_cert_file:
            why = (
                f"refused the client certificate temporal.tls_cert_file {config.tls_cert_file}; an API key"
                f" goes in temporal.api_key_file or {API_KEY_ENV}"
            )
        else:
            why = (
                f"requires credentials: an API key (temporal.api_key_file or {API_KEY_ENV}) or a client"
                " certificate (temporal.tls_cert_file, tls_key_file)"
            )
        return TemporalCredentialsError(f"{where} {why} (Unauthenticated: {detail})")
    if "permissiondenied" in low or "permission denied" in low:
        credentials = f"the API key from {_key_source(config, env)}" if key else "the client certificate"
        return TemporalCredentialsError(
            f"{where} does not let {credentials} use namespace {config.namespace}"
            f" (PermissionDenied: {detail})"
        )
    return TemporalConnectError(describe_connect_error(text, tls))


def describe_connect_error(text: str, tls: bool) -> str:
    """Why Temporal is not reachable, in an operator's words, then the SDK's own text.

    The SDK reports TLS failures in its Rust core's terms; these are the ones a configuration causes.
    `tls` says whether the connection used TLS (an API key from the environment turns it on).
    """
    low = text.lower()
    if "unknownissuer" in low or "unknown issuer" in low:
        hint = "the server's certificate is not trusted (temporal.tls_ca_file names the CA that signed it)"
    elif "notvalidforname" in low:
        hint = "the server's certificate is not valid for this name (temporal.tls_server_name)"
    elif "invalidcertificate" in low or "certificate" in low and "invalid" in low:
        hint = "the server's certificate was refused"
    elif "after connection" in low and any(w in low for w in _DROPPED):
        if tls:
            # TLS 1.3: the server checks the client's certificate after the client considers the
            # handshake done, and closes the connection when it has none or does not trust it.
            hint = (
                "the server closed the connection after the TLS handshake: it requires a client certificate"
                " it trusts (temporal.tls_cert_file, tls_key_file)"
            )
        else:
            hint = "the server closed the connection: it may require TLS (temporal.tls)"
    elif "connection refused" in low:
        hint = "nothing accepts connections there"
    else:
        hint = "not reachable"
    return f"{hint}: {text[:400]}"
