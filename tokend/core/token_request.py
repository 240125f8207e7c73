"""The OAuth2 token request as data (RFC 6749 §4.4, §6): built in a :class:`Style`, where
the client authenticates and how the body is encoded, or by a key-based method
(RFC 7523's signed assertion, RFC 8705's client certificate).

Pure: :mod:`tokend.io.token_client` sends what :func:`build_request` builds. What may come
back of its secrets is :mod:`tokend.core.scrub`'s; judging the answer is
:mod:`tokend.core.token_response`'s; which style to try next, :mod:`tokend.core.styles`'.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from tokend import __version__
from tokend.core.assertion import ASSERTION_TYPE

if TYPE_CHECKING:  # annotations only: the request needs no part of config at run time
    from tokend.config.schema import AuthStyle, CredentialConfig, WireFormat


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # RFC 8693 §2.1
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1


@dataclass(frozen=True)
class ExchangeTokens:
    """Token exchange's inputs (RFC 8693 §2.1), as read for one request."""

    subject_token: str = field(repr=False)
    subject_token_type: str
    actor_token: str | None = field(default=None, repr=False)
    actor_token_type: str | None = None
    requested_token_type: str | None = None

    def params(self) -> list[tuple[str, str]]:
        params = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", self.subject_token),
            ("subject_token_type", self.subject_token_type),
        ]
        if self.actor_token is not None and self.actor_token_type is not None:
            params += [("actor_token", self.actor_token), ("actor_token_type", self.actor_token_type)]
        if self.requested_token_type is not None:
            params.append(("requested_token_type", self.requested_token_type))
        return params


@dataclass(frozen=True)
class TokenRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Style:
    """How one request presents itself: where the client authenticates, how the body is
    encoded. ``auto`` settings try more than one and remember what worked."""

    auth: AuthStyle
    wire: WireFormat

    def __str__(self) -> str:
        return f"{self.auth} auth, {self.wire} body"


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: encode id and secret *before* base64 (requests' auth does not).

    Percent-encoding with ``quote(safe="")``, not ``quote_plus``: a space must become
    ``%20``, which servers that form-decode (``+`` is a space) and servers that URL-decode
    (``+`` stays a plus, as Authlib does) both read back as a space.
    """
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def basic_encoding_changes(client_id: str, client_secret: str) -> bool:
    """Whether Basic auth's encoding alters the id or secret: then a server that does not
    decode Basic credentials (several do not) sees something else than was configured."""
    return quote(client_id, safe="") != client_id or quote(client_secret, safe="") != client_secret


def build_request(
    cred: CredentialConfig,
    *,
    client_id: str,
    client_secret: str | None,
    style: Style,
    refresh_token: str | None = None,
    token_url: str | None = None,
    client_assertion: str | None = None,
    exchange: ExchangeTokens | None = None,
    grant_assertion: str | None = None,
) -> TokenRequest:
    """The request for ``style``: ``token_url`` is the discovered endpoint when the
    credential names an issuer; ``client_assertion`` the signed JWT of private_key_jwt;
    ``exchange`` the subject (and actor) token of a token exchange, read for this request;
    ``grant_assertion`` the JWT of the JWT-bearer grant (read, or signed, for this request)."""
    params: list[tuple[str, str]] = []
    if refresh_token is not None:
        params += [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
    else:
        if cred.grant_type == "token_exchange":
            if exchange is None:
                raise ValueError("token exchange needs its subject token")
            params += exchange.params()
        elif cred.grant_type == "jwt_bearer":
            if grant_assertion is None:
                raise ValueError("the JWT-bearer grant needs its JWT")
            params += [("grant_type", JWT_BEARER), ("assertion", grant_assertion)]
        else:
            params.append(("grant_type", "client_credentials"))
        if cred.scope_string and not (cred.grant_type == "jwt_bearer" and cred.assertion_scope_claim):
            params.append(("scope", cred.scope_string))  # (else it is a claim of the JWT)
        params += cred.extra_params
    headers = {
        "Accept": "application/json",
        "User-Agent": f"tokend/{__version__}",
        "Cache-Control": "no-store",
    }
    if style.auth == "private_key_jwt":
        if client_assertion is None:
            raise ValueError("private_key_jwt needs a client assertion")
        # RFC 7523 §2.2; client_id too (RFC 7521 §4.2 allows it, Entra ID wants it).
        params += [
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", client_assertion),
        ]
    elif style.auth == "tls_client_auth":
        params.append(("client_id", client_id))  # RFC 8705 §2: the certificate does the rest
    elif style.auth == "none":
        # A public client names itself in a token exchange (RFC 6749 §3.2.1), the subject
        # token being the proof; a JWT-bearer grant names it in the JWT's iss (RFC 7523 §3).
        if cred.grant_type != "jwt_bearer":
            params.append(("client_id", client_id))
    elif client_secret is None:
        raise ValueError(f"{style.auth} auth needs a client secret")
    elif style.auth == "basic":
        headers["Authorization"] = basic_credentials(client_id, client_secret)
    else:
        params += [("client_id", client_id), ("client_secret", client_secret)]
    if style.wire == "json":
        headers["Content-Type"] = "application/json"
        body = json.dumps(json_params(params)).encode("utf-8")
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(params).encode("ascii")  # a repeated name is sent repeated
    url = token_url or cred.token_url
    if url is None:
        raise ValueError("no token endpoint: discover it from the issuer first")
    return TokenRequest(url, headers, body)


def json_params(params: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    """A JSON body: a name given more than once becomes an array (RFC 8707 ``resource``)."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}
