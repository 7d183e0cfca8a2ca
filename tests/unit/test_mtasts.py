"""MTA-STS record and policy parsing, MX matching (RFC 8461; spec 02 §10 scenarios 52, 53)."""

from __future__ import annotations

import pytest

from domain.mtasts import (
    Mode,
    PolicySyntaxError,
    RecordSyntaxError,
    is_sts_record,
    parse_policy,
    parse_record,
)


@pytest.mark.parametrize(
    "txt", ["v=STSv1; id=20160831085700Z;", "v=STSv1;id=20160831085700Z", "v=STSv1 ;\tid=abc ; ext=value ;"]
)
def test_52_valid_records(txt: str) -> None:
    assert parse_record(txt).id in ("20160831085700Z", "abc")


@pytest.mark.parametrize(
    "txt",
    [
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=" + "a" * 33,
        "v=STSv1; id=a-b",
        "v=STSv1; id=a; id=b",
        "v=STSv1; id=a; ext=",
        "v=STSv1; id=a; " + "e" * 33 + "=v",
        "v=STSv1; id=a; _ext=v",
        "v=STSv1;; id=a",
    ],
)
def test_52_invalid_records(txt: str) -> None:
    with pytest.raises(RecordSyntaxError):
        parse_record(txt)


@pytest.mark.parametrize("txt", ["v=STSv0; id=a", "v=STSv10; id=a", "v=STSv1", "v=spf1 -all"])
def test_52_non_sts_txt_strings_are_not_sts_records(txt: str) -> None:
    assert not is_sts_record(txt)


EXAMPLE = (
    "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\n"
    "max_age: 604800\n"
)


@pytest.mark.parametrize("text", [EXAMPLE, EXAMPLE.replace("\n", "\r\n"), EXAMPLE.replace(": ", ":\t")])
def test_53_example_policy(text: str) -> None:
    p = parse_policy(text)
    assert p.mode == Mode.ENFORCE and p.max_age == 604800
    assert p.mx == ("mail.example.com", "*.example.net", "backupmx.example.com")


def test_53_extension_keeps_inner_spaces() -> None:
    p = parse_policy("version: STSv1\nmode: none\nmax_age: 1\nmore: ext e  ns ion  \n")
    assert p.extensions == (("more", "ext e  ns ion"),) and p.mx == ()


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\n",
        "version: STSv1\nmode: testing\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
        "version: STSv1\nmode: bogus\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: **.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a-.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: bücher.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nempty:\n",
        "bogus",
    ],
)
def test_53_invalid_policies(text: str) -> None:
    with pytest.raises(PolicySyntaxError):
        parse_policy(text)


def test_mx_matching_exact_and_one_label_wildcard() -> None:
    p = parse_policy(EXAMPLE)
    assert p.matches("mail.example.com") and p.matches("MAIL.example.com.")
    assert p.matches("sub.example.net")
    assert not p.matches("example.net") and not p.matches("x.sub.example.net")
    assert not p.matches("other.example.com")
