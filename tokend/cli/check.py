"""``tokend check``: every problem of a config and of the machine it runs on, one line
each (secrets, keys, sink directories, owners, hooks, the state directory, the Redis
password, aiohttp for the local servers); ``--online`` asks the identity provider and Redis too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.cli.selection import select
from tokend.config import Config, ConfigError, CredentialConfig, shown_url
from tokend.core.exit_codes import ExitCode
from tokend.io.secret_sources import read_secret

if TYPE_CHECKING:
    from tokend.io.token_client import TokenClient


def cmd_check(config: Config, *, online: bool) -> int:
    """Report every problem found, one line each, instead of stopping at the first."""
    select(config, ())  # none at all: exit 78, it is almost surely the wrong file
    problems: list[str] = []
    secrets: dict[str, tuple[str, str | None]] = {}
    for cred in config.credentials.values():
        try:
            ref = cred.client_secret
            secrets[cred.name] = (read_secret(cred, cred.client_id), read_secret(cred, ref) if ref else None)
        except ConfigError as exc:
            problems.append(str(exc))
        problems.extend(check_keys(cred))
        problems.extend(check_paths(cred))
    problems.extend(check_state_dir(config))
    problems.extend(check_fleet_password(config))
    problems.extend(check_local_servers(config))
    problems.extend(check_socket_directories(config))
    for problem in problems:
        print(f"tokend: {problem}", file=sys.stderr)
    if problems:
        return ExitCode.CONFIG
    for cred in config.credentials.values():
        print(
            f"ok: {cred.name}: {shown_url(cred.token_url) if cred.token_url else f'issuer {cred.issuer}'} "
            f"({cred.request_format}, {cred.client_auth}), "
            f"{len(cred.sinks)} sink{'s' if len(cred.sinks) != 1 else ''}"
        )
    return check_online(config, secrets) if online else ExitCode.OK


def check_keys(cred: CredentialConfig) -> list[str]:
    """The private key and client certificate parse, suit signing_alg and belong together;
    the platform's client assertion file holds one JWT (an expired one is warned about)."""
    import time

    from tokend.core.assertion import assertion_expired
    from tokend.io.token_client import key_auth

    try:
        keys = key_auth(cred)
    except ConfigError as exc:
        return [str(exc)]
    if keys.platform is not None and assertion_expired(keys.platform, time.time()):
        # Not a config error: the platform rotates the file; until then nothing is sent.
        print(
            f"tokend: warning: {cred.name}: {keys.platform_file}: the client assertion has expired "
            f"(exp {keys.platform.exp}); tokend sends nothing until the platform writes a fresh one",
            file=sys.stderr,
        )
    return []


def check_paths(cred: CredentialConfig) -> list[str]:
    import shutil

    from tokend.io.hooks import read_pid_file
    from tokend.io.sinks import SinkError, resolve_owner, unsafe_path

    problems = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{cred.source}: {cred.where(key)}: {message}")

    for i, sink in enumerate(cred.sinks):
        directory = sink.path.parent
        if not directory.is_dir():
            problem(f"sink[{i}].path", f"directory {directory} does not exist")
        elif not os.access(directory, os.W_OK | os.X_OK):
            problem(f"sink[{i}].path", f"directory {directory} is not writable")
        elif (reason := unsafe_path(sink)) is not None:
            problem(
                f"sink[{i}].path",
                f"{sink.path} {reason}" if reason.startswith("is ") else f"{sink.path}: {reason}",
            )
        try:
            resolve_owner(sink)
        except SinkError as exc:
            key = "owner" if exc.reason.startswith("owner") else "group"
            problem(f"sink[{i}].{key}", exc.reason)
    if cred.ca_bundle is not None and not os.access(cred.ca_bundle, os.R_OK):
        problem("ca_bundle", f"{cred.ca_bundle}: cannot read")
    hook = cred.on_rotate
    if hook is not None and hook.command and shutil.which(hook.command[0]) is None:
        problem("on_rotate.command", f"{hook.command[0]!r}: no such program")
    if hook is not None and hook.pid_file is not None and hook.pid_file.exists():
        try:
            read_pid_file(hook.pid_file)
        except ValueError as exc:
            problem("on_rotate.pid_file", f"{hook.pid_file}: {exc}")
    return problems


def check_state_dir(config: Config) -> list[str]:
    directory = config.state_dir
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"{config.path}: tokend.state_dir: {directory} cannot be created or written"]
    return []


def check_online(config: Config, secrets: dict[str, tuple[str, str | None]]) -> int:
    from tokend.core.token_response import TokenRequestError
    from tokend.io.token_client import TokenClient

    client = TokenClient()
    worst = ExitCode.OK
    try:
        for cred in config.credentials.values():
            client_id, secret = secrets[cred.name]
            try:
                if cred.issuer is not None:
                    show_discovery(client, cred, config.state_dir)
                answer = client.obtain(
                    cred, client_id=client_id, client_secret=secret, state_dir=config.state_dir
                )
            except TokenRequestError as exc:
                url = shown_url(cred.token_url or cred.issuer or "")
                print(f"tokend: {cred.name}: {url}: {exc}", file=sys.stderr)
                worst = max(worst, ExitCode.FAILED)
                continue
            except ConfigError as exc:  # discovery refused the issuer's metadata
                print(f"tokend: {exc}", file=sys.stderr)
                worst = ExitCode.CONFIG
                continue
            token = answer.token
            print(
                f"online: {cred.name}: token {token.fingerprint}, {token.token_type}, "
                f"valid {round(token.lifetime)}s ({answer.style}){dpop_words(cred)}"
                + (f", issued as {token.issued_token_type}" if token.issued_token_type else "")
            )
    finally:
        client.close()
    return max(worst, check_fleet(config))


def dpop_words(cred: CredentialConfig) -> str:
    """The key a DPoP token is bound to, by its RFC 7638 thumbprint (public: it is the
    token's ``cnf.jkt``, what the IdP's introspection shows), never the key."""
    if not cred.dpop:
        return ""
    from tokend.io.dpop import credential_key

    return f", bound to DPoP key {credential_key(cred).thumbprint}"


def check_socket_directories(config: Config) -> list[str]:
    """Each unix socket's directory, judged as ``run`` judges it when it binds (where a
    refusal is only logged, the tokens going on): better said before the start."""
    from tokend.io.files import socket_directory_problem

    listeners = [("endpoint.listen", config.endpoint.listen)] if config.endpoint is not None else []
    for cred in config.credentials.values():
        listeners += [(cred.where(f"proxy[{i}].listen"), p.listen) for i, p in enumerate(cred.proxies)]
    problems = []
    for where, listen in listeners:
        if listen.path is None or listen.fd_name is not None:
            continue
        directory = listen.path.parent
        reason = (
            f"directory {directory} does not exist"
            if not directory.is_dir()
            else socket_directory_problem(directory)
        )
        if reason is not None:
            problems.append(f"{config.path}: {where}: {reason}")
    return problems


def check_local_servers(config: Config) -> list[str]:
    """``[endpoint]`` or a proxy without aiohttp installed: ``run`` would exit 78 on it, so
    ``check`` says so, as it does for ``[fleet]``'s libraries (aiohttp is imported only
    for a config that has a local server)."""
    if not config.serves_http():
        return []
    from tokend.daemon.local_mode import http_imports

    try:
        http_imports(config)
    except ConfigError as exc:
        return [str(exc)]
    return []


def check_fleet_password(config: Config) -> list[str]:
    """Offline too: the Redis password can be read (``run`` would exit 78 on it)."""
    if config.fleet is None:
        return []
    from tokend.io.fleet_secret import read_password, read_sentinel_password

    try:
        read_password(config.fleet, config.path, os.environ)
        read_sentinel_password(config.fleet, config.path, os.environ)
    except ConfigError as exc:
        return [str(exc)]
    return []


def check_fleet(config: Config) -> int:
    """``--online`` with ``[fleet]``: Redis answers a PING with the configured password."""
    if config.fleet is None:
        return ExitCode.OK
    from tokend.daemon.fleet_mode import fleet_imports

    fleet_imports(config.path)
    from tokend.io.fleet_secret import read_password, read_sentinel_password
    from tokend.io.fleet_store import FleetStore, RedisDown

    store = FleetStore(
        config.fleet,
        read_password(config.fleet, config.path, os.environ),
        read_sentinel_password(config.fleet, config.path, os.environ),
    )
    try:
        store.ping()
        primary = store.primary()
    except RedisDown as exc:
        print(f"tokend: fleet: {config.fleet.shown()}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        store.close()
    shown = config.fleet.shown() + (f" (primary {primary})" if primary else "")
    print(f"online: fleet: Redis {shown} answers")
    return ExitCode.OK


def show_discovery(client: TokenClient, cred: CredentialConfig, state_dir: Path) -> None:
    """What the issuer's metadata says (fetched now), and a warning for each setting of
    the credential it does not list as supported."""
    from tokend.core.discovery import discovery_warnings
    from tokend.io.token_client import key_auth

    keys = key_auth(cred)
    found, _ = client.discover(cred, state_dir, refresh=True, tls=keys.tls)  # the certificate too
    endpoint = found.endpoint(mtls=keys.tls is not None)
    methods = ", ".join(found.auth_methods) if found.auth_methods is not None else "not listed"
    print(
        f"discovered: {cred.name}: issuer {found.issuer}: "
        f"token endpoint {shown_url(endpoint)}; auth methods: {methods}"
    )
    for warning in discovery_warnings(found, cred.client_auth, keys.signer.alg if keys.signer else None):
        print(f"tokend: warning: {cred.name}: {warning}", file=sys.stderr)
