"""Channel-binding data of a TLS connection, for SCRAM -PLUS mechanisms (RFC 5929, RFC 9266).

TLS 1.2 and older bind with `tls-unique`, which Python's ssl module gives. TLS 1.3 has no tls-unique; it
binds with `tls-exporter` (RFC 9266 §2), keying material that OpenSSL exports but Python (3.11 to 3.13 at
least) does not offer. Where a Python offers it, that is used. Otherwise this module calls OpenSSL's
exporter directly on the connection's SSL pointer, which it reads out of the `_ssl` object at the offset
CPython's `PySSLSocket` struct puts it.

Reading memory by offset is only safe on a build whose layout is the expected one, so nothing goes through
that pointer until, once per process, the build has been checked: CPython of a known version with the
standard object header, an OpenSSL (not LibreSSL) of at least 1.1.1 whose loaded library is the one the ssl
module reports, and a self-test on two in-memory connections where the pointer must give known answers
(TLS 1.2's tls-unique as Python computes it; both ends of TLS 1.3 agreeing on the exporter). Every
connection is checked again against the struct before its pointer is used. Where any of this fails, or
raises, tls-exporter is disabled with one warning per process: the -PLUS mechanisms are then skipped
(`channel_binding` answers None), never attempted with bad data, and the worker goes on.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

log = logging.getLogger("tempost.tlsbinding")

# RFC 9266 §2: the exporter label and length for tls-exporter channel bindings.
_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
_EXPORTER_LENGTH = 32
# CPython versions whose _ssl socket object (Modules/_ssl.c, PySSLSocket) starts with the object header,
# then the weak reference to its socket, the SSL*, and the PySSLContext*.
_KNOWN_LAYOUT = ((3, 11), (3, 12), (3, 13))
_WORD = ctypes.sizeof(ctypes.c_void_p)
# Word offsets inside PySSLSocket, with the standard two-word header (reference count, type).
_TYPE_WORD, _SSL_WORD, _CTX_WORD = 1, 3, 4
# OpenSSL's protocol version numbers (SSL_version).
_TLS1_2_VERSION, _TLS1_3_VERSION = 0x0303, 0x0304


@dataclass(frozen=True)
class _OpenSSL:
    """The OpenSSL functions the exporter needs, from the library the ssl module really uses."""

    lib: Any

    def version(self, pointer: int) -> int:
        return int(self.lib.SSL_version(pointer))

    def export(self, pointer: int) -> bytes | None:
        out = ctypes.create_string_buffer(_EXPORTER_LENGTH)
        # No context value: for TLS 1.3 an absent and an empty context are the same (RFC 8446 §7.5).
        ok = self.lib.SSL_export_keying_material(
            pointer, out, _EXPORTER_LENGTH, _EXPORTER_LABEL, len(_EXPORTER_LABEL), None, 0, 0
        )
        return out.raw if ok == 1 else None

    def finished(self, pointer: int) -> bytes:
        out = ctypes.create_string_buffer(64)
        n = int(self.lib.SSL_get_finished(pointer, out, len(out)))
        return out.raw[: min(n, len(out))]


_warned = False


def _disable(reason: str) -> None:
    """Log, once per process, that SCRAM -PLUS cannot be used over TLS 1.3 and why."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("tls-exporter channel binding disabled, no SCRAM -PLUS over TLS 1.3: %s", reason)


def _native() -> bool:
    """Whether this Python's ssl module computes tls-exporter itself (the supported way)."""
    return "tls-exporter" in getattr(ssl, "CHANNEL_BINDING_TYPES", ())


def _unsupported_build() -> str | None:
    """Why this build's layout cannot be trusted, from facts alone (no memory is read); None: it may."""
    if sys.implementation.name != "cpython":
        return f"python implementation {sys.implementation.name} is not cpython"
    if sys.version_info[:2] not in _KNOWN_LAYOUT:
        return f"python {sys.version_info[0]}.{sys.version_info[1]} has an untested _ssl layout"
    if object.__basicsize__ != 2 * _WORD:
        # Debug (Py_TRACE_REFS) and free-threaded builds have a bigger object header.
        return "python object header is not the standard one"
    if _ssl._SSLSocket.__basicsize__ < (_CTX_WORD + 1) * _WORD:  # type: ignore[attr-defined]
        return "_ssl socket objects are smaller than expected"
    if not ssl.OPENSSL_VERSION.startswith("OpenSSL ") or ssl.OPENSSL_VERSION_INFO < (1, 1, 1):
        return f"{ssl.OPENSSL_VERSION} is not OpenSSL 1.1.1 or later"
    return None


def _load() -> _OpenSSL | str:
    """OpenSSL's functions as linked into Python's _ssl module, or why they cannot be had."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        functions = (
            lib.OpenSSL_version_num,
            lib.SSL_version,
            lib.SSL_get_finished,
            lib.SSL_export_keying_material,
        )
    except (OSError, AttributeError) as err:
        return f"openssl functions not found: {err}"
    version_num, version, finished, export = functions
    version_num.argtypes, version_num.restype = [], ctypes.c_ulong
    # A libssl other than the one the ssl module uses would not understand its SSL objects.
    if version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return f"loaded openssl {version_num():#x} is not the ssl module's {ssl.OPENSSL_VERSION_NUMBER:#x}"
    version.argtypes, version.restype = [ctypes.c_void_p], ctypes.c_int
    finished.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    finished.restype = ctypes.c_size_t
    export.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
    ]
    export.restype = ctypes.c_int
    return _OpenSSL(lib)


def _ssl_pointer(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    """The connection's OpenSSL SSL*, once the struct around it proved to be the expected one."""
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or not isinstance(inner, _ssl._SSLSocket):  # type: ignore[attr-defined]
        return None
    base = id(inner)
    # Only words inside the object are read (checked against __basicsize__ in _unsupported_build), and the
    # SSL* is trusted only when its neighbours are what they must be: the object's type, and the context
    # object Python itself reports for the connection.
    words = [ctypes.c_void_p.from_address(base + n * _WORD).value or 0 for n in range(_CTX_WORD + 1)]
    if words[_TYPE_WORD] != id(type(inner)) or words[_CTX_WORD] != id(inner.context):
        return None
    return words[_SSL_WORD] or None


def _pair(version: ssl.TLSVersion, cert: str, key: str) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A client and a server connected through memory buffers, handshake done."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    for ctx in (server_ctx, client_ctx):
        ctx.minimum_version = ctx.maximum_version = version
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done:
            return client, server
    raise ssl.SSLError("in-memory handshake did not finish")


def _self_test(openssl: _OpenSSL) -> str | None:
    """Known answers through the pointer on real connections; None when all are right, else what was not."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tempost self-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        client12, _ = _pair(ssl.TLSVersion.TLSv1_2, cert_path, key_path)
        client13, server13 = _pair(ssl.TLSVersion.TLSv1_3, cert_path, key_path)
    pointers = [_ssl_pointer(o) for o in (client12, client13, server13)]
    if not all(pointers):
        return "the _ssl object's layout is not the expected one"
    p12, c13, s13 = (p for p in pointers if p)
    if openssl.version(p12) != _TLS1_2_VERSION or openssl.version(c13) != _TLS1_3_VERSION:
        return "openssl reports other protocol versions than python through the found pointer"
    # tls-unique of a full handshake is the client's Finished message (RFC 5929 §3.1).
    if openssl.finished(p12) != client12.get_channel_binding("tls-unique"):
        return "tls-unique through the found pointer differs from python's"
    exported = openssl.export(c13)
    if exported is None or len(exported) != _EXPORTER_LENGTH or exported != openssl.export(s13):
        return "the two ends of a tls 1.3 connection export different keying material"
    return None


@cache
def _exporter() -> _OpenSSL | None:
    """OpenSSL's exporter once this build has been found safe to use it on; None (and one warning) if not."""
    try:
        reason = _unsupported_build()
        if reason is None:
            loaded = _load()
            if isinstance(loaded, str):
                reason = loaded
            else:
                reason = _self_test(loaded)
                if reason is None:
                    return loaded
    except Exception as err:  # noqa: BLE001 - a build we did not foresee must never stop the worker
        reason = f"checking the build failed: {type(err).__name__}: {err}"
    _disable(reason)
    return None


def tls_exporter(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """The RFC 9266 tls-exporter value of a TLS 1.3 connection, or None where it cannot be had safely."""
    if _native():
        return ssl_object.get_channel_binding("tls-exporter")  # type: ignore[arg-type]
    openssl = _exporter()
    if openssl is None:
        return None
    try:
        pointer = _ssl_pointer(ssl_object)
        if pointer is None or openssl.version(pointer) != _TLS1_3_VERSION:
            _disable("a connection's _ssl object did not match the checked layout")
            return None
        return openssl.export(pointer)
    except Exception as err:  # noqa: BLE001 - no binding is a safe answer; a crash is not
        _disable(f"reading a connection failed: {type(err).__name__}: {err}")
        return None


def channel_binding(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, bytes] | None:
    """The binding type and data of a connection (spec 02 §5.2), or None without TLS or data."""
    if ssl_object is None:
        return None
    if ssl_object.version() == "TLSv1.3":
        data = tls_exporter(ssl_object)
        return ("tls-exporter", data) if data else None
    unique = ssl_object.get_channel_binding("tls-unique")
    return ("tls-unique", unique) if unique else None
