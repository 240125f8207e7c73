"""tokend against three more real third-party OAuth2 servers, each installed from a registry:
Authlib's Flask AuthorizationServer (PyPI), @node-oauth/oauth2-server and panva's
oidc-provider (npm, ``tests/thirdparty/node``: ``npm ci`` there, as ``.ci/run`` does).

Each server was written by others and reads RFC 6749 its own way; what each one accepts is
written down in ``EXPECT`` below, from what the servers answered, and the tests hold tokend
to it: every server must give tokend a token with ``client_auth = "auto"`` and
``request_format = "auto"``, and a wrong secret must be reported as the authentication
failure it is.

What the servers do:

- Authlib 1.9, POST /oauth/token: decodes Basic credentials with ``unquote`` (a ``+`` stays
  a ``+``); a JSON body has no grant_type for it (400 unsupported_grant_type); a wrong
  secret is 401 invalid_client. Its client_credentials grant takes only Basic unless told
  otherwise (see tests/thirdparty/authlib_idp.py).
- @node-oauth/oauth2-server 5.3, POST /token: does not URL-decode Basic credentials; a JSON
  body is 400 invalid_request; a wrong secret is 401 invalid_client in Basic and 400
  invalid_client in the body.
- oidc-provider 9.13, POST /token: decodes Basic credentials (``+`` as a space); a JSON body
  is 400 invalid_request; a wrong secret is 401 invalid_client.

Non-ASCII secrets: RFC 6749 (appendix A.2) allows only printable ASCII in a client secret.
@node-oauth/oauth2-server enforces that on every secret it receives (400 invalid_request),
and oidc-provider refuses to hold such a client at all (400 invalid_client_metadata, or
400 invalid_request for the Basic header); Authlib takes any secret.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support.endpoint import SECRETS
from .support.processes import (
    REPO,
    Start,
    clean_env,
    distinct_tokens,
    run_tokend,
    started_server,
    stop_server,
)

NODE_DIR = REPO / "tests" / "thirdparty" / "node"
LIFETIME = 2  # seconds: short tokens, so rotation shows within a test

# One client per kind of secret, registered at every server.
CLIENTS = {
    "plain": ("tokend-plain", "plainSecret42"),  # the encoding of Basic leaves it as it is
    "ascii": ("tokend-ascii", "p:a%s+s w&rd"),  # : % + space &: all changed by the encoding
    "unicode": ("tokend-unicode", "p:a%s+s wörd"),  # and a character outside ASCII
}
WRONG_SECRET = "wrong p:a%s+s w&rd"


@dataclass(frozen=True)
class Refused:
    """The server refuses: tokend's fetch exits 1 and its error line carries this."""

    status: int
    error: str
    suggests_body: bool = False  # the error must suggest client_auth = "body" or "auto"


OK = "ok"
Expect = str | Refused

# (kind of secret, client_auth) -> what the server does. "body" and "auto" succeed wherever
# the server can hold the secret at all.
EXPECT: dict[str, dict[tuple[str, str], Expect]] = {
    "authlib": {
        ("plain", "basic"): OK,
        ("plain", "body"): OK,
        ("plain", "auto"): OK,
        # Basic works only with the space as %20: Authlib decodes with unquote, not
        # unquote_plus, so the '+' that quote_plus makes of a space stays a '+'.
        ("ascii", "basic"): OK,
        ("ascii", "body"): OK,
        ("ascii", "auto"): OK,
        ("unicode", "basic"): OK,
        ("unicode", "body"): OK,
        ("unicode", "auto"): OK,
    },
    "node-oauth2-server": {
        ("plain", "basic"): OK,
        ("plain", "body"): OK,
        ("plain", "auto"): OK,
        # It does not URL-decode Basic credentials, so the encoded secret does not match.
        ("ascii", "basic"): Refused(401, "invalid_client", suggests_body=True),
        ("ascii", "body"): OK,
        ("ascii", "auto"): OK,  # Basic refused with 401 invalid_client, then the body
        ("unicode", "basic"): Refused(401, "invalid_client", suggests_body=True),
        # "Invalid parameter: `client_secret`": not VSCHAR (RFC 6749 appendix A.2).
        ("unicode", "body"): Refused(400, "invalid_request"),
        ("unicode", "auto"): Refused(400, "invalid_request"),  # after Basic's 401
    },
    "oidc-provider": {
        ("plain", "basic"): OK,
        ("plain", "body"): OK,
        ("plain", "auto"): OK,
        ("ascii", "basic"): OK,
        ("ascii", "body"): OK,
        ("ascii", "auto"): OK,
        # "client_id and client_secret in the authorization header are not properly
        # encoded": the decoded secret is not VSCHAR.
        ("unicode", "basic"): Refused(400, "invalid_request"),
        # "invalid client_secret value": oidc-provider cannot hold this client.
        ("unicode", "body"): Refused(400, "invalid_client_metadata"),
        # Basic's 400 invalid_request is no authentication failure: "auto" stops there.
        ("unicode", "auto"): Refused(400, "invalid_request"),
    },
}

# request_format (with client_auth = "body" and the "ascii" secret) -> what the server does.
FORMATS: dict[str, dict[str, Expect]] = {
    # Authlib reads parameters from the form and the query only: no grant_type in JSON.
    "authlib": {"form": OK, "json": Refused(400, "unsupported_grant_type"), "auto": OK},
    # "Invalid request: content must be application/x-www-form-urlencoded"
    "node-oauth2-server": {"form": OK, "json": Refused(400, "invalid_request"), "auto": OK},
    # "only application/x-www-form-urlencoded content-type bodies are supported on POST /token"
    "oidc-provider": {"form": OK, "json": Refused(400, "invalid_request"), "auto": OK},
}

# client_auth -> how the server answers a wrong secret, in a form body.
WRONG: dict[str, dict[str, Refused]] = {
    "authlib": {"basic": Refused(401, "invalid_client"), "body": Refused(401, "invalid_client")},
    # 401 (with WWW-Authenticate) only when the client tried Basic.
    "node-oauth2-server": {"basic": Refused(401, "invalid_client"), "body": Refused(400, "invalid_client")},
    "oidc-provider": {"basic": Refused(401, "invalid_client"), "body": Refused(401, "invalid_client")},
}


@dataclass(frozen=True)
class Server:
    name: str
    url: str


_npm_ci: list[str] = []  # the outcome of this run's one `npm ci` ("" when it worked)


def install_node_servers() -> str:
    """`npm ci` from the lock file, once per run, as .ci/run does: the README's test
    command then needs no third step. Returns why it failed, or ""."""
    if not _npm_ci:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        _npm_ci.append("" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1])
    return _npm_ci[0]


def _command(name: str) -> tuple[list[str], str]:
    """How to start one server, and its token endpoint's path; skips when node is missing."""
    if name == "authlib":
        return [sys.executable, "-m", "tests.thirdparty.authlib_idp"], "/oauth/token"
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: cannot run the npm servers")
    package = {"node-oauth2-server": "@node-oauth/oauth2-server", "oidc-provider": "oidc-provider"}
    if not (NODE_DIR / "node_modules" / package[name] / "package.json").is_file():
        failure = install_node_servers()
        if failure:
            pytest.skip(f"{package[name]} not installed, and `npm ci` in {NODE_DIR} failed: {failure}")
    script = {"node-oauth2-server": "oauth2_server.js", "oidc-provider": "oidc_provider.mjs"}
    return ["node", str(NODE_DIR / script[name])], "/token"


@pytest.fixture(scope="module", params=list(EXPECT))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One third-party server issuing LIFETIME-second tokens to the CLIENTS."""
    name: str = request.param
    command, path = _command(name)
    (first_id, first_secret), *rest = CLIENTS.values()
    args = [first_id, first_secret, str(LIFETIME)] + [v for pair in rest for v in pair]
    errors = tmp_path_factory.mktemp(name) / "stderr.log"
    proc, port = started_server([*command, *args], errors)
    try:
        yield Server(name, f"http://127.0.0.1:{port}{path}")
    finally:
        stop_server(proc)


def config(
    tmp: Path,
    url: str,
    *,
    kind: str,
    auth: str,
    fmt: str = "form",
    secret: str | None = None,
    extra: str = "",
) -> Path:
    client_id, real_secret = CLIENTS[kind]
    secret = real_secret if secret is None else secret
    SECRETS.add(real_secret, secret)
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "idp.secret").write_text(secret + "\n", encoding="utf-8")
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.idp]\n'
        f'token_url = "{url}"\nclient_id = "{client_id}"\n'
        f'client_secret_file = "{tmp}/idp.secret"\nclient_auth = "{auth}"\n'
        f'request_format = "{fmt}"\nscope = "read"\n{extra}\n'
        f'[[credentials.idp.sink]]\npath = "{tmp}/out/idp.header"\nformat = "header"\n'
    )
    return path


def headline(stderr: str) -> str:
    """The error line of a failed fetch."""
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert errors, stderr
    return errors[0]


def assert_token(result: subprocess.CompletedProcess[str], tmp: Path) -> None:
    assert result.returncode == 0, result.stderr
    header = (tmp / "out" / "idp.header").read_text()
    assert header.startswith("Authorization: Bearer ") and len(header.split()[-1]) >= 20, header
    SECRETS.add(header.split()[-1])  # and the token it issued must not be in any log


def assert_outcome(result: subprocess.CompletedProcess[str], tmp: Path, expect: Expect) -> None:
    if expect == OK:
        assert_token(result, tmp)
        return
    assert isinstance(expect, Refused)
    assert result.returncode == 1, result.stderr
    assert not (tmp / "out" / "idp.header").exists()
    line = headline(result.stderr)
    assert f"{expect.error} (HTTP {expect.status})" in line, line
    if expect.suggests_body:
        assert "client_auth" in line and ("body" in line or "auto" in line), line


@pytest.mark.parametrize("auth", ["basic", "body", "auto"])
@pytest.mark.parametrize("kind", list(CLIENTS))
def test_client_auth(server: Server, tmp_path: Path, kind: str, auth: str) -> None:
    expect = EXPECT[server.name][kind, auth]
    path = config(tmp_path, server.url, kind=kind, auth=auth)
    assert_outcome(run_tokend("fetch", "-c", path, tmp=tmp_path), tmp_path, expect)
    if expect == OK and auth == "auto":  # what worked is remembered, and works again
        assert_token(run_tokend("fetch", "--force", "-c", path, tmp=tmp_path), tmp_path)


@pytest.mark.parametrize("fmt", ["form", "json", "auto"])
def test_request_format(server: Server, tmp_path: Path, fmt: str) -> None:
    path = config(tmp_path, server.url, kind="ascii", auth="body", fmt=fmt)
    result = run_tokend("fetch", "-c", path, tmp=tmp_path)
    assert_outcome(result, tmp_path, FORMATS[server.name][fmt])


@pytest.mark.parametrize("fmt", ["form", "auto"])
@pytest.mark.parametrize("auth", ["basic", "body", "auto"])
def test_a_wrong_secret_is_an_authentication_failure(
    server: Server, tmp_path: Path, auth: str, fmt: str
) -> None:
    path = config(tmp_path, server.url, kind="ascii", auth=auth, fmt=fmt, secret=WRONG_SECRET)
    result = run_tokend("fetch", "-c", path, tmp=tmp_path)
    assert result.returncode == 1, result.stderr
    line = headline(result.stderr)
    assert any(s in line for s in ("invalid_client", "HTTP 401", "HTTP 403")), line
    answers = WRONG[server.name]
    # "auto" ends with the body's answer; it may name the Basic one as well.
    wanted = [answers[auth]] if auth != "auto" else list(answers.values())
    assert any(f"{w.error} (HTTP {w.status})" in line for w in wanted), line
    # Not a complaint about the body format that a fallback to JSON ran into.
    assert "unsupported_grant_type" not in line and "invalid_request" not in line, line


def test_short_lived_tokens_rotate(server: Server, tmp_path: Path, daemons: Start) -> None:
    path = config(
        tmp_path, server.url, kind="plain", auth="basic", extra='min_ttl_margin = "0s"\nrefresh_at = 0.6'
    )
    daemons(path, tmp_path, clean_env(tmp_path))
    tokens = distinct_tokens(tmp_path / "out" / "idp.header", 3, 15, f"three tokens from {server.name}")
    SECRETS.add(*tokens)


def test_every_server_is_in_every_table() -> None:
    kinds_auths = {(kind, auth) for kind in CLIENTS for auth in ("basic", "body", "auto")}
    for name, table in EXPECT.items():
        assert set(table) == kinds_auths, name
        assert set(FORMATS[name]) == {"form", "json", "auto"}, name
        assert set(WRONG[name]) == {"basic", "body"}, name
