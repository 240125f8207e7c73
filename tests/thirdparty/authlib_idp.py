"""Authlib's Flask AuthorizationServer as a real third-party token endpoint, for the tests.

Usage: python -m tests.thirdparty.authlib_idp CLIENT_ID CLIENT_SECRET LIFETIME [CLIENT_ID CLIENT_SECRET]...
Prints ``PORT <n>`` once it listens on 127.0.0.1, then serves ``POST /oauth/token`` until
killed.

Quirk: Authlib's ``ClientCredentialsGrant`` accepts only ``client_secret_basic`` out of the
box (``TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]``); a subclass adds
``client_secret_post``, and the client model allows both. Authlib URL-decodes the Basic
credentials with ``unquote`` (not ``unquote_plus``: a ``+`` stays a ``+``), and reads the
parameters from the form body and the query only, never from a JSON body.
"""

from __future__ import annotations

import secrets
import sys
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

args = sys.argv[1:]
lifetime = int(args[2])
clients = dict([(args[0], args[1]), *((args[i], args[i + 1]) for i in range(3, len(args) - 1, 2))])


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, secret: str) -> bool:
        return secrets.compare_digest(secret.encode(), clients[self.client_id].encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("read", "write"))


class BasicOrPost(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012


def query_client(wanted: str) -> Client | None:
    return Client(wanted) if wanted in clients else None


def save_token(token: dict[str, Any], request: Any) -> None:
    pass  # nothing reads the tokens back


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": lifetime}
server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
server.register_grant(BasicOrPost)


@app.post("/oauth/token")
def issue_token() -> Any:
    return server.create_token_response()


class Quiet(WSGIRequestHandler):
    def log_request(self, *args: object) -> None:
        pass


def main() -> None:
    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    print(f"PORT {httpd.server_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
