"""The reference, generated: ``docs/reference.md`` and ``man/tokend.toml.5`` from the schema
(:mod:`tokend.config.schema`, every key's one declaration) and ``man/tokend.1`` from the
argparse parser (:func:`tokend.cli.main.build_parser`) and :mod:`tokend.cli.manual`, the
way gunicorn makes its settings page from its ``Setting`` classes: nothing written twice.

``python -m tokend.devtools.reference`` writes the three files; ``--check`` writes nothing
and exits 1 naming each file that is not what the sources make now (CI and
``tests/test_reference.py`` run it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokend import __version__
from tokend.cli.main import build_parser
from tokend.cli.manual import CONFIG_SEARCH, ENVIRONMENT, EXEC_EXIT, EXIT_CODES, FILES, STATE_SEARCH
from tokend.config.schema import (
    DEFAULT_HIGH,
    NO_DEFAULT,
    Config,
    CredentialConfig,
    EndpointConfig,
    FleetConfig,
    HookConfig,
    Key,
    ProxyConfig,
    SinkConfig,
    schema,
)
from tokend.core.limits import MAX_STRING, PRESETS, SECRET_SUFFIXES

ROOT = Path(__file__).resolve().parents[2]  # the source tree the files are written into
GENERATED_BY = "python -m tokend.devtools.reference"

# What a value of each kind is (tokend.config.kinds reads them so).
KIND_TEXT = {
    "string": "a string",
    "choice": "one of the choices",
    "flag": "true or false",
    "number": "a number",
    "duration": 'a duration: "30s", "5m", "1h30m", "500ms" or an integer of seconds',
    "path": 'a path, relative to the config file; "~" expanded',
    "mode": 'an octal string such as "0640"; never writable by group or others',
    "owner": "a user or group name, or a numeric id",
    "owners": "a list of user or group names or ids (or one)",
    "socket_mode": 'an octal string such as "0660" (write permission is what lets a caller connect)',
    "scope": "a string or a list of strings, split at whitespace",
    "argv": "a list of strings: a program and its arguments, never a shell line",
    "signal": 'a signal name, with or without "SIG"',
    "url": "a URL",
    "addresses": 'a list of "HOST:PORT" strings (a DNS name, IPv4 or [IPv6])',
    "params": "audience and resource: a string or a list; extra_params: a table of strings or lists",
    "listen": '"HOST:PORT", on loopback unless the _allow_remote key is true',
    "address": '"unix:/PATH", "HOST:PORT" (loopback unless allow_remote = true) or "systemd:NAME"',
    "secret": "exactly one of its keys",
    "sinks": "an array of tables",
    "proxies": "an array of tables",
    "hook": "a table",
    "credentials": "a table of tables, one per credential",
}
# How each key of a secret says where the value is, by the key's suffix (SECRET_SUFFIXES).
SECRET_TEXT = {
    "inline": "the value itself (warned about when the config is readable by others)",
    "env": "the name of an environment variable holding it (looked up in env_file first)",
    "file": "the path of a file holding it, read at each request",
    "credential": "the name of a systemd credential (LoadCredential=): $CREDENTIALS_DIRECTORY/NAME",
}
# Defaults the declaration cannot hold: decided when the config is loaded.
DEFAULT_TEXT = {
    ("Config", "state_dir"): ", else ".join(STATE_SEARCH[1:]),
    ("CredentialConfig", "token_url"): "the preset's, or discovered from issuer",
    ("CredentialConfig", "client_id"): "none: required",
    ("CredentialConfig", "client_secret"): 'none: required unless client_auth is "private_key_jwt" or '
    '"tls_client_auth"',
    ("FleetConfig", "redis_url"): "none: required (or sentinels)",
    ("ProxyConfig", "listen"): "listen: required; allow_remote: false",
    ("EndpointConfig", "listen"): "listen: required; allow_remote: false",
}


@dataclass(frozen=True)
class Table:
    header: str  # as the TOML file writes it
    value: type
    about: str


def tables() -> tuple[Table, ...]:
    """Every table of tokend.toml, in the order the example gives them."""

    def doc(cls: type, name: str) -> str:
        (spec,) = (spec for spec in schema(cls) if spec.field == name)
        return spec.doc

    return (
        Table("[tokend]", Config, "Settings of the daemon itself; every key is optional."),
        Table("[fleet]", FleetConfig, _docstring(FleetConfig)),
        Table("[endpoint]", EndpointConfig, _docstring(EndpointConfig)),
        Table("[credentials.NAME]", CredentialConfig, doc(Config, "credentials")),
        Table("[[credentials.NAME.sink]]", SinkConfig, doc(CredentialConfig, "sinks")),
        Table("[credentials.NAME.on_rotate]", HookConfig, doc(CredentialConfig, "on_rotate")),
        Table("[[credentials.NAME.proxy]]", ProxyConfig, doc(CredentialConfig, "proxies")),
    )


def _docstring(cls: type) -> str:
    first = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(first.replace("``", "`").split())


def documented(cls: type) -> tuple[Key, ...]:
    """The fields of a table that a TOML key fills (not tokend's own)."""
    return tuple(spec for spec in schema(cls) if spec.keys)


# --------------------------------------------------------------------------- the facts


def duration(seconds: float) -> str:
    """Seconds as tokend.toml writes a duration: 90 → "1m30s", 0.5 → "500ms"."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return '"' + ("".join(parts) or "0s") + '"'


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def default_text(cls: type, spec: Key) -> str:
    override = DEFAULT_TEXT.get((cls.__name__, spec.field))
    if override is not None:
        return override
    value = spec.default
    if value is NO_DEFAULT:
        return "none: required" if spec.required else "none"
    if spec.kind == "listen":
        return f"unset; {spec.keys[1] if spec.keys else ''}: false"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if spec.kind == "duration":
        return duration(value)
    if spec.kind in ("mode", "socket_mode"):
        return f'"{value:04o}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[]" if not value else "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return _number(value)


def bounds_text(spec: Key) -> str:
    """The key's bounds, when it has any worth saying (strings: only a bound of its own)."""
    if spec.kind == "number":
        return f"from {_number(spec.low or 0)} to {_number(spec.high or 0)}"
    if spec.kind == "duration":
        low = (
            "longer than zero"
            if spec.low is None
            else "zero or more"
            if spec.low == 0
            else f"at least {duration(spec.low)}"
        )
        return f"{low}, at most {duration(spec.high or 0)}"
    if spec.kind == "owner":
        return f"an id from 0 to {_number(spec.high or 0)}"
    if spec.high is not None and spec.high != DEFAULT_HIGH.get(spec.kind):
        return f"at most {_number(spec.high)} characters"
    return ""


def preset_text(spec: Key) -> list[str]:
    """Which provider presets set the key, and to what."""
    return [
        f'provider = "{name}" sets {key} = "{values[key]}"'
        for name, values in PRESETS.items()
        for key in spec.keys or ()
        if key in values
    ]


def secret_suffix(key: str) -> str:
    """The source a secret's key names, by its suffix: client_secret_file → "file"."""
    suffix = max((s for s in SECRET_SUFFIXES if key.endswith(s)), key=len)
    return SECRET_SUFFIXES[suffix]


def facts(cls: type, spec: Key) -> list[tuple[str, str]]:
    """What the reference says of a key besides its doc line, as (label, text) pairs."""
    found = [("kind", KIND_TEXT[spec.kind]), ("default", default_text(cls, spec))]
    if spec.choices:
        found.append(("choices", ", ".join(spec.choices)))
    if bounds := bounds_text(spec):
        found.append(("bounds", bounds))
    if spec.only_with:
        found.append(("only with", f'client_auth = "{spec.only_with}"'))
    found.extend(("preset", text + " (a value the credential sets wins)") for text in preset_text(spec))
    if spec.identity:
        found.append(("identity", "part of the token's identity: credentials alike in it share a token"))
    if cls is CredentialConfig:
        found.append(
            (
                "on reload",
                "a change asks for a new token at once" if spec.refetch else "applied without a new token",
            )
        )
    if spec.kind == "secret":
        for key in spec.keys or ():
            source = secret_suffix(key)
            one_line = source == "file" and spec.field in ("client_id", "client_secret")
            found.append(
                (key, SECRET_TEXT[source] + ("; one line, a trailing newline is fine" if one_line else ""))
            )
    return found


def _missing_docs() -> list[str]:
    return [
        f"{table.value.__name__}.{spec.field}"
        for table in tables()
        for spec in documented(table.value)
        if not spec.doc
    ]


# --------------------------------------------------------------------------- docs/reference.md


def _intro() -> list[str]:
    return [
        "Relative paths are relative to the config file. Durations are written as "
        '`"30s"`, `"5m"`, `"1h30m"`, `"500ms"` or an integer of seconds. Unknown keys are '
        "errors, so a typo never silently does nothing. Strings, paths and lists are at most "
        f"{MAX_STRING} characters unless a key says less.",
        "",
        f"The config file is the first of: {', '.join(f'`{p}`' for p in CONFIG_SEARCH)}. "
        "`tokend example-config` prints a complete, commented example (`tokend.toml.example`).",
    ]


def _presets_md() -> list[str]:
    lines = [
        "## Provider presets",
        "",
        "`provider = NAME` in a `[credentials.NAME]` table sets the keys below. A key the "
        "credential sets itself wins over the preset's value (say, a staging `token_url`).",
        "",
    ]
    for name, values in PRESETS.items():
        lines.append(f"- `{name}`: " + ", ".join(f'`{key} = "{value}"`' for key, value in values.items()))
    return [*lines, ""]


def render_reference() -> str:
    """docs/reference.md: every key of every table, from the schema."""
    lines = [
        "# tokend.toml reference",
        "",
        f"<!-- Generated by `{GENERATED_BY}` from tokend/config/schema.py: edit the schema, not this. -->",
        "",
        *_intro(),
        "",
        *_presets_md(),
    ]
    for table in tables():
        lines += [f"## `{table.header}`", "", table.about, ""]
        for spec in documented(table.value):
            lines += [f"### {', '.join(f'`{key}`' for key in spec.keys or ())}", "", _md(spec.doc), ""]
            lines += [f"- {label}: {_md(text)}" for label, text in facts(table.value, spec)]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _md(text: str) -> str:
    return text.replace("<", "\\<").replace("*", "\\*")


# --------------------------------------------------------------------------- roff


def roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line read as a request,
    markdown's backquotes dropped."""
    escaped = text.replace("`", "").replace("\\", "\\e").replace("-", "\\-")
    escaped = "".join(ch if ch.isascii() else f"\\[u{ord(ch):04X}]" for ch in escaped)
    return "\\&" + escaped if escaped.startswith((".", "'")) else escaped


def _header(name: str, section: int, title: str) -> list[str]:
    return [
        f'.\\" Generated by {roff(GENERATED_BY)}: edit its sources, not this file.',
        f'.TH {name} {section} "" "tokend {__version__}" "{title}"',
    ]


def render_toml_man() -> str:
    """tokend.toml(5): the same facts as docs/reference.md, as a man page."""
    lines = [
        *_header("TOKEND.TOML", 5, "File Formats"),
        ".SH NAME",
        "tokend.toml \\- the configuration of tokend(1)",
        ".SH SYNOPSIS",
        *(line for path in CONFIG_SEARCH[1:] for line in (roff(path), ".br")),
        ".SH DESCRIPTION",
        *(roff(line) if line else ".PP" for line in _intro()),
        ".SH PROVIDER PRESETS",
        roff(_presets_md()[2]),
    ]
    for name, values in PRESETS.items():
        lines += [".TP", f".B {roff(name)}", roff(", ".join(f'{k} = "{v}"' for k, v in values.items()))]
    for table in tables():
        lines += [f".SH {roff(table.header)}", roff(table.about)]
        for spec in documented(table.value):
            lines += [".TP", ".B " + roff(", ".join(spec.keys or ())), roff(spec.doc)]
            for label, text in facts(table.value, spec):
                lines += [".br", roff(f"{label}: {text}")]
    lines += [
        ".SH SEE ALSO",
        "tokend(1); the example: tokend example\\-config; docs/reference.md in the source",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    parser: argparse.ArgumentParser


def commands(parser: argparse.ArgumentParser) -> Iterator[Command]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help or "" for action in sub._choices_actions}
    for name, command in sub.choices.items():
        yield Command(name, summaries[name], command)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar if action.metavar is not None else action.dest.upper()
    return metavar if isinstance(metavar, str) else " ".join(metavar)


def usage(command: Command) -> str:
    """The command's synopsis: its own usage line if it has one, else made from its options."""
    if command.parser.usage:
        return command.parser.usage.removeprefix("tokend ").strip()
    grouped = {a: g for g in command.parser._mutually_exclusive_groups for a in g._group_actions}
    words, done = [command.name], set()
    for action in options(command.parser):
        if action in done:
            continue
        if action.option_strings:
            group = grouped.get(action)
            members = group._group_actions if group else [action]
            done.update(members)
            words.append("[" + " | ".join(_option(a) for a in members) + "]")
        elif action.nargs in ("*", "?"):
            words.append(f"[{_metavar(action)} ...]" if action.nargs == "*" else f"[{_metavar(action)}]")
        else:
            words.append(_metavar(action))
    return " ".join(words)


def _option(action: argparse.Action, every: bool = False) -> str:
    names = action.option_strings if every else action.option_strings[:1]
    takes = action.nargs != 0
    return ", ".join(f"{name} {_metavar(action)}" if takes else name for name in names)


def render_command_man(parser: argparse.ArgumentParser | None = None) -> str:
    """tokend(1): the commands and options argparse knows, and what tokend.cli.manual says."""
    parser = parser or build_parser()
    found = list(commands(parser))
    common = {"--config"}  # -c FILE: every command with a config; said once under OPTIONS
    lines = [
        *_header("TOKEND", 1, "User Commands"),
        ".SH NAME",
        f"tokend \\- {roff(_lower_first((parser.description or '').rstrip('.')))}",
        ".SH SYNOPSIS",
    ]
    for command in found:
        lines += [f".B tokend {roff(command.name)}", roff(usage(command).removeprefix(command.name).strip())]
        lines.append(".br")
    lines += [
        ".B tokend",
        "\\-\\-version | \\-\\-help",
        ".SH DESCRIPTION",
        roff(
            "tokend keeps OAuth2 client-credentials access tokens fresh: it asks each identity "
            "provider before the token expires and writes it atomically to the sinks (files) the "
            "config names, keeping the last good one while the provider is down. Each credential "
            "is a [credentials.NAME] table of tokend.toml(5)."
        ),
        ".SH COMMANDS",
    ]
    for command in found:
        lines += [f".SS {roff(command.name)}", f".B tokend {roff(usage(command))}", ".PP"]
        lines.append(roff(command.parser.description or command.summary))
        for action in options(command.parser):
            if set(action.option_strings) & common or not action.help:
                continue
            lines += [".TP", f".B {roff(_option(action, every=True) or _metavar(action))}"]
            lines.append(roff(action.help or ""))
    config = next(a for a in options(found[0].parser) if "--config" in a.option_strings)
    lines += [
        ".SH OPTIONS",
        ".TP",
        f".B {roff(_option(config, every=True))}",
        roff(f"{config.help} (every command but demo and example-config)"),
        ".TP",
        ".B \\-h, \\-\\-help",
        "show the help of tokend or of a command, and exit",
        ".TP",
        ".B \\-\\-version",
        "print tokend's version and exit",
        ".SH EXIT STATUS",
    ]
    for code, text in EXIT_CODES:
        lines += [".TP", f".B {code}", roff(text)]
    lines += [".PP", roff(EXEC_EXIT), ".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        lines += [".TP", f".B {roff(name)}", roff(text)]
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", f".I {roff(path)}", roff(text)]
    lines += [
        ".PP",
        roff(f"The config file is the first of: {', '.join(CONFIG_SEARCH)}."),
        roff(f"The state directory (STATE_DIR) is the first of: {', '.join(STATE_SEARCH)}."),
        ".SH SEE ALSO",
        "tokend.toml(5), systemd.exec(5), systemd.socket(5); "
        "tokend example\\-config prints an example config",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing

OUTPUTS: dict[str, Callable[[], str]] = {
    "docs/reference.md": render_reference,
    "man/tokend.toml.5": render_toml_man,
    "man/tokend.1": render_command_man,
}


def stale(root: Path) -> list[str]:
    """The generated files under ``root`` that differ from what the sources make now."""
    found = []
    for name, render in OUTPUTS.items():
        path = root / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            found.append(name)
    return found


def write(root: Path) -> list[str]:
    """Write every generated file that changed; the names written."""
    written = stale(root)
    for name in written:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OUTPUTS[name](), encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokend.devtools.reference",
        description="Generate docs/reference.md, man/tokend.toml.5 and man/tokend.1.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree (default: this one)")
    args = parser.parse_args(argv)
    if missing := _missing_docs():
        print(f"keys without a doc line in the schema: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.check:
        if found := stale(args.root):
            for name in found:
                print(f"{name} is stale: run {GENERATED_BY}", file=sys.stderr)
            return 1
        return 0
    for name in write(args.root):
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
