"""The URLs a config may give: a token endpoint or issuer (https, or http to this machine)
and ``[fleet] redis_url``; and a URL as tokend prints it. Pure: nothing is resolved or
fetched. None of these repeats a URL's text in a refusal: what was pasted into it (a
password, a secret in place of a port) would reach logs and ``tokend status``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    import ipaddress  # only http:// URLs get here

    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse anything but https, except http to this machine (or when asked explicitly)."""
    if "@" in url.split("?", 1)[0].split("#", 1)[0]:
        # Before anything that would echo the URL: "ftp://user:pass@host" must not be shown.
        raise ValueError(
            "must not carry credentials (user:password@) in the URL; use client_id / client_secret"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    # The URL itself is not repeated in these errors: whatever was pasted in it (a secret
    # in place of a port, say) would reach logs and `tokend status`.
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # .port raises on a port out of range
    except ValueError:
        raise ValueError("is not a valid URL (a port that is not a number?)") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ValueError("is not an http(s) URL with a host")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(hostname):
        raise ValueError(
            f"http://{hostname}/… would send the client secret unencrypted; use https "
            "(http is only allowed to loopback hosts, or with allow_insecure_http = true)"
        )


def shown_url(url: str) -> str:
    """A URL as tokend prints it: no user or password, and no query or fragment (a query
    may carry ``client_secret=…``; which parameter is harmless is not ours to guess), an
    ellipsis where they were."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that cannot be shown)"
    host = f"[{host}]" if ":" in host else host
    tail = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{tail}"


REDIS_HOST_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``[fleet] redis_url``, or None; never the URL's text (a password
    typed in the wrong place must not reach a log). redis-py would let a query string
    override tokend's own settings (``?password=``, ``?socket_timeout=``,
    ``?ssl_cert_reqs=none``), so the only query allowed is ``?db=N``; a user or password
    in the URL is refused (``username`` and ``password_file`` say them). The host, port
    and database are checked here, so ``tokend check`` finds what would crash ``run``."""
    import ipaddress

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not contain whitespace or control characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        return "must be a redis://, rediss:// or unix:// URL"
    rest, _, query = rest.partition("?")
    if "@" in rest:
        # Not echoed: what sits before the @ is most often the password itself.
        return "must not carry a user or password (user:password@); use username and password_file"
    if "#" in url or "%" in url:
        return "must not contain '#' or percent-escapes"
    db = None
    if query:
        name, eq, value = query.partition("=")
        if name != "db" or not eq:
            return "may carry no query but ?db=N (others would override tokend's timeouts, password or TLS)"
        db = value
    if scheme.lower() == "unix":
        if not rest.startswith("/") or rest == "/":
            return "must name the socket's absolute path (unix:///run/redis/redis.sock)"
    else:
        netloc, slash, path = rest.partition("/")
        if slash and path:
            if db is not None:
                return "must give the database once, in the path or as ?db=N"
            db = path
        if netloc.startswith("["):
            host, bracket, after = netloc[1:].partition("]")
            try:
                valid = bool(bracket) and ipaddress.ip_address(host).version == 6
            except ValueError:
                valid = False
            if not valid:
                return "the host in brackets must be an IPv6 address ([::1])"
            if after and not after.startswith(":"):
                return "must be redis://HOST[:PORT][/DB]"
            port = after[1:] if after else None
        else:
            host, colon, port_text = netloc.partition(":")
            port = port_text if colon else None
            if not REDIS_HOST_RE.fullmatch(host):
                return "must name a host (a DNS name, an IPv4 address or [an IPv6 address])"
        if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return "the port must be a number from 1 to 65535"
    if db is not None and not (db.isascii() and db.isdigit() and len(db) <= 9):
        return "the database must be a number (redis://HOST:PORT/0)"
    return None


def host_port_problem(text: str) -> str | None:
    """What is wrong with one ``HOST:PORT`` (a Sentinel's address), or None; never the
    text itself. The host is a DNS name, an IPv4 address or ``[an IPv6 address]``."""
    import ipaddress

    if len(text) > 255 + 8 or any(ch.isspace() or not ch.isprintable() for ch in text):
        return "must be HOST:PORT, without whitespace or control characters"
    if "@" in text or "/" in text or "?" in text or "#" in text or "%" in text:
        return "must be HOST:PORT only (no scheme, user, password, path or query)"
    host, colon, port = text.rpartition(":")
    if not colon:
        return "must be HOST:PORT (the port is not optional: Sentinel's is usually 26379)"
    if host.startswith("["):
        try:
            valid = host.endswith("]") and ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            valid = False
        if not valid:
            return "the host in brackets must be an IPv6 address ([::1]:26379)"
    elif not REDIS_HOST_RE.fullmatch(host):
        return "must name a host (a DNS name, an IPv4 address or [an IPv6 address]) and a port"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (checked by :func:`host_port_problem`) as a host and a port."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
