"""Channel-binding data of a TLS connection, for SCRAM -PLUS mechanisms (RFC 5929, RFC 9266).

TLS 1.2 and older bind with `tls-unique`, which Python's ssl module gives. TLS 1.3 has no tls-unique; it
binds with `tls-exporter` (RFC 9266 §2), keying material that OpenSSL exports but Python (up to 3.13)
does not. This module calls OpenSSL's exporter directly on the connection's SSL object, and only after
checking that the SSL pointer it found really is that connection's (the negotiated version OpenSSL reports
through it must match Python's), so a Python whose internals differ gets "no binding" rather than a wrong
one: the -PLUS mechanisms are then skipped, never attempted with bad data.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys
from functools import cache
from typing import Any

log = logging.getLogger("tempost.tlsbinding")

# RFC 9266 §2: the exporter label and length for tls-exporter channel bindings.
_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
_EXPORTER_LENGTH = 32
# CPython versions whose _ssl socket object keeps the OpenSSL SSL* right after the object header and the
# weak reference to its socket (Modules/_ssl.c, PySSLSocket).
_KNOWN_LAYOUT = ((3, 11), (3, 12), (3, 13))


@cache
def _openssl() -> Any | None:
    """OpenSSL's exporter and version functions, as linked into Python's _ssl module."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        export = lib.SSL_export_keying_material
        version = lib.SSL_get_version
    except (OSError, AttributeError):
        return None
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
    version.argtypes = [ctypes.c_void_p]
    version.restype = ctypes.c_char_p
    return lib


def _ssl_pointer(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or sys.version_info[:2] not in _KNOWN_LAYOUT:
        return None
    word = ctypes.sizeof(ctypes.c_void_p)
    # Object header (reference count, type), then `Socket`, then `ssl`.
    return ctypes.c_void_p.from_address(id(inner) + 3 * word).value


def tls_exporter(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """The RFC 9266 tls-exporter value of a TLS 1.3 connection, or None where it cannot be had safely."""
    lib = _openssl()
    pointer = _ssl_pointer(ssl_object)
    if lib is None or not pointer:
        return None
    reported = lib.SSL_get_version(pointer)
    if reported is None or reported.decode() != ssl_object.version():
        log.warning("tls-exporter unavailable: this Python's ssl internals are not the expected ones")
        return None
    out = ctypes.create_string_buffer(_EXPORTER_LENGTH)
    # No context value: for TLS 1.3 an absent and an empty context are the same (RFC 8446 §7.5).
    ok = lib.SSL_export_keying_material(
        pointer, out, _EXPORTER_LENGTH, _EXPORTER_LABEL, len(_EXPORTER_LABEL), None, 0, 0
    )
    return out.raw if ok == 1 else None


def channel_binding(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, bytes] | None:
    """The binding type and data of a connection (spec 02 §5.2), or None without TLS or data."""
    if ssl_object is None:
        return None
    if ssl_object.version() == "TLSv1.3":
        data = tls_exporter(ssl_object)
        return ("tls-exporter", data) if data else None
    unique = ssl_object.get_channel_binding("tls-unique")
    return ("tls-unique", unique) if unique else None
