"""A resource server that accepts DPoP-bound tokens only, checking each proof as RFC 9449
§4.3 and §7 say: one ``DPoP`` header holding a JWT of type ``dpop+jwt``, an asymmetric
algorithm, a signature by the public key in its header (never a private one), ``htm`` and
``htu`` matching this request, ``iat`` within a window, a ``jti`` never seen before, this
server's current nonce, ``ath`` the token's hash, and the key the one the token is bound to
(``cnf.jkt``, learned by introspecting the token at the identity provider).

Each refusal is a 401 with ``WWW-Authenticate: DPoP error="..."`` and the reason kept in
``log``, so a test can say which check refused what. ``rotate_nonce()`` makes a new nonce
(announced in the next answer's ``DPoP-Nonce``), so a client must keep the newest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import requests

IAT_WINDOW = 60.0
ASYMMETRIC = {"ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict[str, Any]) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    required = {m: jwk[m] for m in members[jwk["kty"]]}
    return _b64(hashlib.sha256(json.dumps(required, separators=(",", ":"), sort_keys=True).encode()).digest())


class Refused(Exception):
    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@dataclass
class DpopResource:
    introspection_url: str
    client: tuple[str, str]
    require_nonce: bool = True
    log: list[tuple[int, str]] = field(default_factory=list)  # (status, reason or "ok")
    seen_tokens: list[str] = field(default_factory=list)
    last_proof: str = ""  # the newest accepted proof, for a test to replay
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jtis: set[str] = field(default_factory=set)
    _nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _jkt: dict[str, str | None] = field(default_factory=dict)
    url: str = ""

    def rotate_nonce(self) -> None:
        with self._lock:
            self._nonce = secrets.token_urlsafe(16)

    def refusals(self) -> list[str]:
        with self._lock:
            return [reason for status, reason in self.log if status != 200]

    def accepted(self) -> int:
        with self._lock:
            return sum(1 for status, _ in self.log if status == 200)

    def _bound_key(self, token: str) -> str | None:
        if token not in self._jkt:
            answer = requests.post(
                self.introspection_url, auth=self.client, data={"token": token}, timeout=5
            ).json()
            active = answer.get("active") is True and answer.get("token_type") == "DPoP"
            self._jkt[token] = answer.get("cnf", {}).get("jkt") if active else None
        return self._jkt[token]

    def check(self, method: str, url: str, authorization: str | None, proofs: list[str]) -> str:
        """The token, if the request passes every check; else Refused."""
        if not authorization or not authorization.startswith("DPoP "):
            raise Refused("invalid_token", "no DPoP authorization")
        token = authorization[5:].strip()
        if len(proofs) != 1:
            raise Refused("invalid_dpop_proof", f"{len(proofs)} DPoP headers")
        proof = proofs[0]
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError:
            raise Refused("invalid_dpop_proof", "not a JWT") from None
        if header.get("typ") != "dpop+jwt":
            raise Refused("invalid_dpop_proof", "typ")
        if header.get("alg") not in ASYMMETRIC:
            raise Refused("invalid_dpop_proof", "alg")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or any(k in jwk for k in ("d", "p", "q")):
            raise Refused("invalid_dpop_proof", "jwk")
        try:
            key = jwt.PyJWK(jwk, header["alg"]).key
            claims = jwt.decode(proof, key, algorithms=[header["alg"]], options={"verify_aud": False})
        except jwt.PyJWTError:
            raise Refused("invalid_dpop_proof", "signature") from None
        if claims.get("htm") != method:
            raise Refused("invalid_dpop_proof", "htm")
        if claims.get("htu") != url:
            raise Refused("invalid_dpop_proof", "htu")
        iat = claims.get("iat")
        if not isinstance(iat, int) or abs(time.time() - iat) > IAT_WINDOW:
            raise Refused("invalid_dpop_proof", "iat")
        if claims.get("ath") != _b64(hashlib.sha256(token.encode()).digest()):
            raise Refused("invalid_dpop_proof", "ath")
        with self._lock:
            if self.require_nonce and claims.get("nonce") != self._nonce:
                raise Refused("use_dpop_nonce", "nonce")
            jti = claims.get("jti")
            if not isinstance(jti, str) or jti in self._jtis:
                raise Refused("invalid_dpop_proof", "jti replayed")
            self._jtis.add(jti)
            bound = self._bound_key(token)
        if bound is None:
            raise Refused("invalid_token", "token not active or not DPoP-bound")
        if bound != thumbprint(jwk):
            raise Refused("invalid_token", "cnf.jkt")
        return token

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        target = f"{self.url}{handler.path.split('?', 1)[0]}"
        try:
            token = self.check(
                handler.command,
                target,
                handler.headers.get("Authorization"),
                handler.headers.get_all("DPoP") or [],
            )
        except Refused as exc:
            with self._lock:
                self.log.append((401, exc.reason))
                nonce = self._nonce
            handler.send_response(401)
            handler.send_header(
                "WWW-Authenticate", f'DPoP error="{exc.error}", algs="ES256 ES384 EdDSA RS256"'
            )
            handler.send_header("DPoP-Nonce", nonce)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        with self._lock:
            self.log.append((200, "ok"))
            self.seen_tokens.append(token)
            self.last_proof = (handler.headers.get_all("DPoP") or [""])[0]
        body = b'{"ok": true}'
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@contextmanager
def dpop_resource(introspection_url: str, client: tuple[str, str]) -> Iterator[DpopResource]:
    resource = DpopResource(introspection_url, client)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            resource.handle(self)

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    resource.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield resource
    finally:
        server.shutdown()
        server.server_close()
