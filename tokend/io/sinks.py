"""The files other programs read: four formats and templates, each written atomically and
only on change.

Rendering is pure (:func:`render`); :func:`write_sink` is the IO edge. The refresh token
and the client secret have no way in: :func:`render` only sees what a reader needs, and a
template only the placeholders of :mod:`tokend.core.templates`.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from tokend.config import SinkConfig
from tokend.core import templates
from tokend.core.timestamps import rfc3339
from tokend.core.tokens import Token, authorization_scheme, unsafe_reason
from tokend.io.files import (
    ChownRefused,
    file_kind,
    seccomp_filtered,
    sweep_once,
    unsafe_directory_chain,
    write_atomic,
)


class SinkError(Exception):
    """A sink that could not be written; the previous file is still in place."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def render(token: Token, sink: SinkConfig) -> bytes:
    reason = unsafe_reason(token.access_token)
    if reason:  # the client rejects these already; this guards every other way in
        raise ValueError(f"access token {reason}")
    value = token.access_token
    if sink.format == "template":
        if sink.template_text is None:  # the config always fills it; a SinkError, never a crash
            raise ValueError("template sink without a template")
        # The template's own characters may be any UTF-8; the token's fields are ASCII.
        return templates.render(sink.template_text, token, sink.credential or "").encode("utf-8")
    if sink.format == "raw":
        text = f"{value}\n"
    elif sink.format == "header":
        # RFC 9110 §11.6.2 / RFC 6750 §2.1: the header is "Authorization" (not "Authorisation").
        text = f"Authorization: {authorization_scheme(token.token_type)} {value}\n"
    elif sink.format == "env":
        name = sink.env_name
        assert name is not None, "config fills env_name for env sinks"
        # Single quotes: literal for POSIX sh, systemd EnvironmentFile= and python-dotenv.
        text = f"{name}='{value}'\n{name}_EXPIRES_AT='{int(token.expires_at)}'\n"
    else:
        import json

        text = (
            json.dumps(
                {
                    "access_token": value,
                    "token_type": token.token_type,
                    "expires_at": rfc3339(token.expires_at),
                    "expires_at_unix": int(token.expires_at),
                    "obtained_at": rfc3339(token.obtained_at),
                    "scope": token.scope,
                },
                indent=2,
            )
            + "\n"
        )
    return text.encode("ascii")


def resolve_owner(sink: SinkConfig) -> tuple[int, int]:
    """uid and gid to give the file (-1: leave as created). Raises SinkError if unknown."""
    uid = gid = -1
    if sink.owner is not None:
        try:
            uid = sink.owner if isinstance(sink.owner, int) else pwd.getpwnam(sink.owner).pw_uid
        except (KeyError, ValueError):  # ValueError: a name with a NUL byte
            raise SinkError(sink.path, f"owner {sink.owner!r}: no such user") from None
    if sink.group is not None:
        try:
            gid = sink.group if isinstance(sink.group, int) else grp.getgrnam(sink.group).gr_gid
        except (KeyError, ValueError):
            raise SinkError(sink.path, f"group {sink.group!r}: no such group") from None
    return uid, gid


def in_the_way(path: Path) -> str | None:
    """Why ``path`` must not be replaced: anything but a regular file or nothing. A sink
    at /dev/null, on a FIFO or on a directory is a mistake that would break the host."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot inspect: {exc.strerror}"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {file_kind(st.st_mode)}; tokend only replaces regular files"


def unsafe_path(sink: SinkConfig) -> str | None:
    """Why writing this sink could be redirected or could break something, or None."""
    reason = in_the_way(sink.path)
    if reason is None and not sink.allow_shared_dir:
        chain = unsafe_directory_chain(sink.path.parent)
        if chain:
            reason = (
                f"directory path is not safe: {chain} (someone else could redirect the "
                "write; fix the modes, or set allow_shared_dir = true to accept it)"
            )
    return reason


def is_current(path: Path, data: bytes, mode: int, uid: int, gid: int) -> bool:
    """Whether the file already holds exactly this, with this mode and ownership."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
            return False
        if st.st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SinkResult:
    path: Path
    written: bool  # False: the file already held this token


def write_sink(token: Token, sink: SinkConfig) -> SinkResult:
    """Put ``token`` in ``sink`` unless it is there already. Raises SinkError, and only
    that: one sink's failure, whatever it is, must not cost the credential's other sinks."""
    try:
        data = render(token, sink)
    except ValueError as exc:
        raise SinkError(sink.path, str(exc)) from None
    uid, gid = resolve_owner(sink)
    reason = unsafe_path(sink)
    if reason is not None:
        raise SinkError(sink.path, reason)
    if is_current(sink.path, data, sink.mode, uid, gid):
        return SinkResult(sink.path, written=False)
    sweep_once(sink.path.parent)
    try:
        write_atomic(sink.path, data, mode=sink.mode, uid=uid, gid=gid)
    except OSError as exc:
        raise SinkError(sink.path, _describe(exc, sink)) from None
    except (OverflowError, ValueError) as exc:  # an id the kernel cannot take
        raise SinkError(sink.path, f"cannot write: {exc}") from None
    return SinkResult(sink.path, written=True)


def _describe(exc: OSError, sink: SinkConfig) -> str:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"cannot write: directory {sink.path.parent} does not exist"
    if isinstance(exc, ChownRefused):
        given = f"owner {sink.owner}" if exc.owner else f"group {sink.group}"
        if seccomp_filtered():
            instead = "drop owner and " if exc.owner else ""
            return (
                f"cannot give the file {given} ({reason}): a system-call filter refuses chown here "
                f"(tokend.service's SystemCallFilter=); {instead}put the sink in a setgid directory "
                'of the group, where files are born in it (README, "Running under systemd")'
            )
        return (
            f"cannot give the file {given} ({reason}); another owner needs root or CAP_CHOWN, "
            "another group root, CAP_CHOWN or membership of it"
        )
    if isinstance(exc, PermissionError) and (sink.owner is not None or sink.group is not None):
        return f"cannot write or chown ({reason}); owner/group need root or CAP_CHOWN"
    return f"cannot write: {reason}"
