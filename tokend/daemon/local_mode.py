"""Whether the local servers (``[endpoint]``, the proxies) can run here, and opening them:
light at import (no aiohttp), so ``tokend check`` says what is missing and a daemon
without them never loads it. As :mod:`tokend.daemon.fleet_mode` is for ``[fleet]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tokend.config import Config, ConfigError
from tokend.config.schema import Listen
from tokend.daemon.token_board import TokenBoard
from tokend.io.socket_activation import Activation

if TYPE_CHECKING:
    from aiohttp import web

    from tokend.io.local_http import LocalHttp
    from tokend.io.proxy import RequestMetrics


def first_listener(config: Config) -> str:
    """The dotted key of the first local server in ``config``, to name in an error."""
    if config.endpoint is not None:
        return "endpoint"
    for cred in config.credentials.values():
        if cred.proxies:
            return cred.where("proxy[0]")
    return "endpoint"


def http_imports(config: Config) -> None:
    """aiohttp, or the one-line config error that says how to get it."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError(
            config.path,
            "the endpoint and proxies need aiohttp: pip install 'tokend[proxy]'",
            where=first_listener(config),
        ) from None


def local_sites(config: Config) -> tuple[object, ...]:
    """What the local servers are made of: when it changes, only a restart applies it."""
    proxies = tuple((name, cred.proxies, cred.ca_bundle) for name, cred in config.credentials.items())
    return (config.endpoint, tuple(p for p in proxies if p[1]))


def local_servers(
    config: Config, board: TokenBoard, environ: Mapping[str, str], metrics: RequestMetrics | None = None
) -> LocalHttp | None:
    """The token endpoint and the proxies, when the config has any (only then is aiohttp
    imported: ``tokend[proxy]``); a listener that cannot open is logged and left out.
    Sockets systemd passed are taken here, once: those no listener names are closed, even
    when there is no listener at all."""
    activation = Activation.from_environ(environ)
    if not config.serves_http():
        activation.close_rest()
        return None
    from tokend.io.local_http import LocalHttp, Site
    from tokend.io.proxy import Proxy
    from tokend.io.token_endpoint import endpoint_app

    local = LocalHttp()
    board.subscribe(local.changes.notify)
    sites: list[Site] = []
    endpoint = config.endpoint
    if endpoint is not None:
        log_requests = endpoint.access_log
        sites.append(
            Site(
                "endpoint",
                endpoint.listen,
                lambda listen: endpoint_app(board, listen, log_requests=log_requests),
                endpoint.socket_mode,
                endpoint.socket_owner,
                endpoint.socket_group,
            )
        )
    for name, cred in config.credentials.items():
        for i, proxy in enumerate(cred.proxies):

            def make_proxy(
                listen: Listen, name: str = name, upstream: str = proxy.upstream, log: bool = proxy.access_log
            ) -> web.Application:
                # One Proxy per socket: its guards compare Host with the address it serves.
                return Proxy(
                    board,
                    local.changes,
                    name,
                    upstream,
                    listen,
                    ca_bundle=config.credentials[name].ca_bundle,
                    log_requests=log,
                    dpop=config.credentials[name] if config.credentials[name].dpop else None,
                    metrics=metrics,
                ).app()

            sites.append(
                Site(
                    f"proxy {name}[{i}]",
                    proxy.listen,
                    make_proxy,
                    proxy.socket_mode,
                    proxy.socket_owner,
                    proxy.socket_group,
                )
            )
    local.start(sites, activation)
    return local
