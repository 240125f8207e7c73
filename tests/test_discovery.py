"""tokend/io/discovery.py: a credential configured by its issuer, against metadata served
over real HTTP on 127.0.0.1 (the pytest-httpserver behind the ``idp`` fixture serves both
the metadata and the token endpoint). Discovery against oidc-provider itself is in
tests/test_keyauth.py; the pure judgement (tokend/core/discovery.py) in
tests/test_discovery_metadata.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tokend.config import ConfigError, CredentialConfig, parse
from tokend.core.token_response import TokenRequestError
from tokend.io.discovery import cache_path, judge
from tokend.io.token_client import TokenClient

from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import assert_one_line_error, clean_env, run_tokend
from .thirdparty.tls_front import Pki, TlsFront

OIDC = "/.well-known/openid-configuration"


def base(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/").rstrip("/")


def metadata(issuer: str, token_endpoint: str, **more: Any) -> dict[str, Any]:
    return {"issuer": issuer, "token_endpoint": token_endpoint, **more}


def issuer_config(tmp: Path, issuer: str) -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "api.secret").write_text("s3cret-value\n")
    (tmp / "api.secret").chmod(0o600)
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.api]\nissuer = "{issuer}"\n'
        f'client_id = "client-1"\nclient_secret_file = "{tmp}/api.secret"\n\n'
        f'[[credentials.api.sink]]\npath = "{tmp}/out/api.token"\n'
    )
    return path


def test_metadata_for_another_issuer_is_refused(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    issuer = base(httpserver)
    httpserver.expect_request(OIDC).respond_with_json(metadata(f"{issuer}/elsewhere", idp.url))
    path = issuer_config(tmp_path, issuer)
    result = run_tokend("fetch", "-c", path, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(result, "credentials.api.issuer", "discovery refused", f"{issuer}/elsewhere")
    assert idp.seen == []  # no secret went to an endpoint another issuer's metadata named
    assert not (tmp_path / "out" / "api.token").exists()


def test_discovery_over_plain_http_never_goes_through_the_environments_all_proxy(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Discovery's GET and the token request to a loopback issuer both go direct, whatever
    ALL_PROXY says (requests would add it to the proxies a call names)."""
    import socket

    issuer = base(httpserver)
    httpserver.expect_request(OIDC).respond_with_json(metadata(issuer, idp.url))
    path = issuer_config(tmp_path, issuer)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(8)
        proxy.settimeout(0.2)
        env = {k: v for k, v in clean_env(tmp_path).items() if k.lower() not in ("no_proxy", "http_proxy")}
        env["ALL_PROXY"] = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        result = run_tokend("fetch", "-c", path, tmp=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        with pytest.raises(TimeoutError):
            proxy.accept()  # nobody came to the proxy
    assert len(idp.seen) == 1 and (tmp_path / "out" / "api.token").read_text() == "tok-1\n"


def test_rfc8414_metadata_is_the_fallback(idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path) -> None:
    issuer = f"{base(httpserver)}/tenant"
    httpserver.expect_request(f"/tenant{OIDC}").respond_with_data("", status=404)
    httpserver.expect_request("/.well-known/oauth-authorization-server/tenant").respond_with_json(
        metadata(issuer, idp.url, token_endpoint_auth_methods_supported=["client_secret_basic"])
    )
    result = run_tokend("fetch", "-c", issuer_config(tmp_path, issuer), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "api.token").read_text().strip() == "tok-1"
    assert [seen.basic_auth for seen in idp.seen] == [("client-1", "s3cret-value")]


def test_the_metadata_is_fetched_again_when_the_endpoint_answers_404(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    issuer = base(httpserver)
    httpserver.expect_request("/moved-away").respond_with_data("", status=404)
    httpserver.expect_request(OIDC).respond_with_json(metadata(issuer, idp.url))
    # What an earlier discovery kept, an hour ago: the endpoint the IdP has since moved.
    cached = cache_path(tmp_path / "state", issuer)
    cached.parent.mkdir(parents=True)
    old = {"version": 1, "fetched_at": __import__("time").time() - 3600}
    cached.write_text(json.dumps(old | {"metadata": metadata(issuer, f"{issuer}/moved-away")}))
    result = run_tokend("fetch", "-c", issuer_config(tmp_path, issuer), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(idp.seen) == 1
    assert json.loads(cached.read_text())["metadata"]["token_endpoint"] == idp.url


def test_the_metadata_is_kept_for_a_day(idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path) -> None:
    issuer = base(httpserver)
    httpserver.expect_request(OIDC).respond_with_json(metadata(issuer, idp.url))
    (tmp_path / "s").write_text("s3cret-value\n")
    text = f'[credentials.a]\nissuer = "{issuer}"\nclient_id = "c"\nclient_secret_file = "{tmp_path}/s"\n'
    cred = parse(text, tmp_path / "t.toml", environ={}).credentials["a"]
    now = [1_000_000.0]
    client = TokenClient(clock=lambda: now[0])
    fetches = []
    try:
        for step in (0, 3600, 82000, 1000):  # the last a day and 200 s after the first
            now[0] += step
            found, fetched = client.discover(cred, tmp_path / "state")
            assert found.token_endpoint == idp.url
            fetches.append(fetched)
    finally:
        client.close()
    assert fetches == [True, False, False, True]
    assert sum(1 for request, _ in httpserver.log if request.path == OIDC) == 2


def test_check_online_shows_the_discovery_and_warns_of_an_unlisted_method(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    issuer = base(httpserver)
    # An entry with a terminal escape in it is not a method name: never printed.
    listed = ["private_key_jwt", "\x1b]0;pwned\x07\x1b[2J", "tls_client_auth"]
    served = metadata(issuer, idp.url, token_endpoint_auth_methods_supported=listed)
    httpserver.expect_request(OIDC).respond_with_json(served)
    result = run_tokend("check", "--online", "-c", issuer_config(tmp_path, issuer), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"discovered: api: issuer {issuer}: token endpoint {idp.url}" in result.stdout
    assert "auth methods: private_key_jwt, tls_client_auth" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    assert 'warning: api: client_auth = "basic" (client_secret_basic)' in result.stderr
    assert "online: api: token" in result.stdout


# ----------------------------------------------------------- metadata and metadata caches that cannot be read

DEEP = b"[" * 200_000  # under the 1 MiB cap, and past the JSON parser's recursion limit


def stale_cache(state: Path, issuer: str, token_endpoint: str, *, now: float) -> Path:
    """What an earlier discovery kept, two days before ``now``."""
    cached = cache_path(state, issuer)
    cached.parent.mkdir(parents=True)
    record = {"version": 1, "fetched_at": now - 2 * 86400, "metadata": metadata(issuer, token_endpoint)}
    cached.write_text(json.dumps(record))
    return cached


def secret_credential(tmp: Path, issuer: str, extra: str = "") -> CredentialConfig:
    (tmp / "s").write_text("s3cret-value\n")
    text = f'[credentials.a]\nissuer = "{issuer}"\nclient_id = "c"\nclient_secret_file = "{tmp}/s"\n{extra}'
    return parse(text, tmp / "t.toml", environ={}).credentials["a"]


def test_metadata_nested_too_deep_is_a_one_line_failure(httpserver: HTTPServer, tmp_path: Path) -> None:
    issuer = base(httpserver)
    for path in (OIDC, "/.well-known/oauth-authorization-server"):
        httpserver.expect_request(path).respond_with_data(DEEP, content_type="application/json")
    result = run_tokend("fetch", "-c", issuer_config(tmp_path, issuer), tmp=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert f"discovery found no metadata for issuer {issuer}" in result.stderr
    assert f"{issuer}{OIDC}: not JSON" in result.stderr


def test_a_metadata_cache_that_cannot_be_read_is_discarded_and_fetched_again(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """A tampered discovery cache (nested too deep) used to raise RecursionError at every
    refresh, for ever: now it is removed, and fetched again as soon as the issuer answers."""
    issuer = base(httpserver)
    cred = secret_credential(tmp_path, issuer)
    cached = cache_path(tmp_path / "state", issuer)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(DEEP)
    httpserver.expect_oneshot_request(OIDC).respond_with_data("", status=503)  # the issuer is down
    httpserver.expect_request(OIDC).respond_with_json(metadata(issuer, idp.url))
    client = TokenClient()
    try:
        with pytest.raises(TokenRequestError, match="discovery found no metadata"):
            client.discover(cred, tmp_path / "state")
        assert not cached.exists()
        found, fetched = client.discover(cred, tmp_path / "state")
        assert (found.token_endpoint, fetched) == (idp.url, True)
        assert json.loads(cached.read_text())["metadata"]["token_endpoint"] == idp.url
    finally:
        client.close()


def test_stale_metadata_is_used_while_the_issuer_answers_an_error_but_never_another_issuers(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that fails, by an error or by metadata we refuse (another issuer's, an
    error object served with 200), keeps the good metadata
    in use with a warning; the refused metadata is never used nor kept, and with nothing
    cached it is the config error it always was."""
    issuer = base(httpserver)
    cred = secret_credential(tmp_path, issuer)
    now = 1_000_000_000.0
    cached = stale_cache(tmp_path / "state", issuer, idp.url, now=now)
    kept = cached.read_bytes()
    httpserver.expect_oneshot_request(OIDC).respond_with_data("", status=403)
    httpserver.expect_oneshot_request("/.well-known/oauth-authorization-server").respond_with_data(
        "", status=302, headers={"Location": "https://elsewhere.example/"}
    )
    httpserver.expect_oneshot_request(OIDC).respond_with_json({"error": "temporarily_unavailable"})
    httpserver.expect_request(OIDC).respond_with_json(metadata(f"{issuer}/other", "https://evil.example/t"))
    client = TokenClient(clock=lambda: now)
    caplog.set_level("WARNING", "tokend.discovery")
    try:
        found, fetched = client.discover(cred, tmp_path / "state")  # 403, then 302: the cache
        assert (found.token_endpoint, fetched) == (idp.url, False)
        for _ in range(2):  # 200 with an error object; then another issuer's metadata
            found, fetched = client.discover(cred, tmp_path / "state")
            assert (found.token_endpoint, fetched) == (idp.url, False)
        assert cached.read_bytes() == kept
        refused = [r.getMessage() for r in caplog.records if "discovery refused" in r.getMessage()]
        assert len(refused) == 2 and "the metadata is for issuer" in refused[1], refused
        assert "using what was fetched before" in refused[1] and str(tmp_path) not in refused[1]
        cached.unlink()  # nothing cached: another issuer's metadata is a hard failure
        with pytest.raises(ConfigError, match="discovery refused: the metadata is for issuer"):
            client.discover(cred, tmp_path / "state")
        assert not cached.exists()
    finally:
        client.close()


def test_an_https_issuers_endpoints_must_be_https(tmp_path: Path) -> None:
    issuer = "https://idp.example"
    cred = secret_credential(tmp_path, issuer, "allow_insecure_http = true\n")
    assert judge(cred, metadata(issuer, "https://idp.example/t")).token_endpoint == "https://idp.example/t"
    for served in (
        metadata(issuer, "http://127.0.0.1:8080/t"),
        metadata(issuer, "https://idp.example/t", mtls_endpoint_aliases={"token_endpoint": "http://[::1]/t"}),
    ):
        with pytest.raises(ConfigError, match="token_endpoint is not https, as the issuer is"):
            judge(cred, served)
    plain = secret_credential(tmp_path, "http://127.0.0.1:8080")  # loopback http stays as it was
    assert judge(plain, metadata("http://127.0.0.1:8080", "http://127.0.0.1:8080/t")).token_endpoint


def test_discovery_presents_the_client_certificate(
    idp: TokenEndpoint, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Behind a server that demands a client certificate on every connection, the metadata
    request needs it as much as the token request."""
    pki = Pki(tmp_path)
    cert, key = pki.issue("tokend-svc", "svc")
    SECRETS.add(key.read_text())
    front = TlsFront(httpserver.port, pki)
    try:
        issuer = f"https://127.0.0.1:{front.port}"
        httpserver.expect_request(OIDC).respond_with_json(metadata(issuer, f"{issuer}/connect/token"))
        extra = f'ca_bundle = "{pki.ca_file}"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        cred = secret_credential(tmp_path, issuer, extra)
        client = TokenClient()
        try:
            answer = client.obtain(
                cred, client_id="c", client_secret="s3cret-value", state_dir=tmp_path / "state"
            )
        finally:
            client.close()
    finally:
        front.close()
    assert answer.token.access_token == "tok-1"
    assert front.subjects == ["CN=tokend-svc", "CN=tokend-svc"]  # the metadata, then the token
    assert [request.path for request, _ in httpserver.log] == [OIDC, "/connect/token"]
