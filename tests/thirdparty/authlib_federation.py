"""Authlib's Flask AuthorizationServer trusting a "platform" key: workload identity
federation as Entra ID does it (a client authenticated by a JWT its platform signed, RFC
7523 §2.2), for the tests.

Usage: python -m tests.thirdparty.authlib_federation LOG PLATFORM_PUBLIC_PEM CLIENT_ID AUDIENCE LIFETIME

Prints ``PORT <n>`` once it listens on 127.0.0.1, then serves ``POST /oauth/token`` until
killed. Every token request is one JSON line appended to LOG (what it saw: the grant, the
assertion's ``jti`` and ``exp``, the answer's status), so that a test can say that tokend
sent no request at all.

Quirks: Authlib's ``JWTBearerClientAssertion`` finds the client by the assertion's ``sub``
and wants ``iss`` = ``sub`` (RFC 7523 §3); the client is registered under that name. jti
reuse is allowed: a projected service-account token is sent until it is rotated.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import Flask, request
from joserfc import jwk
from werkzeug.serving import WSGIRequestHandler, make_server

log_path, platform_pem, client_id, audience, lifetime = sys.argv[1:6]
with open(platform_pem, "rb") as f:
    platform_key = jwk.import_key(f.read())
log_lock = threading.Lock()


class Client(ClientMixin):  # type: ignore[misc]
    def get_client_id(self) -> str:
        return client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return bool(method == PlatformAssertion.CLIENT_AUTH_METHOD)

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("read", "write"))


class PlatformAssertion(JWTBearerClientAssertion):  # type: ignore[misc]
    def get_audiences(self) -> list[str]:
        return [audience]

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return True

    def resolve_client_public_key(self, client: Client) -> Any:
        return platform_key


class ByAssertion(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [PlatformAssertion.CLIENT_AUTH_METHOD]  # noqa: RUF012


def query_client(wanted: str) -> Client | None:
    return Client() if wanted == client_id else None


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": int(lifetime)}
server = AuthorizationServer(app, query_client=query_client, save_token=lambda token, req: None)
server.register_client_auth_method(PlatformAssertion.CLIENT_AUTH_METHOD, PlatformAssertion(leeway=0))
server.register_grant(ByAssertion)


def claims_of(assertion: str) -> dict[str, Any]:
    import base64

    try:
        payload = assertion.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except Exception:
        return {}


@app.post("/oauth/token")
def issue_token() -> Any:
    response = server.create_token_response()
    claims = claims_of(request.form.get("client_assertion", ""))
    line = {
        "grant_type": request.form.get("grant_type"),
        "jti": claims.get("jti"),
        "exp": claims.get("exp"),
        "status": response.status_code,
    }
    with log_lock, open(log_path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return response


class Quiet(WSGIRequestHandler):
    def log_request(self, *args: object) -> None:
        pass


def main() -> None:
    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    print(f"PORT {httpd.server_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
