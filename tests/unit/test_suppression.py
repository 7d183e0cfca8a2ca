"""Suppression base addresses and automatic-addition rules (spec 03 §2.2, §2.3)."""

from __future__ import annotations

import pytest

from domain.addresses import parse_address
from domain.suppression import base_address, immediate_block


@pytest.mark.parametrize(
    "given,base",
    [
        ("Remote.Last-catchall@xn--74h.localhost", "remotelast@☺.localhost"),
        ("M.j.l2+catchall@Mox.example", "mjl2@mox.example"),
        ("mjl2@mox.example", "mjl2@mox.example"),
        ("first-last@x.example", "first@x.example"),
        ("first-other@x.example", "first@x.example"),
        ("bob@[192.0.2.1]", "bob@192.0.2.1"),
    ],
)
def test_25_base_address(given: str, base: str) -> None:
    assert base_address(parse_address(given)) == base


@pytest.mark.parametrize(
    "code,secode,blocks",
    [
        (550, "", True),
        (521, "", True),
        (554, "1.1", True),
        (554, "7.1", True),
        (554, "1.0", False),
        (552, "", False),
        (451, "1.1", False),
    ],
)
def test_immediate_block_codes(code: int, secode: str, blocks: bool) -> None:
    assert immediate_block(code, secode) is blocks
