"""A private Postfix instance on loopback, for tests that need a real MTA to accept mail and bounce it.

The instance lives entirely in a temporary directory (its own config, queue and data directories and log
file) and never touches the system's default instance in /etc/postfix and /var/spool/postfix. Mail for
`bounce_domain` goes to one SMTP server (Tempost's bounce listener), everything else to a relay host (an
SMTP sink), so Postfix's own bounces (DSNs) can be observed end to end. Needs Debian's postfix and root:
the master starts as root and its daemons run as the `postfix` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None)


def skip_reason() -> str | None:
    """Why a PostfixInstance cannot run here, or None when it can."""
    if POSTFIX is None:
        return "Postfix is not installed (apt-get install postfix was not possible)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its master starts as root, its daemons as postfix)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (Postfix's package was not configured)"
    return None


# Only the services this instance uses. chroot is off ("n" in the fifth column): a chroot would need
# copies of /etc files inside the temporary queue directory. postlog writes maillog_file.
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """Start with start(), stop with stop() (always); read the log with maillog()."""

    def __init__(
        self,
        port: int,
        *,
        relay_port: int,
        bounce_port: int,
        bounce_domain: str = "example.org",
        host: str = "127.0.0.1",
        relay_host: str = "127.0.0.1",
        bounce_host: str = "127.0.0.1",
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # mkdtemp, not pytest's tmp_path: the postfix user must be able to enter the queue directory, and
        # pytest's base directory is private to root.
        self.root = Path(tempfile.mkdtemp(prefix="tempost-postfix-"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "maillog"
        self.config_dir.mkdir()
        # Postfix creates the queue's subdirectories (at `check`), not the queue directory itself.
        self.queue_dir.mkdir()
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # Not tempost.test: Postfix's SMTP client reports a mail loop when the server it connects to
            # greets with Postfix's own hostname.
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "inet_interfaces": host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # No local or relay domains: every recipient goes out over SMTP, nothing is delivered here.
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            # Bounces to the sender's domain go to Tempost's bounce listener, all other mail to the sink.
            "transport_maps": f"inline:{{ {bounce_domain}=smtp:[{bounce_host}]:{bounce_port} }}",
            "relayhost": f"[{relay_host}]:{relay_port}",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            # Loopback only: no DNS for client names or next hops, so tests do not wait on resolvers.
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            # Log to a file of this instance (via postlogd), not syslog; Postfix only writes log files
            # under maillog_file_prefixes, which default to /var.
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            # Retry deferred mail within a second or two: tests wait seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        # The caller's main.cf settings last: they override the defaults above (bench/ routes mail itself).
        settings.update(extra_settings or {})
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        listen = f"{host}:{port}"
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(listen=listen))
        self._running = False

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert POSTFIX is not None
        r = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}\n"
                f"maillog:\n{self.maillog()}"
            )
        return r

    def start(self) -> PostfixInstance:
        """Create the queue, start the master and wait until smtpd listens; cleans up if any step fails."""
        try:
            # `check` creates the queue's subdirectories and the data directory with Postfix's owners.
            self._postfix("check")
            # Before `start`: a start that fails half way may still leave a master to stop.
            self._running = True
            self._postfix("start")
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Postfix does not listen on {self.host}:{self.port}:\n{self.maillog()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the master (which waits for its daemons) and remove the directory."""
        if self._running:
            self._postfix("stop", check=False)
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        """Attempt delivery of all deferred mail now (postqueue -f) instead of at the next queue run."""
        assert POSTFIX is not None
        postqueue = Path(POSTFIX).with_name("postqueue")
        subprocess.run([str(postqueue), "-c", str(self.config_dir), "-f"], check=True, timeout=30)

    def maillog(self) -> str:
        """The instance's log so far (maillog_file), for assertions and failure messages."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
