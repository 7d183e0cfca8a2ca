"""DKIM verification by OpenDKIM (Debian's opendkim-tools), an implementation independent of the dkimpy
Tempost signs with, reading the public keys from DNS records the test's own DNS server publishes.

`opendkim-testmsg` resolves through the C library's resolver, which reads only /etc/resolv.conf and asks
port 53. So it runs in a mount namespace of its own (`unshare -m`) where a resolv.conf naming the test
DNS server is bound over the system's, and that server listens on port 53 of a loopback address no other
test uses. That needs root (CI runs as root; .ci/run installs opendkim-tools with apt).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.dnsserver import DNSServer

OPENDKIM = shutil.which("opendkim-testmsg") or (
    "/usr/sbin/opendkim-testmsg" if os.path.exists("/usr/sbin/opendkim-testmsg") else None
)
UNSHARE = shutil.which("unshare")
_SIGNATURE = re.compile(rb"(?im)^DKIM-Signature:.*(?:\r\n[ \t].*)*\r\n")


def unavailable() -> str:
    """Why OpenDKIM cannot verify here; "" when it can."""
    if OPENDKIM is None:
        return "opendkim-testmsg is not installed (apt-get install opendkim-tools was not possible)"
    if UNSHARE is None or os.geteuid() != 0:
        return "verifying with OpenDKIM against the test DNS server needs root and unshare"
    probe = subprocess.run([UNSHARE, "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode(errors='replace').strip()}"
    return ""


@dataclass(frozen=True)
class Verdict:
    """OpenDKIM's judgement of one DKIM-Signature field of a message."""

    selector: str
    domain: str
    ok: bool
    error: str


def signatures(message: bytes) -> list[bytes]:
    """The DKIM-Signature fields of a CRLF message's header section, as written."""
    head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return _SIGNATURE.findall(head)


def _tag(field: bytes, name: str) -> str:
    m = re.search(rb"(?:^|;)\s*" + name.encode() + rb"\s*=\s*([^;]*)", field.split(b":", 1)[1])
    return b"".join(m.group(1).split()).decode() if m else ""


class OpenDKIMVerifier:
    """A DNS server on port 53 of its own loopback address, and OpenDKIM asking it."""

    def __init__(self) -> None:
        last: OSError | None = None
        for _ in range(20):
            host = f"127.0.{random.randint(60, 250)}.{random.randint(2, 250)}"
            try:
                self.dns = DNSServer(host, 53).start()
                break
            except OSError as err:
                last = err
        else:
            raise RuntimeError(f"no free loopback address for port 53: {last}")
        self._dir = Path(tempfile.mkdtemp(prefix="tempost-opendkim-"))
        self._resolv = self._dir / "resolv.conf"
        self._resolv.write_text(f"nameserver {self.dns.host}\noptions attempts:2 timeout:2\n")

    def publish(self, name: str, value: str) -> None:
        """Serve a TXT record (split into 255-byte strings as published)."""
        self.dns.remove(name, "TXT")
        strings = [value[i : i + 255] for i in range(0, len(value), 255)]
        self.dns.add(name, "TXT", " ".join(f'"{s}"' for s in strings))

    def verify(self, message: bytes) -> tuple[bool, str]:
        """Whether OpenDKIM finds the message's signature valid, and its complaint if not."""
        assert OPENDKIM is not None and UNSHARE is not None
        script = f'mount --bind "{self._resolv}" /etc/resolv.conf && exec "{OPENDKIM}"'
        r = subprocess.run(
            [UNSHARE, "-m", "sh", "-c", script], input=message, capture_output=True, timeout=60
        )
        return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace").strip()

    def verify_each(self, message: bytes) -> list[Verdict]:
        """Each DKIM-Signature field judged alone: the message with every other signature taken out."""
        found = signatures(message)
        out = []
        for keep in found:
            alone = message
            for other in found:
                if other is not keep:
                    alone = alone.replace(other, b"", 1)
            ok, error = self.verify(alone)
            out.append(Verdict(_tag(keep, "s"), _tag(keep, "d"), ok, error))
        return out

    def stop(self) -> None:
        self.dns.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
