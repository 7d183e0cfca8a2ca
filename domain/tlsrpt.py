"""TLS results of delivery attempts, kept for SMTP TLS reports (RFC 8460 §4; spec 02 §6).

A result is one policy (the recipient domain's MTA-STS policy or its absence, or one MX host's DANE
policy or its absence) with counts of successful and failed TLS sessions and the details of failures.
Results of the same policy on the same day merge by adding counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

STS, TLSA, NO_POLICY = "sts", "tlsa", "no-policy-found"


@dataclass
class FailureDetail:
    """One kind of failure, with how often it happened (RFC 8460 §4.3)."""

    result_type: str
    receiving_mx_hostname: str = ""
    receiving_ip: str = ""
    failure_reason_code: str = ""
    failed_session_count: int = 0
    # Our address on the connection and what the server's greeting said after its code, when there was one.
    sending_mta_ip: str = ""
    receiving_mx_helo: str = ""

    def key(self) -> tuple[str, ...]:
        """Details that differ only in their count are the same detail."""
        return (
            self.result_type,
            self.receiving_mx_hostname,
            self.receiving_ip,
            self.failure_reason_code,
            self.sending_mta_ip,
            self.receiving_mx_helo,
        )


@dataclass
class TLSResult:
    """Sessions under one policy (RFC 8460 §4.4)."""

    policy_type: str
    policy_domain: str
    policy_strings: list[str] = field(default_factory=list)
    mx_hosts: list[str] = field(default_factory=list)
    is_host: bool = False
    success: int = 0
    failure: int = 0
    details: list[FailureDetail] = field(default_factory=list)

    def add_failure(self, detail: FailureDetail) -> None:
        """Count a failure detail, merging it with an equal one."""
        for d in self.details:
            if d.key() == detail.key():
                d.failed_session_count += detail.failed_session_count
                return
        self.details.append(detail)

    def merge(self, other: TLSResult) -> None:
        """Add another result of the same policy; a changed policy replaces the policy fields."""
        if (other.policy_type, other.policy_strings, other.mx_hosts) != (
            self.policy_type,
            self.policy_strings,
            self.mx_hosts,
        ):
            self.policy_type, self.policy_strings, self.mx_hosts = (
                other.policy_type,
                other.policy_strings,
                other.mx_hosts,
            )
        self.success += other.success
        self.failure += other.failure
        for d in other.details:
            self.add_failure(FailureDetail(**d.__dict__))

    def to_json(self) -> dict[str, Any]:
        """The stored form, field names as in RFC 8460 §4.4."""
        return {
            "policy": {
                "policy-type": self.policy_type,
                "policy-domain": self.policy_domain,
                "policy-string": self.policy_strings,
                "mx-host": self.mx_hosts,
            },
            "summary": {
                "total-successful-session-count": self.success,
                "total-failure-session-count": self.failure,
            },
            "failure-details": [
                {
                    "result-type": d.result_type,
                    "sending-mta-ip": d.sending_mta_ip,
                    "receiving-mx-hostname": d.receiving_mx_hostname,
                    "receiving-mx-helo": d.receiving_mx_helo,
                    "receiving-ip": d.receiving_ip,
                    "failed-session-count": d.failed_session_count,
                    "failure-reason-code": d.failure_reason_code,
                }
                for d in self.details
            ],
            "is-host": self.is_host,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TLSResult:
        """Read the stored form back."""
        p, s = obj["policy"], obj["summary"]
        return cls(
            policy_type=p["policy-type"],
            policy_domain=p["policy-domain"],
            policy_strings=list(p["policy-string"]),
            mx_hosts=list(p["mx-host"]),
            is_host=obj.get("is-host", False),
            success=s["total-successful-session-count"],
            failure=s["total-failure-session-count"],
            details=[
                FailureDetail(
                    d["result-type"],
                    d["receiving-mx-hostname"],
                    d["receiving-ip"],
                    d["failure-reason-code"],
                    d["failed-session-count"],
                    # Rows stored before these fields were recorded lack them.
                    d.get("sending-mta-ip", ""),
                    d.get("receiving-mx-helo", ""),
                )
                for d in obj["failure-details"]
            ],
        )


def dns_extended_error_reason(code: int, name: str) -> str:
    """The failure reason code for a DNSSEC failure the resolver reported with an Extended DNS Error.

    name is the info code's registered name with dashes, e.g. `dns-extended-error-6-dnssec-bogus` (spec 02
    §1.2 step 3, §1.5 step 3, §2.3 item 5).
    """
    return f"dns-extended-error-{code}-{name}"


def tlsa_extended_error_reason(code: int, name: str) -> str:
    """The failure reason code of a TLSA lookup error that carried an Extended DNS Error.

    Spec 02 §1.5 step 3 keeps mox's other word order here: `extended-dns-error-<n>-<name>`.
    """
    return f"extended-dns-error-{code}-{name}"


# TLS alerts (RFC 8446 §6, RFC 5246 §7.2) by OpenSSL's name for a received one, with their numbers and the
# words mox's reason codes use for them.
_ALERTS = {
    "UNEXPECTED_MESSAGE": (10, "unexpected-message"),
    "BAD_RECORD_MAC": (20, "bad-record-mac"),
    "DECRYPTION_FAILED": (21, "decryption-failed"),
    "RECORD_OVERFLOW": (22, "record-overflow"),
    "DECOMPRESSION_FAILURE": (30, "decompression-failure"),
    "HANDSHAKE_FAILURE": (40, "handshake-failure"),
    "BAD_CERTIFICATE": (42, "bad-certificate"),
    "UNSUPPORTED_CERTIFICATE": (43, "unsupported-certificate"),
    "CERTIFICATE_REVOKED": (44, "revoked-certificate"),
    "CERTIFICATE_EXPIRED": (45, "expired-certificate"),
    "CERTIFICATE_UNKNOWN": (46, "unknown-certificate"),
    "ILLEGAL_PARAMETER": (47, "illegal-parameter"),
    "UNKNOWN_CA": (48, "unknown-certificate-authority"),
    "ACCESS_DENIED": (49, "access-denied"),
    "DECODE_ERROR": (50, "error-decoding-message"),
    "DECRYPT_ERROR": (51, "error-decrypting-message"),
    "PROTOCOL_VERSION": (70, "protocol-version-not-supported"),
    "INSUFFICIENT_SECURITY": (71, "insufficient-security-level"),
    "INTERNAL_ERROR": (80, "internal-error"),
    "INAPPROPRIATE_FALLBACK": (86, "inappropriate-fallback"),
    "USER_CANCELLED": (90, "user-canceled"),
    "NO_RENEGOTIATION": (100, "no-renegotiation"),
    "MISSING_EXTENSION": (109, "missing-extension"),
    "UNSUPPORTED_EXTENSION": (110, "unsupported-extension"),
    "UNRECOGNIZED_NAME": (112, "unrecognized-name"),
    "BAD_CERTIFICATE_STATUS_RESPONSE": (113, "bad-certificate-status-response"),
    "UNKNOWN_PSK_IDENTITY": (115, "unknown-psk-identity"),
    "CERTIFICATE_REQUIRED": (116, "certificate-required"),
    "NO_APPLICATION_PROTOCOL": (120, "no-application-protocol"),
}
# OpenSSL reports an alert the peer sent as e.g. "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] ..."; alerts it sends
# itself come with other reasons (e.g. CERTIFICATE_VERIFY_FAILED).
_REMOTE_ALERT = re.compile(r"\b(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)")


def remote_alert_reason(message: str) -> str:
    """`tls-remote-alert-<n>-<name>` when a TLS error text is an alert from the peer, else ""."""
    m = _REMOTE_ALERT.search(message)
    if m is None or m.group(1) not in _ALERTS:
        return ""
    number, name = _ALERTS[m.group(1)]
    return f"tls-remote-alert-{number}-{name}"


def classify_tls_error(message: str) -> tuple[str, str]:
    """The RFC 8460 §4.3 result type and reason code for a TLS failure text from the TLS layer."""
    alert = remote_alert_reason(message)
    if alert:
        # The server refused our TLS (spec 02 §10 scenario 11), whatever words came with it.
        return "validation-failure", alert
    m = message.lower()
    if "starttls" in m and ("not offer" in m or "not supported" in m):
        return "starttls-not-supported", ""
    if "expired" in m:
        return "certificate-expired", ""
    if "hostname mismatch" in m or "doesn't match" in m or "not valid for" in m:
        return "certificate-host-mismatch", ""
    if "certificate verify failed" in m or "self-signed" in m or "unable to get local issuer" in m:
        return "certificate-not-trusted", ""
    if "dane" in m:
        return "validation-failure", "dane-no-match"
    if m.startswith("tls handshake:") and ("timeout" in m or "timed out" in m):
        return "validation-failure", "io-timeout-during-handshake"
    if m.startswith("tls handshake:") and ("connectionreset" in m or "eof" in m or "connection lost" in m):
        return "validation-failure", "connection-closed-during-handshake"
    if m.startswith("starttls:") or m[:3].isdigit():
        code = message.split(" ", 1)[0]
        return "starttls-not-supported", f"smtp-starttls-reply-code-{code}" if code.isdigit() else ""
    return "validation-failure", ""
