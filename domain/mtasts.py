"""MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, and MX host matching.

Pure parsing and matching; fetching and caching live in activities/mtasts.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class MTASTSError(Exception):
    """A record or policy that does not follow RFC 8461."""


class RecordSyntaxError(MTASTSError):
    """The TXT record is an STS record but malformed (RFC 8461 §3.1)."""


class PolicySyntaxError(MTASTSError):
    """The policy file is malformed (RFC 8461 §3.2)."""


class Mode(StrEnum):
    """How a sender applies the policy (RFC 8461 §5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class Record:
    """A parsed `_mta-sts` TXT record."""

    id: str
    extensions: tuple[tuple[str, str], ...] = ()


_STS_START = re.compile(r"^v=STSv1[ \t]*(;|$)")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


def is_sts_record(txt: str) -> bool:
    """Whether a TXT string is meant as an STS record: `v=STSv1` then blanks and `;` (RFC 8461 §3.1)."""
    m = _STS_START.match(txt)
    return m is not None and m.group(1) == ";"


def parse_record(txt: str) -> Record:
    """Parse an STS TXT record (RFC 8461 §3.1): `v=STSv1; id=...;` plus extension fields."""
    if not is_sts_record(txt):
        raise RecordSyntaxError("record must start with v=STSv1;")
    fields = re.split(r"[ \t]*;[ \t]*", txt.strip(" \t"))
    if fields and fields[-1] == "":
        fields = fields[:-1]
    record_id = ""
    exts: list[tuple[str, str]] = []
    for f in fields[1:]:
        key, eq, value = f.partition("=")
        if not eq or not value:
            raise RecordSyntaxError(f"malformed field {f!r}")
        if key == "id":
            if record_id:
                raise RecordSyntaxError("more than one id field")
            if not _ID.fullmatch(value):
                raise RecordSyntaxError(f"invalid id {value!r}")
            record_id = value
        elif _EXT_KEY.fullmatch(key) and _EXT_VALUE.fullmatch(value):
            exts.append((key, value))
        else:
            raise RecordSyntaxError(f"invalid extension field {f!r}")
    if not record_id:
        raise RecordSyntaxError("record has no id")
    return Record(record_id, tuple(exts))


@dataclass(frozen=True)
class Policy:
    """A parsed policy file (RFC 8461 §3.2)."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    extensions: tuple[tuple[str, str], ...] = ()

    def lines(self) -> list[str]:
        """The policy as the lines of a policy file (for TLS reports, RFC 8460 §4.4)."""
        return [
            "version: STSv1",
            f"mode: {self.mode.value}",
            *(f"mx: {m}" for m in self.mx),
            f"max_age: {self.max_age}",
        ]

    def matches(self, host: str) -> bool:
        """Whether an MX host is allowed: exact name or one-label wildcard (RFC 8461 §4.1)."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                _, _, parent = host.partition(".")
                if parent and parent == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _mx_pattern(value: str) -> str:
    v = value.lower()
    name = v[2:] if v.startswith("*.") else v
    labels = name.split(".")
    if not name or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        raise PolicySyntaxError(f"invalid mx pattern {value!r}")
    return v


MAX_POLICY_SIZE = 64 * 1024


def parse_policy(text: str) -> Policy:
    """Parse a policy file: `key: value` lines separated by LF or CRLF (RFC 8461 §3.2)."""
    if len(text.encode()) > MAX_POLICY_SIZE:
        raise PolicySyntaxError("policy larger than 64 KiB")
    version = ""
    mode: Mode | None = None
    max_age: int | None = None
    mx: list[str] = []
    exts: list[tuple[str, str]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw
        key, colon, value = line.partition(":")
        if not colon or not key or not _EXT_KEY.fullmatch(key):
            raise PolicySyntaxError(f"malformed line {line!r}")
        value = value.strip(" \t")
        if key == "version":
            if value != "STSv1":
                raise PolicySyntaxError(f"unknown version {value!r}")
            version = value
        elif key == "mode":
            if mode is None:
                try:
                    mode = Mode(value)
                except ValueError:
                    raise PolicySyntaxError(f"invalid mode {value!r}") from None
        elif key == "max_age":
            if max_age is None:
                if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > 2**31 - 1:
                    raise PolicySyntaxError(f"invalid max_age {value!r}")
                max_age = int(value)
        elif key == "mx":
            mx.append(_mx_pattern(value))
        else:
            if not value or not all(0x20 <= ord(c) < 0x7F or c == "\t" for c in value):
                raise PolicySyntaxError(f"invalid extension {line!r}")
            exts.append((key, value))
    if not version:
        raise PolicySyntaxError("policy has no version")
    if mode is None:
        raise PolicySyntaxError("policy has no mode")
    if max_age is None:
        raise PolicySyntaxError("policy has no max_age")
    if not mx and mode != Mode.NONE:
        raise PolicySyntaxError("policy has no mx")
    return Policy(mode, tuple(mx), max_age, tuple(exts))
