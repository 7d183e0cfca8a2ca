"""Simulated delivery of `tempost dev`, after mox's localserve mode (spec 01 §8.1)."""

from __future__ import annotations

from dataclasses import dataclass

SIMULATED_ERROR = "simulated error due to localserve mode and special recipient localpart"


@dataclass(frozen=True)
class SimulatedReply:
    """What the simulated next hop answers for one recipient."""

    success: bool
    permanent: bool
    code: int
    error: str


def simulate(localpart: str) -> SimulatedReply:
    """Decide the simulated outcome from the recipient localpart's suffix, checked in mox's order."""
    if localpart.endswith("temperror"):
        return SimulatedReply(False, False, 451, SIMULATED_ERROR)
    if localpart.endswith("permerror"):
        return SimulatedReply(False, True, 550, SIMULATED_ERROR)
    if localpart.endswith("timeout"):
        # A non-SMTP error: temporary, with no code.
        return SimulatedReply(False, False, 0, f"{SIMULATED_ERROR}: timeout")
    tail = localpart[-3:]
    if len(tail) == 3 and tail.isdigit() and 400 <= int(tail) <= 600:
        code = int(tail)
        return SimulatedReply(False, 500 <= code < 600, code, SIMULATED_ERROR)
    return SimulatedReply(True, False, 250, "")
