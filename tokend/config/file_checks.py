"""What a config reads of the filesystem: the config file itself, and the safety of the
files it names, judged on the files themselves: no sink or metrics textfile on a file
tokend reads secrets from, keeps for itself or already writes, and every ``template_file``
read (from the descriptor that was judged) and checked.

The one module of :mod:`tokend.config` that looks at the filesystem (it stats, resolves
and reads), through :mod:`tokend.io.files`; every refusal is a :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from tokend.config.errors import ConfigError
from tokend.config.schema import CredentialConfig, EndpointConfig, FleetConfig
from tokend.core.limits import MAX_CONFIG_BYTES
from tokend.core.templates import MAX_TEMPLATE_BYTES
from tokend.core.templates import check as check_template
from tokend.io.files import (
    OpenedFile,
    UnreadableFile,
    kernel_file,
    read_regular,
    read_small,
    trusted_uids,
    unsafe_directory_chain,
    untrusted_writer,
)


def read_config(path: Path) -> bytes:
    """At most ``MAX_CONFIG_BYTES + 1`` bytes of the config file, a regular file (a FIFO or
    a device is never read; the caller judges "too large"). Raises OSError."""
    return read_regular(path, MAX_CONFIG_BYTES)


def read_config_and_mode(path: Path) -> tuple[bytes, int | None]:
    """:func:`read_config`, and the mode of the file the bytes came from (its descriptor's,
    not the path's: the file judged is the file read)."""
    opened: list[OpenedFile] = []
    raw = read_regular(path, MAX_CONFIG_BYTES, lambda file: opened.append(file))
    return raw, opened[0].st.st_mode if opened else None


# A protected file by its real path, and by (st_dev, st_ino) when it exists: a hard link
# to a secret has a path of its own, and only the inode says it is the same file.
Protected = dict[str | tuple[int, int], str]


def protected_files(
    file: Path,
    credentials: Iterable[CredentialConfig],
    environ: Mapping[str, str],
    fleet: FleetConfig | None = None,
) -> Protected:
    """The files tokend reads secrets from, each with what it is (see :func:`protected_as`)."""
    protected: Protected = {}

    def add(path: Path | str, what: str) -> None:
        protected[os.path.realpath(path)] = what
        with contextlib.suppress(OSError, ValueError):
            st = Path(path).stat()
            protected[(st.st_dev, st.st_ino)] = what

    add(file, "the config file")
    for cred in credentials:
        for path in cred.files():
            add(path, f"a file {cred.where('')[:-1]} reads")
        directory = environ.get("CREDENTIALS_DIRECTORY")
        for ref in cred.secret_refs():
            if ref.source == "credential" and directory:
                add(Path(directory) / ref.value, "a systemd credential")
    if fleet is not None and fleet.password_file is not None:
        add(fleet.password_file, "[fleet]'s password_file")
    if fleet is not None and fleet.sentinel_password_file is not None:
        add(fleet.sentinel_password_file, "[fleet]'s sentinel_password_file")
    return protected


def protected_as(protected: Protected, path: Path | str) -> str | None:
    """What a protected file ``path`` is (by its real path, or as a hard link), or None."""
    what = protected.get(os.path.realpath(path))
    if what is None:
        with contextlib.suppress(OSError, ValueError):
            st = Path(path).stat()
            what = protected.get((st.st_dev, st.st_ino))
    return what


def check_sink_paths(
    file: Path,
    credentials: Iterable[CredentialConfig],
    state_dir: Path,
    environ: Mapping[str, str],
    metrics_textfile: Path | None = None,
    *,
    fleet: FleetConfig | None = None,
) -> None:
    """No two files tokend writes (sinks, the metrics textfile) on one path, and none on a
    file tokend reads or keeps for itself: a sink on the secret file would overwrite the
    secret with the access token, a metrics textfile there would do it once a second."""
    credentials = tuple(credentials)
    protected = protected_files(file, credentials, environ, fleet)
    state = os.path.realpath(state_dir)
    seen: dict[str, str] = {}
    for cred in credentials:
        for i, sink in enumerate(cred.sinks):
            where = cred.where(f"sink[{i}].path")
            real = os.path.realpath(sink.path)
            if real in seen:
                raise ConfigError(file, f"{sink.path} is already written by {seen[real]}", where=where)
            if (what := protected_as(protected, sink.path)) is not None:
                raise ConfigError(
                    file,
                    f"{sink.path} is {what}; a sink there would overwrite it with the access token",
                    where=where,
                )
            if real == state or real.startswith(state + os.sep):
                raise ConfigError(file, f"{sink.path} is inside the state directory {state_dir}", where=where)
            seen[real] = where
    if metrics_textfile is not None:
        real = os.path.realpath(metrics_textfile)
        taken = protected_as(protected, metrics_textfile) or (
            f"written by {seen[real]}" if real in seen else None
        )
        if taken is not None:
            raise ConfigError(
                file,
                f"{metrics_textfile} is {taken}; tokend would overwrite it",
                where="tokend.metrics_textfile",
            )


def check_socket_paths(
    file: Path,
    endpoint: EndpointConfig | None,
    credentials: Iterable[CredentialConfig],
    state_dir: Path,
    environ: Mapping[str, str],
    *,
    fleet: FleetConfig | None = None,
) -> None:
    """A unix socket tokend listens on is never a file it reads, writes or keeps: binding
    replaces only a stale socket, but a config naming the secret file is a mistake to say
    at load. (Its directory is judged when it is bound, as a sink's is when written.)"""
    credentials = tuple(credentials)
    sockets = [("endpoint.listen", endpoint.listen.path)] if endpoint is not None else []
    for cred in credentials:
        sockets.extend((cred.where(f"proxy[{i}].listen"), p.listen.path) for i, p in enumerate(cred.proxies))
    if not any(path is not None for _, path in sockets):
        return
    protected = protected_files(file, credentials, environ, fleet)
    sinks = {os.path.realpath(sink.path): cred.where("sink") for cred in credentials for sink in cred.sinks}
    state = os.path.realpath(state_dir)
    for where, path in sockets:
        if path is None:
            continue
        real = os.path.realpath(path)
        taken = protected_as(protected, path) or (f"a sink of {sinks[real]}" if real in sinks else None)
        if taken is None and (real == state or real.startswith(state + os.sep)):
            taken = f"inside the state directory {state_dir}"
        if taken is not None:
            raise ConfigError(file, f"{path} is {taken}; a socket cannot go there", where=where)


def read_template_files(
    file: Path,
    credentials: Mapping[str, CredentialConfig],
    state_dir: Path,
    environ: Mapping[str, str],
    metrics_textfile: Path | None = None,
    *,
    fleet: FleetConfig | None = None,
) -> dict[str, CredentialConfig]:
    """The credentials with every ``template_file`` read and checked into ``template_text``.

    A template's text goes into a file others read, so it must not be one that holds what
    they must not see (the config, a secret, the token cache, a file tokend writes: the
    placeholders exist so that nothing else can get in) and no one but tokend's user or
    root may be able to change it or redirect it (they would choose what the consumer
    does with the token). Checked before reading, so that a refusal never quotes it.
    """
    protected = protected_files(file, credentials.values(), environ, fleet)
    written = {os.path.realpath(s.path) for c in credentials.values() for s in c.sinks}
    if metrics_textfile is not None:
        written.add(os.path.realpath(metrics_textfile))
    state = os.path.realpath(state_dir)
    read: dict[str, CredentialConfig] = {}
    for name, cred in credentials.items():
        sinks = list(cred.sinks)
        for i, sink in enumerate(sinks):
            if sink.template_file is None:
                continue
            where = cred.where(f"sink[{i}].template_file")
            path = Path(os.path.normpath(sink.template_file))
            try:
                text = _template_text(path, protected, written, state, sink.allow_shared_dir)
            except ValueError as exc:
                raise ConfigError(file, f"{path}: {exc}", where=where) from None
            sinks[i] = replace(sink, template_file=path, template_text=text)
        read[name] = replace(cred, sinks=tuple(sinks)) if sinks != list(cred.sinks) else cred
    return read


def _template_text(path: Path, protected: Protected, written: set[str], state: str, shared: bool) -> str:
    """The checked text of one template file; ValueError says why not.

    Judged on the open descriptor (what it is, where the kernel opened it), then read from
    it: a symlink flipped between a look at the path and the read would otherwise let
    whoever may edit the template render the client secret into the sink."""

    def by_path(real: str, what: str | None) -> str | None:
        if what is not None:
            return f"is {what}; a template there would copy it into the sink"
        if real in written:
            return "is a file tokend writes; a template must be a file of its own"
        if real == state or real.startswith(state + os.sep):
            return "is inside the state directory, which holds refresh tokens"
        return None

    def judge(opened: OpenedFile) -> str | None:
        real = opened.real
        what = protected.get((opened.st.st_dev, opened.st.st_ino)) or protected.get(real)
        if (reason := by_path(real, what)) is not None:
            return reason
        if kernel_file(opened):
            return "is a kernel file, not a template"
        if shared:
            return None
        # Where the path is, and where it led: a symlink into a directory someone else
        # can change would let them swap the target after this check.
        chain = unsafe_directory_chain(path.parent) or unsafe_directory_chain(Path(real).parent)
        owner = untrusted_writer(opened.st, trusted_uids())
        reason = f"directory path is not safe: {chain}" if chain else f"is {owner}" if owner else None
        if reason:
            return (
                f"{reason} (someone else could choose what the sink says; fix the modes, "
                "or set allow_shared_dir = true to accept it)"
            )
        return None

    # First by name, for what need not exist yet (a sink not written so far), then on the
    # open file.
    if (reason := by_path(os.path.realpath(path), protected_as(protected, path))) is not None:
        raise ValueError(reason)
    try:
        raw = read_small(
            path, MAX_TEMPLATE_BYTES, limit_words=f"{MAX_TEMPLATE_BYTES // 1024} KiB", judge=judge
        )
    except UnreadableFile as exc:
        raise ValueError(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"line {line}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ValueError("is empty")
    if "\0" in text:
        raise ValueError(f"line {text.count(chr(10), 0, text.index(chr(0))) + 1}: contains a NUL byte")
    check_template(text)  # a TemplateError is a ValueError: "line N: unknown placeholder ..."
    return text
