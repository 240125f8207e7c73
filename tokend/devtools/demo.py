"""``tokend demo``: the one-minute tour, on this machine alone.

An embedded identity provider on 127.0.0.1 issues 15-second tokens in both dialects tokend
speaks; the real daemon keeps them fresh in ``./tokend-demo/run/`` until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from tokend.config import CredentialConfig, load
from tokend.core.health import CredentialStatus
from tokend.core.results import Attempt
from tokend.core.timestamps import rfc3339
from tokend.core.tokens import fingerprint
from tokend.daemon.loop import Daemon
from tokend.daemon.reporting import Observer
from tokend.devtools.idp import IdentityProvider, IdpEvent
from tokend.io import logsetup

CONFIG = """\
# Written by `tokend demo`. Point tokend at it: tokend status -c {config}

[tokend]
state_dir = "state"

# The EventBookings dialect: a JSON body that carries the client id and secret.
[credentials.eventbookings]
token_url = "{url}"
request_format = "json"
client_auth = "body"
client_id = "eventbookings-demo"
client_secret_file = "eventbookings.secret"
min_ttl_margin = "3s"

[[credentials.eventbookings.sink]]
path = "run/eventbookings.token"

[[credentials.eventbookings.sink]]
path = "run/eventbookings.header"
format = "header"

[[credentials.eventbookings.sink]]
path = "run/eventbookings.env"
format = "env"

# Plain RFC 6749: a form body and HTTP Basic client authentication.
[credentials.rfc6749]
token_url = "{url}"
client_id = "rfc6749-demo"
client_secret_file = "rfc6749.secret"
scope = "api"
min_ttl_margin = "3s"

[[credentials.rfc6749.sink]]
path = "run/rfc6749.json"
format = "json"
"""


class Printer(Observer):
    """The tour's own lines: each rotation, as the daemon reports it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        if attempt.fetched and attempt.token is not None:
            self.out.write(
                f"  tokend: {cred.name} rotated to {attempt.token.fingerprint}, valid until "
                f"{rfc3339(attempt.token.expires_at)}; {attempt.sinks_written} file(s) "
                "replaced atomically\n"
            )
            self.out.flush()


def write_demo_files(directory: Path, url: str, clients: dict[str, str]) -> Path:
    (directory / "run").mkdir(parents=True, exist_ok=True)
    for client_id, secret in clients.items():
        path = directory / f"{client_id.removesuffix('-demo')}.secret"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(secret + "\n")
    config = directory / "tokend.toml"
    config.write_text(CONFIG.format(url=url, config=config))
    return config


def invocation() -> str:
    """How the user called us, so the hints can be pasted as they are (.venv/bin/tokend…)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "tokend":
        return argv0 if os.sep in argv0 else "tokend"
    return f"{os.path.relpath(sys.executable)} -m tokend"


def run_demo(
    directory: Path, *, lifetime: int = 15, duration: float | None = None, out: TextIO = sys.stdout
) -> int:
    directory = directory.absolute()
    clients = {"eventbookings-demo": secrets.token_urlsafe(18), "rfc6749-demo": secrets.token_urlsafe(18)}

    def on_event(event: IdpEvent) -> None:
        issued = f"issued {fingerprint(event.access_token)}" if event.access_token else "refused"
        out.write(
            f"  idp: {event.client_id} {event.grant_type} ({event.wire} body): "
            f"HTTP {event.status}, {issued}\n"
        )
        out.flush()

    with IdentityProvider(clients, lifetime=lifetime, on_event=on_event) as idp:
        config_path = write_demo_files(directory, idp.url, clients)
        rel = os.path.relpath(directory)
        prog = invocation()
        out.write(
            f"tokend demo: an identity provider at {idp.url} issues {lifetime}-second tokens;\n"
            f"tokend keeps them fresh in {rel}/run/. In another terminal, try:\n\n"
            f"  cat {rel}/run/eventbookings.token\n"
            f"  cat {rel}/run/eventbookings.header    # for curl -H @{rel}/run/eventbookings.header\n"
            f"  . {rel}/run/eventbookings.env && echo $EVENTBOOKINGS_ACCESS_TOKEN_EXPIRES_AT\n"
            f"  cat {rel}/run/rfc6749.json\n"
            f"  {prog} status -c {rel}/tokend.toml\n\n"
            "Ctrl-C stops.\n\n"
        )
        out.flush()
        config = load(config_path)
        logsetup.setup("warning")  # the tour prints its own lines; problems still show
        daemon = Daemon(config, observers=[Printer(out)])
        code = daemon.run(stop_after=duration)
        out.write(f"\ntokend demo stopped; {rel}/ keeps the config, the last tokens and the cache.\n")
        out.flush()
        return daemon.leave(code)
