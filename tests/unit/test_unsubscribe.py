"""One-click unsubscribe (RFC 8058): tokens, header fields, the POST body, settings and the IP limiter."""

from __future__ import annotations

import base64
import string
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from domain.config import Config, load_config
from domain.ratelimit import RequestLimiter
from domain.unsubscribe import (
    MAX_LINE,
    Unsubscribe,
    add_header_fields,
    check_public_url,
    header_fields,
    make_token,
    one_click_body,
    read_token,
    unsubscribe_url,
)

SECRET = b"0123456789abcdef-test-secret"
SUB = Unsubscribe(account="alice", recipient="Bob+news@Example.com", msg_id=1_000_042)


def test_token_round_trip_names_account_recipient_and_message() -> None:
    token = make_token(SECRET, SUB)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert read_token(SECRET, token) == SUB
    # Unicode addresses and long names survive.
    other = Unsubscribe(account="ßales team", recipient="jösé@bücher.example", msg_id=2**63)
    assert read_token(SECRET, make_token(SECRET, other)) == other


def test_tokens_differ_per_recipient_and_message() -> None:
    t1 = make_token(SECRET, SUB)
    assert make_token(SECRET, Unsubscribe("alice", "carol@example.com", SUB.msg_id)) != t1
    assert make_token(SECRET, Unsubscribe("alice", SUB.recipient, SUB.msg_id + 1)) != t1


def test_every_single_character_change_is_refused() -> None:
    token = make_token(SECRET, SUB)
    alphabet = string.ascii_letters + string.digits + "-_"
    for i, c in enumerate(token):
        for repl in (alphabet[(alphabet.index(c) + 1) % len(alphabet)], "A" if c != "A" else "B"):
            assert read_token(SECRET, token[:i] + repl + token[i + 1 :]) is None, (i, c, repl)


def test_another_secret_truncation_extension_and_garbage_are_refused() -> None:
    token = make_token(SECRET, SUB)
    assert read_token(b"another-secret-of-16+", token) is None
    assert read_token(b"", token) is None
    assert read_token(SECRET, token[:-1]) is None
    assert read_token(SECRET, token + "A") is None
    assert read_token(SECRET, token + "=") is None
    assert read_token(SECRET, "") is None
    assert read_token(SECRET, "not a token") is None
    assert read_token(SECRET, "A" * 100_000) is None


def test_a_mac_moved_onto_another_account_is_refused() -> None:
    raw = base64.urlsafe_b64decode(make_token(SECRET, SUB) + "==")
    mac = raw[-16:]
    body = struct.pack(">BQ", 1, SUB.msg_id) + struct.pack(">H", 3) + b"bob"
    body += struct.pack(">H", len(SUB.recipient)) + SUB.recipient.encode()
    forged = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
    assert read_token(SECRET, forged) is None


def test_header_fields_and_insertion_at_the_end_of_the_header_section() -> None:
    url = unsubscribe_url("https://mail.example.com", "TOKEN")
    assert url == "https://mail.example.com/unsubscribe/TOKEN"
    fields = header_fields(url)
    assert fields == (
        b"List-Unsubscribe: <https://mail.example.com/unsubscribe/TOKEN>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    msg = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n\r\nmore\r\n"
    assert add_header_fields(msg, fields) == (
        b"From: a@example.org\r\nSubject: hi\r\n" + fields + b"\r\nbody\r\n\r\nmore\r\n"
    )
    with pytest.raises(ValueError, match="over 998"):
        header_fields("https://x.example/" + "a" * MAX_LINE)


def test_one_click_body() -> None:
    assert one_click_body([("List-Unsubscribe", "One-Click")])
    assert one_click_body([("x", "y"), ("List-Unsubscribe", "One-Click")])
    assert not one_click_body([])
    assert not one_click_body([("List-Unsubscribe", "one-click")])
    assert not one_click_body([("list-unsubscribe", "One-Click")])


def test_public_url_is_checked() -> None:
    assert check_public_url("https://mail.example.com/") == "https://mail.example.com"
    assert check_public_url("http://127.0.0.1:8025/tempost") == "http://127.0.0.1:8025/tempost"
    for bad in ("mail.example.com", "ftp://x.example", "https://", "https://a.example/?q=1", "https://b ü"):
        with pytest.raises(ValueError):
            check_public_url(bad)


def _config(api: dict, list_unsubscribe: bool) -> Config:
    return Config.model_validate(
        {
            "api": api,
            "accounts": [
                {
                    "name": "alice",
                    "addresses": ["alice@example.org"],
                    "password_file": "/dev/null",
                    "list_unsubscribe": list_unsubscribe,
                }
            ],
        }
    )


def test_an_account_with_list_unsubscribe_needs_the_public_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="list_unsubscribe needs api.public_url"):
        _config({}, True)
    assert _config({}, False).api.public_url == ""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file-0123456789\n")
    cfg = _config(
        {"public_url": "https://mail.example.com/", "unsubscribe_secret_file": str(secret_file)}, True
    )
    assert cfg.api.public_url == "https://mail.example.com"
    assert cfg.api.unsubscribe_secret(environ={}) == b"from-the-file-0123456789"
    # The environment wins over the file.
    env = {"TEMPOST_UNSUBSCRIBE_SECRET": "from-the-environment-42"}
    assert cfg.api.unsubscribe_secret(environ=env) == b"from-the-environment-42"
    with pytest.raises(ValueError, match="at least 16"):
        cfg.api.unsubscribe_secret(environ={"TEMPOST_UNSUBSCRIBE_SECRET": "short"})
    # The secret is never part of the configuration's text.
    assert "from-the-file" not in repr(cfg)


def test_request_limiter_counts_per_address_and_window() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    lim = RequestLimiter(3)
    assert all(lim.attempt("192.0.2.1", t0) for _ in range(3))
    assert not lim.attempt("192.0.2.1", t0)
    assert lim.attempt("192.0.2.2", t0)
    # One IPv6 /64 is one client.
    assert all(lim.attempt(f"2001:db8::{i}", t0) for i in range(3))
    assert not lim.attempt("2001:db8::99", t0)
    assert lim.attempt("2001:db8:0:1::1", t0)
    assert lim.attempt("192.0.2.1", t0 + timedelta(minutes=1))


def test_request_limiter_memory_is_bounded() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    lim = RequestLimiter(5, max_clients=10)
    assert all(lim.attempt(f"192.0.2.{i}", t0) for i in range(10))
    assert not lim.attempt("192.0.2.200", t0)
    assert lim.attempt("192.0.2.1", t0)


def test_dev_config_links_to_the_dev_api_and_generates_a_secret(tmp_path: Path) -> None:
    from deploy.dev import _secret_file, write_dev_config

    cfg_path = tmp_path / "tempost.toml"
    write_dev_config(cfg_path, tmp_path, 8123)
    secret = _secret_file(tmp_path / "unsubscribe-secret", "TEMPOST_TEST_UNSET_VARIABLE")
    assert (tmp_path / "unsubscribe-secret").stat().st_mode & 0o777 == 0o600
    cfg = load_config(cfg_path, environ={})
    assert cfg.api.public_url == "http://127.0.0.1:8123"
    assert cfg.api.unsubscribe_secret(environ={}) == secret.encode()
    assert len(secret) >= 16


def test_example_config_documents_unsubscribe() -> None:
    cfg = load_config(Path(__file__).parents[2] / "deploy" / "tempost.example.toml", environ={})
    shop = cfg.account("shop")
    assert shop is not None and shop.list_unsubscribe
    assert cfg.api.public_url == "https://mail.example.org" and cfg.api.unsubscribe_per_minute == 120


def test_the_api_does_not_start_without_a_secret_an_account_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.unsubscribe import load_secret

    monkeypatch.delenv("TEMPOST_UNSUBSCRIBE_SECRET", raising=False)
    cfg = _config({"public_url": "https://mail.example.com"}, True)
    with pytest.raises(ValueError, match="alice have list_unsubscribe"):
        load_secret(cfg)
    missing = _config({"unsubscribe_secret_file": str(tmp_path / "absent")}, False)
    with pytest.raises(ValueError, match="api.unsubscribe_secret_file"):
        load_secret(missing)
    # Nobody needs one: the API starts, and a Send asking for links is refused with a clear error.
    assert load_secret(_config({}, False)) == b""
