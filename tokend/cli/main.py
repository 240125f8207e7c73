"""The ``tokend`` command line: parse it, load the config, hand over to the command.

``tokend token NAME`` on a fresh cached token is answered first, by
:mod:`tokend.cli.fastpath`, before argparse or the config machinery is imported: it should
cost little more than starting Python. Everything else, and ``token`` whenever the fast
path is not sure, is parsed by argparse (building only the subcommand being run) and runs
on the validated config. Each command lives in a module of its own (:mod:`tokend.cli.fetch`,
``token``, ``exec``, ``status``, ``check``), imported only when it runs.
"""

from __future__ import annotations

import os
import sys

from tokend import __version__
from tokend.cli import fastpath
from tokend.cli.selection import UsageError
from tokend.core.exit_codes import ExitCode

TYPE_CHECKING = False  # not typing's: this module is on the fast path
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path
    from typing import TypeAlias

    from tokend.config import Config

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

REMEMBERED = ("fetch", "token", "exec")  # commands after which the fast path may serve the config


def _fetch(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    fetch = sub.add_parser(
        "fetch",
        parents=[common],
        help="make sure every sink holds a valid token, then exit",
        description="One shot: reuse each credential's cached token while it is "
        "fresh, else ask the identity provider; write every sink.",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="credentials (default: all)")
    fetch.add_argument(
        "--force", action="store_true", help="ask for new tokens even if cached ones are fresh"
    )


def _token(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser(
        "token",
        parents=[common],
        help="print a valid access token",
        description="Print a valid access token for NAME on stdout, from the "
        "cache when it is fresh; nothing else goes to stdout.",
    )
    token.add_argument("name", metavar="NAME")


def _check(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate config, secrets and sink paths",
        description="Validate the config, read every secret, check every sink "
        "directory; with --online, ask each identity provider once.",
    )
    check.add_argument("--online", action="store_true", help="also request one token per credential")


def _run(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "run",
        parents=[common],
        help="the daemon, in the foreground (systemd Type=notify)",
        description="Keep every credential's token fresh until SIGTERM; SIGHUP reloads.",
    )


def _status(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status",
        parents=[common],
        help="each credential's health, from the daemon",
        description="Report each credential's token expiry, next refresh, last "
        "success and last error; exit 1 when any is failing or "
        "expired, or the daemon is not running.",
    )
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument(
        "--check",
        action="store_true",
        help="one line and a Nagios exit code: 0 OK, 1 WARNING (a refresh is "
        "failing, or the daemon is down), 2 CRITICAL (a token expired or "
        "missing), 3 UNKNOWN",
    )


def _exec(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    exec_ = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command with the token in its environment",
        usage="tokend exec [-c FILE] [--env-name VAR] [--on-rotate restart|SIGNAL|none] "
        "[--stop-signal SIGNAL] [--stop-timeout DURATION] NAME -- CMD [ARG ...]",
        description="Run CMD with NAME's valid access token in its environment "
        "(as <NAME>_ACCESS_TOKEN unless --env-name says otherwise). With --on-rotate "
        "restart or a signal, tokend stays CMD's parent, keeps the token fresh, and "
        "restarts CMD (and whatever CMD started) with each new token or sends it the "
        "signal; SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on to CMD, and CMD's end "
        "is tokend's (its exit code, or death by the same signal).",
    )
    exec_.add_argument("name", metavar="NAME")
    exec_.add_argument("--env-name", metavar="VAR", help="variable to put the token in")
    exec_.add_argument(
        "--on-rotate",
        default="none",
        metavar="restart|SIGNAL|none",
        help="on a new token: restart CMD, send it SIGNAL (after the sinks are written; "
        "a reload signal such as HUP or USR1, not TERM, INT or QUIT), "
        "or (none, the default) exec CMD once and let it be",
    )
    exec_.add_argument(
        "--stop-signal", metavar="SIGNAL", help="how a restart asks CMD to stop (default SIGTERM)"
    )
    exec_.add_argument(
        "--stop-timeout",
        metavar="DURATION",
        help="how long a restart waits for CMD before SIGKILL (default 10s, at most 1h)",
    )


def _demo(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    from pathlib import Path

    demo = sub.add_parser(
        "demo",
        help="a local identity provider plus the daemon: the 1-minute tour",
        description="Start an identity provider on 127.0.0.1 and the daemon, "
        "writing rotating tokens into ./tokend-demo/.",
    )
    from tokend.devtools.arguments import duration, whole_number

    demo.add_argument("--dir", type=Path, default=Path("tokend-demo"), help="where to write")
    demo.add_argument("--lifetime", type=whole_number(1, 86400), default=15, help="token lifetime in seconds")
    demo.add_argument(
        "--for",
        dest="duration",
        type=duration,
        metavar="SECONDS",
        help='stop after this long, in seconds or as "2m" (default: until Ctrl-C)',
    )


def _example_config(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "example-config",
        help="print an example tokend.toml to start from",
        description="Print the example config shipped with tokend (every key, commented) on "
        "stdout: tokend example-config > /etc/tokend/tokend.toml, then edit and run tokend check.",
    )


SUBCOMMANDS = {
    "run": _run,
    "fetch": _fetch,
    "token": _token,
    "exec": _exec,
    "status": _status,
    "check": _check,
    "demo": _demo,
    "example-config": _example_config,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand (the rest cost time, not meaning)."""
    import argparse
    from pathlib import Path

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: $TOKEND_CONFIG, "
        "$CONFIGURATION_DIRECTORY/tokend.toml, /etc/tokend/tokend.toml)",
    )
    from tokend.cli.manual import epilog

    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keep OAuth2 client-credentials access tokens fresh on disk.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in SUBCOMMANDS.items():
        if only is None or name == only:
            add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        if "token" in words:
            return stdout_failed("standard output is closed")
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    request = fastpath.token_request(words)
    if request is not None:
        try:
            token = fastpath.fresh_token(*request, os.environ)
            if token is not None:
                sys.stdout.write(token + "\n")
                sys.stdout.flush()
                return ExitCode.OK
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return reader_left()
        except OSError as exc:  # a full disk or a bad descriptor behind stdout
            return stdout_failed(exc.strerror or str(exc))
    return run_command(words)


def stdout_failed(why: str) -> int:
    try:  # noqa: SIM105 (contextlib would cost the fast path an import)
        os.write(2, f"tokend: cannot write to standard output: {why}\n".encode())
    except OSError:
        pass  # stderr is gone too: the exit code says it
    return ExitCode.FAILED


def run_command(words: list[str]) -> int:
    """Every command, through argparse and the validated config."""
    from tokend.config import ConfigError

    # Everything after the first "--" is exec's command, options and all.
    command = words[words.index("--") + 1 :] if "--" in words else []
    words = words[: words.index("--")] if "--" in words else words
    first = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args = parser.parse_args(words)
    if command and args.command != "exec":
        parser.error(f"{args.command} takes no command after --")
    if args.command == "exec" and not command:
        parser.error("exec needs a command after --")
    try:
        code = dispatch(args, command)
        sys.stdout.flush()  # here, not at exit: a reader that left must not cost a traceback
        return code
    except ConfigError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except UsageError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return reader_left()
    except OSError as exc:
        import errno

        if exc.errno not in (errno.EBADF, errno.ENOSPC, errno.EIO):
            raise
        return stdout_failed(exc.strerror or str(exc))


def reader_left() -> int:
    # `tokend status --json | head -1`: the reader left; no traceback, and none from the
    # interpreter's own flush of stdout at exit either.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return ExitCode.FAILED


def load_config(path: Path, command: str) -> Config:
    """The validated config; after ``fetch``, ``token`` and ``exec``, remembered for the
    fast path (see :func:`tokend.cli.memo.remember`)."""
    from tokend.cli import memo
    from tokend.config import load

    before = memo.read_config(str(path)) if command in REMEMBERED else None
    config = load(path)
    if before is not None:
        memo.remember(str(path), before, config.state_dir, os.environ)
    return config


def dispatch(args: argparse.Namespace, command: list[str]) -> int:
    from tokend.config import default_config_path

    if args.command == "demo":
        from tokend.devtools.demo import run_demo

        return run_demo(args.dir, lifetime=args.lifetime, duration=args.duration)
    if args.command == "example-config":
        from tokend.cli.manual import cmd_example_config

        return cmd_example_config()
    path: Path = args.config or default_config_path(os.environ)
    if args.command == "run":
        from tokend.daemon.loop import run

        return run(path)
    if args.command == "status":
        from tokend.cli.console import setup_logging
        from tokend.cli.status import cmd_status

        setup_logging(None)
        return cmd_status(path, as_json=args.json, check=args.check)
    config = load_config(path, args.command)
    from tokend.cli.console import setup_logging

    setup_logging(config, quiet=args.command in ("token", "exec"))
    if args.command in ("fetch", "check"):  # they read secrets: closed to same-user processes
        from tokend.io.private_process import make_undumpable

        make_undumpable()
    if args.command == "fetch":
        from tokend.cli.fetch import cmd_fetch

        return cmd_fetch(config, args.names, force=args.force)
    if args.command == "token":
        from tokend.cli.token import cmd_token

        return cmd_token(config, args.name)
    if args.command == "check":
        from tokend.cli.check import cmd_check

        return cmd_check(config, online=args.online)
    if args.command == "exec":
        from tokend.cli.exec import cmd_exec

        return cmd_exec(
            config,
            args.name,
            command,
            env_name=args.env_name,
            on_rotate=args.on_rotate,
            stop_signal=args.stop_signal,
            stop_timeout=args.stop_timeout,
        )
    raise AssertionError(f"unhandled command {args.command}")
