"""Discovery, the pure part: where an issuer's metadata may be (OIDC Discovery, RFC 8414),
judging a metadata document for the configured issuer, when it is stale, and what it says
a credential's settings will not get. Fetching and keeping it is :mod:`tokend.io.discovery`'s.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

DISCOVERY_MAX_AGE = 86400.0  # metadata is fetched again after a day (or on a 404)
# What each client_auth is called in token_endpoint_auth_methods_supported.
AUTH_METHOD_NAMES: Mapping[str, tuple[str, ...]] = {
    "basic": ("client_secret_basic",),
    "body": ("client_secret_post",),
    "auto": ("client_secret_basic", "client_secret_post"),
    "private_key_jwt": ("private_key_jwt",),
    "tls_client_auth": ("tls_client_auth",),
    "none": ("none",),  # RFC 8414 §2: a public client
}


@dataclass(frozen=True)
class Discovered:
    """What tokend uses of an authorization server's metadata (RFC 8414 §2)."""

    issuer: str
    token_endpoint: str
    mtls_token_endpoint: str | None = None
    auth_methods: tuple[str, ...] | None = None  # token_endpoint_auth_methods_supported
    signing_algs: tuple[str, ...] | None = None  # token_endpoint_auth_signing_alg_values_supported
    dpop_algs: tuple[str, ...] | None = None  # dpop_signing_alg_values_supported (RFC 9449 §5.1)

    def endpoint(self, *, mtls: bool) -> str:
        """RFC 8705 §5: with a client certificate, the mTLS alias when there is one."""
        return self.mtls_token_endpoint if mtls and self.mtls_token_endpoint else self.token_endpoint

    def to_dict(self) -> dict[str, object]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "mtls_endpoint_aliases": {"token_endpoint": self.mtls_token_endpoint}
            if self.mtls_token_endpoint
            else {},
            "token_endpoint_auth_methods_supported": self.auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": self.signing_algs,
            "dpop_signing_alg_values_supported": self.dpop_algs,
        }


class BadMetadata(ValueError):
    """Metadata that cannot be used: not for this issuer, or without a token endpoint."""


def well_known_urls(issuer: str) -> tuple[str, ...]:
    """Where the metadata may be, in order: OpenID Connect Discovery's (appended to the
    issuer), RFC 8414's (inserted between host and path), and the appended RFC 8414 form
    that some servers use for an issuer with a path."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = issuer.rstrip("/")
    urls = [
        f"{base}/.well-known/openid-configuration",
        urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", "")),
        f"{base}/.well-known/oauth-authorization-server",
    ]
    return tuple(dict.fromkeys(urls))


MAX_METADATA_NAMES = 32  # of a list in the metadata: more is a server to distrust, not to print
MAX_METADATA_NAME = 64


def _strings(value: object) -> tuple[str, ...] | None:
    """A metadata list of names (auth methods, algorithms): only the names that are
    printable ASCII words, at most 32 of them. They end up on a terminal (``check
    --online``) and in logs, and a name with an escape sequence in it is no name."""
    if not isinstance(value, list):
        return None
    names = (
        v
        for v in value
        if isinstance(v, str) and 0 < len(v) <= MAX_METADATA_NAME and all("!" <= c <= "~" for c in v)
    )
    return tuple(itertools.islice(names, MAX_METADATA_NAMES))


def parse_metadata(data: object, issuer: str) -> Discovered:
    """Judge a metadata document for ``issuer``. The issuer in it must be the configured
    one *exactly* (RFC 8414 §3.3, OIDC Discovery §4.3): metadata served for another
    issuer (a mix-up, a hostile host) must never give tokend a token endpoint."""
    if not isinstance(data, dict):
        raise BadMetadata("the metadata is not a JSON object")
    found = data.get("issuer")
    if found != issuer:
        shown = repr(found)[:120] if isinstance(found, str) else "none"
        raise BadMetadata(f"the metadata is for issuer {shown}, not {issuer!r}")
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BadMetadata("the metadata names no token_endpoint")
    aliases = data.get("mtls_endpoint_aliases")
    mtls = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
    return Discovered(
        issuer=issuer,
        token_endpoint=endpoint,
        mtls_token_endpoint=mtls if isinstance(mtls, str) and mtls else None,
        auth_methods=_strings(data.get("token_endpoint_auth_methods_supported")),
        signing_algs=_strings(data.get("token_endpoint_auth_signing_alg_values_supported")),
        dpop_algs=_strings(data.get("dpop_signing_alg_values_supported")),
    )


def metadata_is_stale(fetched_at: float, now: float) -> bool:
    """Fetched more than a day ago (or in the future: a clock that was wrong)."""
    return not fetched_at <= now < fetched_at + DISCOVERY_MAX_AGE


def discovery_warnings(found: Discovered, client_auth: str, alg: str | None = None) -> list[str]:
    """What the metadata says this credential's settings will not get: worth a warning,
    not a refusal (the list is optional and servers accept more than they advertise)."""
    warnings = []
    names = AUTH_METHOD_NAMES.get(client_auth, (client_auth,))
    if found.auth_methods is not None and not any(name in found.auth_methods for name in names):
        supported = ", ".join(found.auth_methods) or "none"
        warnings.append(
            f'client_auth = "{client_auth}" ({" or ".join(names)}) is not in the issuer\'s '
            f"token_endpoint_auth_methods_supported ({supported})"
        )
    if alg is not None and found.signing_algs is not None and alg not in found.signing_algs:
        warnings.append(
            f"signing alg {alg} is not in the issuer's token_endpoint_auth_signing_alg_values_supported "
            f"({', '.join(found.signing_algs) or 'none'})"
        )
    return warnings
