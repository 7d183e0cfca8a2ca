"""SASL clients for authenticating to a submission relay: PLAIN, CRAM-MD5, SCRAM (spec 02 §5.2–§5.3).

Each client is a small state machine: `start()` gives the initial response, `step(challenge)` the next
one. The SMTP layer moves the bytes (base64 on the wire); nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Callable, Sequence


class SASLError(Exception):
    """The exchange cannot continue (bad server message, failed server proof)."""


def saslprep(s: str) -> str:
    """Prepare a password or name (RFC 4013, as far as the standard library allows: NFKC, no controls)."""
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in s if c != "\u00ad")
    out = unicodedata.normalize("NFKC", mapped)
    if any(unicodedata.category(c) == "Cc" for c in out):
        raise SASLError("control characters in credentials")
    return out


class Plain:
    """PLAIN (RFC 4616): the credentials in one message."""

    name = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        self._msg = f"\0{username}\0{password}".encode()

    def start(self) -> bytes:
        """The initial response."""
        return self._msg

    def step(self, challenge: bytes) -> bytes:
        """PLAIN has no further steps."""
        raise SASLError("unexpected challenge for PLAIN")

    @property
    def done(self) -> bool:
        """Whether the client has nothing more to say."""
        return True


class CramMD5:
    """CRAM-MD5 (RFC 2195): an HMAC-MD5 of the server's challenge."""

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._user, self._password = username, password
        self._stepped = False

    def start(self) -> bytes | None:
        """No initial response: the server speaks first."""
        return None

    def step(self, challenge: bytes) -> bytes:
        """The answer: username, space, hex HMAC-MD5 of the challenge keyed by the password."""
        if self._stepped:
            raise SASLError("unexpected second challenge for CRAM-MD5")
        self._stepped = True
        digest = hmac.new(self._password.encode(), challenge, hashlib.md5).hexdigest()
        return f"{self._user} {digest}".encode()

    @property
    def done(self) -> bool:
        """Whether the client has nothing more to say."""
        return self._stepped


def _escape(name: str) -> str:
    # RFC 5802 §5.1: "=" and "," in the user name are escaped.
    return name.replace("=", "=3D").replace(",", "=2C")


class Scram:
    """SCRAM-SHA-1 / SCRAM-SHA-256 with optional channel binding (RFC 5802, RFC 7677, RFC 5929)."""

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: str,
        *,
        channel_binding: tuple[str, bytes] | None = None,
        client_supports_binding: bool = False,
        nonce: Callable[[], str] = lambda: secrets.token_urlsafe(18),
    ) -> None:
        self._hash = hash_name
        self.name = f"SCRAM-{hash_name.upper().replace('SHA', 'SHA-')}" + ("-PLUS" if channel_binding else "")
        self._user = _escape(saslprep(username))
        self._password = saslprep(password).encode()
        self._binding = channel_binding
        if channel_binding:
            self._gs2 = f"p={channel_binding[0]},,"
        elif client_supports_binding:
            # RFC 5802 §6: "y" tells a server that offered no -PLUS variant that we could have bound, so a
            # stripped -PLUS offer (a downgrade) is detected.
            self._gs2 = "y,,"
        else:
            self._gs2 = "n,,"
        self._nonce = nonce()
        self._state = 0
        self._server_signature = b""

    def _h(self, data: bytes) -> bytes:
        return hashlib.new(self._hash, data).digest()

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._hash).digest()

    def start(self) -> bytes:
        """client-first-message."""
        self._first_bare = f"n={self._user},r={self._nonce}"
        self._state = 1
        return (self._gs2 + self._first_bare).encode()

    def step(self, challenge: bytes) -> bytes:
        """client-final-message for the server-first-message; empty after verifying server-final."""
        if self._state == 1:
            return self._final(challenge.decode())
        if self._state == 2:
            self._verify(challenge.decode())
            return b""
        raise SASLError("unexpected SCRAM message")

    @property
    def done(self) -> bool:
        """Whether the server's proof was checked."""
        return self._state == 3

    def _final(self, server_first: str) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.split(",") if "=" in a)
        try:
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (KeyError, ValueError):
            raise SASLError(f"malformed server-first-message {server_first!r}") from None
        if not nonce.startswith(self._nonce) or iterations < 1:
            raise SASLError("server nonce does not extend ours")
        cbind = self._gs2.encode() + (self._binding[1] if self._binding else b"")
        final_bare = f"c={base64.b64encode(cbind).decode()},r={nonce}"
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        auth = f"{self._first_bare},{server_first},{final_bare}".encode()
        signature = self._hmac(self._h(client_key), auth)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth)
        self._state = 2
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def _verify(self, server_final: str) -> None:
        if server_final.startswith("e="):
            raise SASLError(f"server error: {server_final[2:]}")
        if not server_final.startswith("v="):
            raise SASLError("malformed server-final-message")
        got = base64.b64decode(server_final[2:])
        if not hmac.compare_digest(got, self._server_signature):
            raise SASLError("server signature mismatch: the server does not know the password")
        self._state = 3


SASLClient = Plain | CramMD5 | Scram


def choose_mechanism(
    configured: Sequence[str], offered: Sequence[str], *, tls: bool, binding: tuple[str, bytes] | None
) -> tuple[str, bool] | None:
    """The first configured mechanism the server offers, and whether we could have bound the channel.

    -PLUS variants need TLS and channel-binding data; without those they are skipped (where mox aborts).
    """
    offered_up = {m.upper() for m in offered}
    could_bind = tls and binding is not None
    for mech in configured:
        if mech.endswith("-PLUS") and not could_bind:
            continue
        if mech in offered_up:
            plus_configured = any(m.endswith("-PLUS") for m in configured)
            return mech, could_bind and plus_configured and not mech.endswith("-PLUS")
    return None


def make_client(
    mech: str, username: str, password: str, *, binding: tuple[str, bytes] | None, signal_binding: bool
) -> SASLClient:
    """A client for a mechanism name chosen by `choose_mechanism`."""
    if mech == "PLAIN":
        return Plain(username, password)
    if mech == "CRAM-MD5":
        return CramMD5(username, password)
    hash_name = "sha256" if mech.startswith("SCRAM-SHA-256") else "sha1"
    if mech.endswith("-PLUS"):
        return Scram(hash_name, username, password, channel_binding=binding)
    return Scram(hash_name, username, password, client_supports_binding=signal_binding)
