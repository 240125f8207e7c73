"""What makes two tokens interchangeable: the key of the token cache.

Standard library only, and fed plain values: ``tokend token``'s fast path computes it from
the raw TOML without loading the config, and the daemon from a validated credential. Both
must give the same key, so the normalisation lives here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from tokend.core.limits import DEFAULT_EXPIRES_IN


def cache_key(
    token_url: str | None,
    client_id: str,
    scope: Iterable[str],
    params: Iterable[tuple[str, str]],
    default_expires_in: float = DEFAULT_EXPIRES_IN,
    issuer: str | None = None,
    tls_cert: str | None = None,
    dpop_jkt: str | None = None,
    grant: str = "client_credentials",
    subject_token: str | None = None,
    actor_token: str | None = None,
    requested_token_type: str | None = None,
    assertion: str | None = None,
    assertion_subject: str | None = None,
) -> str:
    """Endpoint, client, scope and parameters, never the secret: renaming a credential
    keeps its token, and two credentials asking for the same thing share one.

    ``params`` are the extra body parameters as sorted (name, value) pairs. The default
    lifetime counts only when it is not the default, so caches written before it counted
    stay valid.

    ``issuer`` is given instead of ``token_url`` when the endpoint is discovered: the
    issuer, not whatever endpoint its metadata names today, says whose token it is. It is
    tagged, so that no configuration by token_url can ever give the same key.

    ``tls_cert`` is the SHA-256 thumbprint of the client certificate (hex), read when the
    key is wanted: an IdP binds the token to the certificate that asked for it (RFC 8705
    §3), so two credentials with different certificates, or one whose certificate was
    replaced, must not share a token. Also tagged; without one the key is as before.

    ``dpop_jkt`` is the DPoP key's RFC 7638 thumbprint: a DPoP token is bound to one key.

    Another grant than client credentials (a token exchange, the JWT-bearer grant) counts
    with where its tokens come from (``"file:PATH"``, ``"credential:NAME"``: a rotated file
    is the same workload, another file another one), the token type asked for and whom a
    JWT tokend signs is about. Tagged too; a client credentials grant's key is as before.
    """
    identity: list[object] = [token_url, client_id, sorted(scope), [list(p) for p in params]]
    if default_expires_in != DEFAULT_EXPIRES_IN or issuer is not None:
        identity.append(default_expires_in)
    if issuer is not None:
        identity.append({"issuer": issuer})
    if tls_cert is not None:
        identity.append({"tls_cert_sha256": tls_cert})
    if dpop_jkt is not None:
        identity.append({"dpop_jkt": dpop_jkt})
    if grant != "client_credentials":
        identity.append(
            {
                "grant": grant,
                "subject_token": subject_token,
                "actor_token": actor_token,
                "requested_token_type": requested_token_type,
                "assertion": assertion,
                "assertion_subject": assertion_subject,
            }
        )
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()[:32]
