"""Simulated delivery (spec 01 §8.1), password hashes and configuration validation."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from domain.config import Config, load_config
from domain.localserve import simulate
from domain.passwords import hash_password, verify_password


@pytest.mark.parametrize(
    "localpart,success,permanent,code",
    [
        ("bob", True, False, 250),
        ("queuetemperror", False, False, 451),
        ("queuepermerror", False, True, 550),
        ("queuetimeout", False, False, 0),
        ("queue552", False, True, 552),
        ("queue421", False, False, 421),
        ("queue600", False, False, 600),
        ("queue399", True, False, 250),
    ],
)
def test_special_localparts(localpart: str, success: bool, permanent: bool, code: int) -> None:
    r = simulate(localpart)
    assert (r.success, r.permanent, r.code) == (success, permanent, code)


def test_password_hash_round_trip() -> None:
    h = hash_password("hunter2", iterations=1000)
    assert h.startswith("pbkdf2_sha256$1000$")
    assert verify_password("hunter2", h)
    assert not verify_password("hunter3", h)
    assert not verify_password("hunter2", "garbage")


def test_example_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "deploy" / "tempost.example.toml", environ={})
    assert cfg.queue.max_attempts == 8 and cfg.queue.backoff_base.total_seconds() == 450
    assert cfg.transports["relay"].starttls == "required"
    assert cfg.queue.connection_cache_time_limit.total_seconds() == 2


def test_connection_cache_settings_default_to_postfixs_limits() -> None:
    q = Config.model_validate({}).queue
    assert q.connection_cache_time_limit.total_seconds() == 2
    assert q.connection_reuse_time_limit.total_seconds() == 300 and q.connection_reuse_count_limit == 100
    off = Config.model_validate({"queue": {"connection_cache_time_limit": "0s"}}).queue
    assert off.connection_cache_time_limit.total_seconds() == 0
    for bad in ({"connection_cache_time_limit": "-1s"}, {"connection_reuse_count_limit": 0}):
        with pytest.raises(ValidationError):
            Config.model_validate({"queue": bad})


def test_environment_overrides_connections(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text('[database]\nurl = "postgresql://a/b"\n')
    cfg = load_config(
        p, environ={"TEMPOST_DATABASE_URL": "postgresql://c/d", "TEMPOST_TEMPORAL_ADDRESS": "t:1"}
    )
    assert cfg.database.url == "postgresql://c/d" and cfg.temporal.address == "t:1"


def _account(**settings: object) -> dict:
    return {"accounts": [{"name": "a", "addresses": ["a@x.example"], "password_file": "/p", **settings}]}


def test_example_config_webhook_and_fromid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "deploy" / "tempost.example.toml", environ={})
    shop = cfg.account("shop")
    assert shop is not None and shop.outgoing_webhook is not None
    assert shop.fromid_login_addresses == ["noreply@example.org"]
    assert cfg.separator("Example.org") == "+" and cfg.separator("example.net") == ""
    # The secret comes from the environment at queue time, not from the file.
    assert shop.outgoing_webhook.authorization() == ""


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"queue": {"default_transport": "nope"}}, "not a configured transport"),
        ({"queue": {"bogus": 1}}, "Extra inputs"),
        ({"accounts": [{"name": "a", "addresses": ["a@x"]}]}, "exactly one of password_hash"),
        ({"queue": {"backoff_base": "soon"}}, "invalid duration"),
        (_account(outgoing_webhook={"url": "ftp://x"}), "scheme must be http or https"),
        (_account(outgoing_webhook={"url": "http://x", "events": ["sent"]}), "unknown event 'sent'"),
        (_account(fromid_login_addresses=["a@x.example"]), "needs a domain with a catch-all separator"),
        (_account(fromid_login_addresses=["b@x.example"]), "is not one of its addresses"),
        ({"domains": {"x.example": {"localpart_catchall_separator": "ab"}}}, "one character"),
    ],
)
def test_bad_config_is_rejected_with_a_reason(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Config.model_validate(raw)


def test_per_domain_limits_match_whatever_case_or_script_the_operator_wrote() -> None:
    from domain.config import QueueConfig

    concurrency = {"Gmail.COM": 3, "bücher.example": 2}
    q = QueueConfig(domain_concurrency=concurrency, rate_limits={"Slow.example": 30})
    assert q.concurrency("gmail.com") == 3 and q.concurrency("xn--bcher-kva.example") == 2
    # Unlisted domains keep mox's one delivery at a time and no rate limit.
    assert q.concurrency("other.example") == 1 and q.attempts_per_minute("other.example") == 0
    assert q.attempts_per_minute("slow.example") == 30
