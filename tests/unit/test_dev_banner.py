"""`tempost dev`'s banner tells the delivery its loaded configuration really does, not always "simulated"."""

from __future__ import annotations

from pathlib import Path

from deploy.dev import banner, write_dev_config
from domain.config import Config, load_config


def dev_config(tmp_path: Path, edit: str = "", append: str = "") -> Config:
    """The configuration `tempost dev` writes on first start, as a developer may have edited it."""
    path = tmp_path / "tempost.toml"
    write_dev_config(path, tmp_path, 8025)
    text = path.read_text()
    if edit:
        text = text.replace('default_transport = "localserve"', edit)
    path.write_text(text + append)
    return load_config(path)


def delivery_line(config: Config) -> str:
    [line] = [x for x in banner(config, "pw", "tok").splitlines() if x.startswith("Delivery")]
    return line


def test_the_written_dev_config_simulates(tmp_path: Path) -> None:
    line = delivery_line(dev_config(tmp_path))
    assert line == "Delivery: simulated (localserve). No mail leaves this machine. Ctrl-C stops everything."


def test_direct_delivery_is_not_called_simulated(tmp_path: Path) -> None:
    line = delivery_line(dev_config(tmp_path, 'default_transport = "direct"'))
    assert "simulated" not in line
    assert line.startswith("Delivery: direct to each recipient domain's MX hosts. Mail leaves this machine.")


RELAY = """
[transports.relay]
type = "submission"
host = "smtp.example.com"
auth = {username = "dev@example.com", password_env = "RELAY_PASSWORD"}
"""


def test_a_relay_names_its_host_and_port(tmp_path: Path) -> None:
    line = delivery_line(dev_config(tmp_path, 'default_transport = "relay"', RELAY))
    assert "simulated" not in line
    assert 'relayed to smtp.example.com:587 (submission, transport "relay")' in line
    assert "Mail leaves this machine." in line


def test_a_sink_on_this_machine_keeps_the_mail_here(tmp_path: Path) -> None:
    sink = '\n[transports.mailpit]\ntype = "smtp"\nhost = "127.0.0.1"\nport = 1025\nstarttls = "none"\n'
    line = delivery_line(dev_config(tmp_path, 'default_transport = "mailpit"', sink))
    assert 'relayed to 127.0.0.1:1025 on this machine (smtp, transport "mailpit")' in line
    assert "No mail leaves this machine." in line


def test_routes_that_deliver_for_real_are_told_beside_the_simulated_default(tmp_path: Path) -> None:
    route = RELAY + '\n[[routes]]\nto_domain = ["example.net"]\ntransport = "relay"\n'
    line = delivery_line(dev_config(tmp_path, append=route))
    assert line.startswith(
        "Delivery: simulated (localserve). Routes send some mail: relayed to smtp.example.com"
    )
    assert "Mail leaves this machine." in line and "No mail" not in line


def test_a_fail_transport_says_nothing_is_sent(tmp_path: Path) -> None:
    fail = '\n[transports.nope]\ntype = "fail"\nsmtp_code = 451\n'
    line = delivery_line(dev_config(tmp_path, 'default_transport = "nope"', fail))
    assert 'failed at once with 451, nothing sent (transport "nope")' in line
    assert "No mail leaves this machine." in line
