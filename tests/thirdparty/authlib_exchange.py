"""Authlib's Flask AuthorizationServer with OAuth 2.0 Token Exchange (RFC 8693), as a
cloud's STS does it, and Authlib's own JWT-bearer grant (RFC 7523 §2.1), as Google's token
endpoint does it for a service account (client ``SERVICE_ACCOUNT``, its JWT signed by the
platform's key, the audience this token endpoint). Token exchange: a subject token the
platform signed (a Kubernetes service-account token, say) exchanged for an access token,
optionally with an actor token, by a confidential client (client_secret_basic) or a public
one (client_auth "none"). For the tests.

Usage: python -m tests.thirdparty.authlib_exchange LOG PLATFORM_PUBLIC_PEM AUDIENCE LIFETIME

Prints ``PORT <n>`` once it listens on 127.0.0.1, then serves ``POST /oauth/token`` until
killed. Every token request is one JSON line appended to LOG (the grant, the client, the
subject's and actor's ``sub`` and ``exp``, the requested type, the answer's status).

Authlib 1.9 ships no RFC 8693 grant (its ``rfc8693`` package is empty), so the grant is
written here on Authlib's grant framework, checking what RFC 8693 §2.1 says a server must:
the subject token's type, signature (the platform's key), audience and expiry; an actor
token only with its type; the requested type one it can issue.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc7523 import JWTBearerGrant
from flask import Flask, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import import_key
from werkzeug.serving import WSGIRequestHandler, make_server

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SERVICE_ACCOUNT = "svc@project.iam.gserviceaccount.com"  # the JWT-bearer grant's iss
CLIENTS = {"exchanger": "exchanger-secret-0123456789", "workload": None, SERVICE_ACCOUNT: None}

log_path, platform_pem, audience, lifetime = sys.argv[1:5]
with open(platform_pem, "rb") as f:
    platform_key = import_key(f.read())
log_lock = threading.Lock()
seen: dict[str, Any] = {}


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.secret = CLIENTS[client_id]

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, secret: str) -> bool:
        return self.secret is not None and secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == ("none" if self.secret is None else "client_secret_basic")

    def check_grant_type(self, grant_type: str) -> bool:
        if self.client_id == SERVICE_ACCOUNT:
            return bool(grant_type == JWTBearerGrant.GRANT_TYPE)
        return grant_type == TOKEN_EXCHANGE

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("read", "write"))


def judge(token: str, what: str) -> dict[str, Any]:
    """A platform-signed JWT for this audience, not expired: its claims; else invalid_grant."""
    try:
        claims = dict(jwt.decode(token, platform_key).claims)
    except (JoseError, ValueError):
        raise InvalidGrantError(f"the {what} is not signed by a trusted platform") from None
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise InvalidGrantError(f"the {what} is for another audience")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise InvalidGrantError(f"the {what} has expired")
    return claims


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "none"]  # noqa: RUF012

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("the client may not exchange tokens")
        self.request.client = client
        form = self.request.form
        seen.clear()
        if form.get("subject_token_type") != JWT_TYPE or not form.get("subject_token"):
            raise InvalidRequestError("subject_token and a subject_token_type of jwt are required")
        subject = judge(form["subject_token"], "subject token")
        seen.update(subject_sub=subject.get("sub"), subject_exp=subject.get("exp"))
        if "actor_token" in form:
            if form.get("actor_token_type") != JWT_TYPE:
                raise InvalidRequestError("actor_token_type is required with actor_token")
            seen["actor_sub"] = judge(form["actor_token"], "actor token").get("sub")
        elif "actor_token_type" in form:
            raise InvalidRequestError("actor_token_type without actor_token")
        requested = form.get("requested_token_type")
        if requested not in (None, ACCESS_TOKEN_TYPE):
            raise InvalidRequestError("this server issues access tokens only")
        self.validate_requested_scope()

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.payload.scope, include_refresh_token=False)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, token, self.TOKEN_RESPONSE_HEADER


class ServiceAccountGrant(JWTBearerGrant):  # type: ignore[misc]
    """Authlib's grant: the client found by the JWT's iss, its key the platform's."""

    def resolve_issuer_client(self, issuer: str) -> Client | None:
        return Client(issuer) if issuer == SERVICE_ACCOUNT else None

    def resolve_client_public_key(self, client: Client) -> Any:
        return platform_key

    def get_audiences(self) -> list[str]:
        return [request.host_url + "oauth/token"]

    def authenticate_user(self, subject: str) -> str | None:
        return subject or None

    def has_granted_permission(self, client: Client, user: str) -> bool:
        return True

    def process_assertion_claims(self, assertion: str) -> Any:
        claims = super().process_assertion_claims(assertion)
        seen.update(iss=claims.get("iss"), sub=claims.get("sub"), scope_claim=claims.get("scope"))
        seen.update(exp=claims.get("exp"), lifetime=claims.get("exp", 0) - claims.get("iat", 0))
        return claims


def query_client(wanted: str) -> Client | None:
    return Client(wanted) if wanted in CLIENTS else None


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
    TOKEN_EXCHANGE: int(lifetime),
    JWTBearerGrant.GRANT_TYPE: int(lifetime),
}
server = AuthorizationServer(app, query_client=query_client, save_token=lambda token, req: None)
server.register_grant(TokenExchangeGrant)
server.register_grant(ServiceAccountGrant)


@app.post("/oauth/token")
def issue_token() -> Any:
    seen.clear()
    response = server.create_token_response()
    line = {
        "grant_type": request.form.get("grant_type"),
        "client_id": request.form.get("client_id")
        or (request.authorization.username if request.authorization else None),
        "requested_token_type": request.form.get("requested_token_type"),
        "audience": request.form.get("audience"),
        "scope": request.form.get("scope"),
        "status": response.status_code,
        "error": (response.get_json(silent=True) or {}).get("error"),
        **seen,
    }
    with log_lock, open(log_path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return response


class Quiet(WSGIRequestHandler):
    def log_request(self, *args: object) -> None:
        pass


def main() -> None:
    httpd = make_server("127.0.0.1", 0, app, threaded=False, request_handler=Quiet)
    print(f"PORT {httpd.server_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
