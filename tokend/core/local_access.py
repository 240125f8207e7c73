"""The rules of tokend's local HTTP servers (the token endpoint and the proxies), pure.

Who may read a credential over a unix socket (by the caller's uid and gids, which the
kernel tells: SO_PEERCRED), what a TCP request must carry to be served (the guards
against a browser tricked into asking: SSRF and DNS rebinding), which headers a reverse
proxy passes on, when an upstream's 401 means the token was refused, and the token's
answer in its three formats. No IO here: :mod:`tokend.io.token_endpoint` and
:mod:`tokend.io.proxy` apply these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokend.core.health import CredentialStatus
from tokend.core.timestamps import rfc3339
from tokend.core.tokens import Token, authorization_scheme

FORMATS = ("json", "raw", "header")
TCP_FLAG = "X-Tokend-Request"  # as Vault's X-Vault-Request, GCE's Metadata-Flavor
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 (what a wildcard is, to compare)
# RFC 9110 §7.6.1 and the ones every proxy drops; Host and Authorization are the proxy's own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# "expect": tokend's own server answers the caller's 100-continue; forwarded, it made the
# upstream client wait for a 100 an upstream may never send.
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "content-length", "expect"}
# What a browser says of a request another site's page made it send (Fetch metadata).
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
_INVALID_TOKEN = re.compile(r'\berror\s*=\s*"?invalid_token"?', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a unix socket, as the kernel saw it connect."""

    pid: int
    uid: int
    gids: frozenset[int]  # its primary group and, where the kernel tells, its supplementary ones


@dataclass(frozen=True, slots=True)
class Access:
    """Who may read one credential: over the unix socket (besides root and tokend's user),
    and whether over TCP at all, where the caller is not known (``endpoint_tcp``). A DPoP
    credential's token is served only when it says so (``endpoint_dpop``): ``served``."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    tcp: bool = False
    served: bool = True


def may_read(access: Access | None, peer: Peer, own_uid: int) -> bool:
    """Root and tokend's own user always may; others by uid or by one of their groups.
    ``access`` None: no such credential (which answers the same as a refusal)."""
    if access is None or not access.served:
        return False
    if peer.uid in (0, own_uid):
        return True
    return peer.uid in access.uids or not access.gids.isdisjoint(peer.gids)


def may_read_over_tcp(access: Access | None) -> bool:
    """Over TCP nothing tells who asks: every local program that passes the guards is the
    same caller, so a credential is served there only when it opted in (``endpoint_tcp``);
    one that did not answers as one that does not exist."""
    return access is not None and access.served and access.tcp


def host_matches(host: str | None, listen_host: str, port: int) -> bool:
    """The ``Host`` a TCP request names is the address listened on (a page on another
    site that rebinds its name to 127.0.0.1 still sends its own name). On a wildcard
    address, any IP literal with the port: a literal cannot be rebound."""
    if not host:
        return False
    host = host.strip().lower()
    name, sep, given_port = host.rpartition(":")
    if not sep or given_port != str(port) or "]" in given_port:
        return False
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if name == listen_host.lower():
        return True
    if listen_host in WILDCARD_HOSTS:
        import ipaddress

        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


def own_origins(listen_host: str, port: int) -> frozenset[str]:
    """The origins of tokend's own listen address (a page it served, were it to serve any)."""
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    return frozenset({f"http://{host}:{port}".lower()})


def tcp_refusal(headers: Mapping[str, str], listen_host: str, port: int, *, need_flag: bool) -> str | None:
    """Why a request over TCP is refused, or None: a ``Host`` other than the listen
    address, a forwarding header (a request relayed from elsewhere), and, for the token
    endpoint, no ``X-Tokend-Request: true`` (which no HTML form or simple fetch can add)."""
    if not host_matches(headers.get("Host"), listen_host, port):
        return "the Host header must be the address tokend listens on"
    if "X-Forwarded-For" in headers or "Forwarded" in headers:
        return "forwarded requests are refused"
    # A page of any site can make a browser send a form, an image or a simple fetch to a
    # loopback port, with the right Host: its Origin and Sec-Fetch-Site say it came from
    # elsewhere, and a preflight says it is about to.
    origin = headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() not in own_origins(listen_host, port):
        return "requests from another site's page (Origin) are refused"
    if headers.get("Sec-Fetch-Site", "none").strip().lower() not in SAME_SITE_FETCH:
        return "requests from another site's page (Sec-Fetch-Site) are refused"
    if "Access-Control-Request-Method" in headers:
        return "cross-origin preflights are refused"
    if need_flag and headers.get(TCP_FLAG, "").strip().lower() != "true":
        return f"requests must carry {TCP_FLAG}: true"
    return None


VIA = "1.1 tokend"  # what the proxy adds to Via (RFC 9110 §7.6.3): a request back to itself is a loop
_DOT_SEGMENT = re.compile(r"^(?:\.|%2e){1,2}$", re.IGNORECASE)


def proxy_refusal(raw_path: str, headers: Iterable[tuple[str, str]]) -> tuple[int, str] | None:
    """Why the proxy refuses a request before it goes upstream, or None: a second ``Host``
    (two proxies could read two different ones), a dot-segment in the path (``/../``,
    ``/%2e%2e/``: the upstream would resolve it above the configured base path), or a
    ``Via`` that already names tokend (its upstream leads back to a tokend proxy: a loop
    that would eat every connection)."""
    items = list(headers)
    if sum(1 for name, _ in items if name.lower() == "host") > 1:
        return 400, "more than one Host header"
    path = raw_path.split("?", 1)[0]
    if any(_DOT_SEGMENT.match(segment) for segment in path.split("/")):
        return 400, "dot-segments (. and ..) in the path are refused"
    vias = (
        part.strip().lower() for name, value in items if name.lower() == "via" for part in value.split(",")
    )
    if any(part.endswith(" tokend") or part == "tokend" for part in vias):
        return 508, "the request came through a tokend proxy already: the upstream leads back to one"
    return None


def _without(items: Iterable[tuple[str, str]], dropped: frozenset[str] | set[str]) -> list[tuple[str, str]]:
    """``items`` less the headers named in ``dropped`` and those their Connection header
    names (RFC 9110 §7.6.1: hop-by-hop by the sender's word)."""
    items = list(items)
    named = {
        part.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for part in value.split(",")
    }
    return [(name, value) for name, value in items if name.lower() not in dropped | named]


def forwarded_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers as the proxy sends them upstream: hop-by-hop headers (and those
    its Connection header names), Host, Content-Length, Expect and the caller's own
    Authorization dropped (the proxy sets Host and Authorization; the body's framing and
    its 100-continue are its own)."""
    return _without(items, NOT_FORWARDED)


def response_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers as the caller gets them: hop-by-hop ones dropped."""
    return _without(items, HOP_BY_HOP)


def invalid_token(status: int, www_authenticate: Iterable[str]) -> bool:
    """An upstream's 401 that says the token itself was refused (RFC 6750 §3.1), which a
    new token may fix; any other 401 is the caller's to see."""
    return status == 401 and any(
        value.strip().lower().startswith(("bearer", "dpop")) and _INVALID_TOKEN.search(value)
        for value in www_authenticate
    )


def token_answer(token: Token, now: float, fmt: str) -> tuple[str, bytes]:
    """The endpoint's answer for a valid token: (content type, body). ``json`` as the json
    sink writes its fields; ``raw`` and ``header`` as the raw and header sinks' lines."""
    if fmt == "raw":
        return "text/plain", f"{token.access_token}\n".encode("ascii")
    if fmt == "header":
        return (
            "text/plain",
            f"Authorization: {authorization_scheme(token.token_type)} {token.access_token}\n".encode("ascii"),
        )
    body = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": rfc3339(token.expires_at),
        "expires_in": max(0, int(token.expires_at - now)),
    }
    return "application/json", json.dumps(body).encode("ascii")


def loggable_path(raw_target: str) -> str:
    """A request target as an access log shows it: the raw path as it came (never
    percent-decoded: a ``%0a`` stays three characters, so no caller can forge a log line),
    without the query (it may carry anything), every byte outside printable ASCII, and
    ``%`` itself when not an escape, written as ``%XX``."""
    path = raw_target.partition("?")[0]
    out = []
    for i, char in enumerate(path):
        escape = char == "%" and not re.fullmatch(r"%[0-9A-Fa-f]{2}", path[i : i + 3])
        if escape or not (0x21 <= ord(char) <= 0x7E) or char in '"\\':
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape")))
        else:
            out.append(char)
    return "".join(out)


def error_body(error: str, description: str) -> bytes:
    """A JSON error (never a token in it: callers pass fixed words and names)."""
    return json.dumps({"error": error, "error_description": description}).encode("utf-8")


def retry_after(next_refresh: float | None, now: float) -> int:
    """Seconds a caller should wait for a token: until the next attempt, 1 to 60."""
    if next_refresh is None:
        return 1
    return max(1, min(60, int(next_refresh - now + 0.999)))


class Board(Protocol):
    """What the local servers ask of the daemon's memory of its tokens
    (:class:`tokend.daemon.token_board.TokenBoard`); every method is thread-safe."""

    def token(self, name: str) -> Token | None:
        """The credential's current token, valid for a moment more; None: none valid."""

    def credential_status(self, name: str) -> CredentialStatus | None: ...

    def access(self, name: str) -> Access | None:
        """Who may read it over the unix socket, and whether over TCP; None: no such credential."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def refresh(self, name: str, stale: str) -> None:
        """The upstream refused the token ``stale``: ask for a new one (coalesced)."""

    def pending(self, name: str) -> bool:
        """Whether a refresh asked for is still to come."""

    def subscribe(self, notify: Callable[[str], None]) -> None:
        """``notify(name)`` after each attempt (from a worker thread)."""
