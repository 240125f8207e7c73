"""A deterministic config fuzzer: no edit of tokend.toml, however broken, may crash tokend.

Every case starts from one rich, valid config (every section, two credentials, sinks in all
four formats, a hook) and breaks it: truncations, byte flips, inserted bytes (NUL, BOM,
newlines, Unicode digits, fullwidth characters, invalid UTF-8), deep nesting, huge values,
values of another TOML type, escapes in keys and strings, paths like ``~nosuchuser/x``.
Each case comes from ``random.Random(seed)`` with a fixed seed, so a failure names its seed
and replays the same way; the messages also show the (shrunk) input itself.

Three layers, each with its own promise:

(a) in process, ``tokend.config.load``: a Config, or a ConfigError whose text is one line
    starting with the file's path. Nothing else.
(b) ``tokend check -c FILE``: exit 0 or 78 (without ``--online``, ``cmd_check`` has no
    other answer; 1 is what Python exits with on an uncaught exception), never a
    traceback, and a config error is the one line ``load`` raised.
(c) a running daemon fed fuzzed configs and SIGHUP: every reload ends in "reload applied"
    or "reload rejected", the process lives, its log holds no traceback, and after the
    good config comes back a reload is applied and the sinks still hold a token.

Besides the random cases, the inputs the hardening issue lists (and a few more found
here) are named cases with stricter expectations: most must be *rejected* (a BOM may
also be skipped; a group "٣" may also stay a name, but never become gid 3).
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import re
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import tokend
from tokend.config import CREDENTIAL_KEYS, GLOBAL_KEYS, HOOK_KEYS, SINK_KEYS, Config, ConfigError, load

from .support.endpoint import TokenEndpoint
from .support.processes import DaemonProcess, clean_env, run_tokend

IN_PROCESS_CASES = 300
CHECK_CASES = 30
DAEMON_CASES = 40
SEEDS_IN_PROCESS = range(0, IN_PROCESS_CASES)
SEEDS_CHECK = range(10_000, 10_000 + CHECK_CASES)
SEEDS_DAEMON = range(20_000, 20_400)  # the first DAEMON_CASES that are safe to apply (see below)

# Placeholders, so that the base text (and so every byte offset a seed picks) is the same
# on every run on this machine; the daemon test puts its real IdP URL in.
URL = "http://127.0.0.1:8080/connect/token"
METRICS_PORT = 9464

BASE = """\
# tokend.toml for the fuzzer: every section, both secret-less and preset credentials
[tokend]
state_dir = "state"
log_level = "debug"
log_format = "text"
metrics_listen = "127.0.0.1:@PORT@"
metrics_textfile = "out/tokend.prom"

[credentials.api]
token_url = "@URL@"
client_id = "client-1"
client_secret_file = "api.secret"
scope = ["read", "write"]
extra_params = { audience = "https://api.example", tenant = 42 }
request_format = "form"
client_auth = "basic"
use_refresh_token = true
refresh_at = 0.8
min_ttl_margin = "60s"
default_expires_in = "1h"
timeout = "5s"

[[credentials.api.sink]]
path = "out/api.raw"
format = "raw"
mode = "0600"
owner = "@USER@"
group = "@GROUP@"

[[credentials.api.sink]]
path = "out/api.json"
format = "json"
mode = "0640"
owner = @UID@
group = @GID@

[[credentials.api.sink]]
path = "out/api.env"
format = "env"
mode = "0600"
env_name = "API_TOKEN"
remove_on_stop = false

[[credentials.api.sink]]
path = "out/api.header"
format = "header"
mode = "0600"
group = "@GROUP@"

[credentials.api.on_rotate]
command = ["true"]
timeout = "10s"
pid_file = "hook.pid"
signal = "WINCH"
pass_token = false

[credentials.billing]
provider = "eventbookings"
token_url = "@URL@"
client_id = "client-2"
client_secret_file = "billing.secret"
scope = "billing:read"
timeout = "3s"

[[credentials.billing.sink]]
path = "out/billing.env"
format = "env"
env_name = "BILLING_TOKEN"
mode = "0640"
owner = "@USER@"

[[credentials.billing.sink]]
path = "out/billing.token"
"""


def base_config(url: str = URL, port: int = METRICS_PORT) -> str:
    return (
        BASE.replace("@URL@", url)
        .replace("@PORT@", str(port))
        .replace("@USER@", pwd.getpwuid(os.getuid()).pw_name)
        .replace("@GROUP@", grp.getgrgid(os.getgid()).gr_name)
        .replace("@UID@", str(os.getuid()))
        .replace("@GID@", str(os.getgid()))
    )


def prepare(tmp: Path) -> None:
    """What the base config points at, so that the unbroken config is valid for `check`."""
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "api.secret").write_text("s3cret-value\n")
    (tmp / "billing.secret").write_text("billing-s3cret\n")
    (tmp / "hook.pid").write_text("999999999\n")


# --------------------------------------------------------------------------- mutations

LITERALS = [  # TOML values of every type, and the strings that have broken parsers before
    "0",
    "-1",
    "1",
    "640",
    "99999999999",
    "-99999999999",
    str(10**30),
    "4294967295",
    "0.5",
    "1e308",
    "-1e308",
    "inf",
    "nan",
    "-0.0",
    "true",
    "false",
    '""',
    '" "',
    '"²"',
    '"٣"',
    '"\uff11\uff12\uff13"',
    '"99999999999d"',
    '"10000000d"',
    '"0s"',
    '"1h30m"',
    '"500ms"',
    '"~nosuchuser/x"',
    '"~/x"',
    '"0640"',
    '"127.0.0.1:²"',
    '"[::1]:0"',
    '"a\\u0000b"',
    '"x\\n"',
    '"\\u202e"',
    f'"{"x" * 5000}"',
    '"%(HOME)s"',
    '"${HOME}"',
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "[]",
    "[1, 2]",
    '["a", ""]',
    "[[]]",
    "[{}]",
    '["²"]',
    "{}",
    "{ a = 1 }",
    '{ audience = "x" }',
    "{ x = { y = [] } }",
]
HUGE = [
    "99999999999",
    str(10**30),
    '"99999999999d"',
    '"10000000d"',
    '"9999999999999999999s"',
    f'"{"9" * 400}s"',
    "1e308",
    f'"{"a" * 100_000}"',
    "-9223372036854775808",
    "18446744073709551616",
    '"999999999h"',
    '"99999999999ms"',
]
PATHS = [
    '"~nosuchuser/x"',
    '"~/x"',
    '"~"',
    '""',
    '"a\\u0000b"',
    '"."',
    '".."',
    f'"{"p" * 5000}"',
    '"out/"',
    '"out/no/such/dir/x"',
    '"out/e\\u0301"',
    '"out/x\\n"',
]
PATH_KEYS = (
    "state_dir",
    "metrics_textfile",
    "client_secret_file",
    "path",
    "pid_file",
    "env_file",
    "ca_bundle",
)
INSERTS = [
    b"\0",
    b"\xef\xbb\xbf",
    b"\n",
    "²".encode(),
    "٣".encode(),
    "\uff11".encode(),
    "\uff1d".encode(),
    "\uff3b".encode(),
    "\u2028".encode(),
    b"\r",
    b"\t",
    b'"',
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"#",
    b"\\",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x80",
    b"\x1b",
    b"\x7f",
]
ESCAPES = ["\\n", "\\r", "\\u2028", "\\u0000", "\\t", "\\u001b", "\\u00b2"]
ASSIGNMENT = re.compile(rb"^(\s*)([^=\[#\s][^=]*?)\s*=\s*(.*)$")
HEADER = re.compile(rb"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*$")


@dataclass
class Case:
    """One input: its name (seed or named case), how it was made, and its bytes."""

    id: str
    data: bytes
    how: list[str] = field(default_factory=list)

    def describe(self, limit: int = 300) -> str:
        shown = repr(self.data[:limit]) + (f"... ({len(self.data)} bytes)" if len(self.data) > limit else "")
        return f"[{self.id}] {'; '.join(self.how) or 'as built'}: {shown}"


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _assignments(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if ASSIGNMENT.match(line)]


def _key_of(line: bytes) -> str:
    match = ASSIGNMENT.match(line)
    return match.group(2).decode(errors="replace") if match else ""


def _replace_value(
    rng: random.Random, data: bytes, pool: list[str], what: str, keys: tuple[str, ...] | None = None
) -> tuple[bytes, str]:
    lines = _lines(data)
    candidates = [i for i in _assignments(lines) if keys is None or _key_of(lines[i]) in keys]
    if not candidates:
        return _insert(rng, data)
    i = rng.choice(candidates)
    match = ASSIGNMENT.match(lines[i])
    assert match is not None
    value = rng.choice(pool)
    lines[i] = match.group(1) + match.group(2) + b" = " + value.encode()
    return b"\n".join(lines), f"{what}: line {i + 1} {match.group(2).decode(errors='replace')} = {value[:40]}"


def _truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncate at byte {cut}"


def _flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 4)):
        pos, byte = rng.randrange(len(out)), rng.randrange(256)
        out[pos] = byte
        done.append(f"{pos}:{byte:#04x}")
    return bytes(out), f"flip bytes {', '.join(done)}"


def _insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos, what = rng.randrange(len(data) + 1), rng.choice(INSERTS)
    return data[:pos] + what + data[pos:], f"insert {what!r} at byte {pos}"


def _bom(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    bom = rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xef\xbb\xbf\xef\xbb\xbf"])
    return bom + data, f"prepend {bom!r}"


def _nest(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    depth = rng.choice([100, 999, 1000, 5000, 20000])
    shape = rng.choice(["open", "closed", "table"])
    value = {
        "open": "[" * depth,
        "closed": "[" * depth + "]" * depth,
        "table": "{ a = " * depth + "1" + " }" * depth,
    }[shape]
    if rng.random() < 0.3:
        return f"x = {value}\n".encode() + data, f"prepend x = {shape} nesting {depth} deep"
    out, how = _replace_value(rng, data, [value], f"{shape} nesting {depth} deep")
    return out, how


def _huge(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    return _replace_value(rng, data, HUGE, "huge value")


def _retype(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    return _replace_value(rng, data, LITERALS, "other value")


def _path(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    return _replace_value(rng, data, PATHS, "path", keys=PATH_KEYS)


def _add_key(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A known key, with any value, added to a section that allows it."""
    lines = _lines(data)
    headers = [
        (i, m.group(1).decode(errors="replace")) for i, line in enumerate(lines) if (m := HEADER.match(line))
    ]
    if not headers:
        return _insert(rng, data)
    i, name = rng.choice(headers)
    keys = (
        GLOBAL_KEYS
        if name == "tokend"
        else SINK_KEYS
        if name.endswith(".sink")
        else HOOK_KEYS
        if name.endswith(".on_rotate")
        else CREDENTIAL_KEYS
    )
    key, value = rng.choice(keys), rng.choice(LITERALS + HUGE + PATHS)
    lines.insert(i + 1, f"{key} = {value}".encode())
    return b"\n".join(lines), f"add {key} = {value[:40]} under [{name}]"


def _escape(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """An escape sequence in a quoted key, or at the end of a string value."""
    lines = _lines(data)
    found = _assignments(lines)
    if not found:
        return _insert(rng, data)
    i = rng.choice(found)
    match = ASSIGNMENT.match(lines[i])
    assert match is not None
    escape = rng.choice(ESCAPES)
    key, value = match.group(2), match.group(3)
    if rng.random() < 0.5 or not value.endswith(b'"'):
        key = b'"' + key.strip(b'"') + escape.encode() + b'"'
    else:
        value = value[:-1] + escape.encode() + b'"'
    lines[i] = match.group(1) + key + b" = " + value
    return b"\n".join(lines), f"escape {escape} in line {i + 1}"


def _lineop(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.choice(["delete", "duplicate", "swap"])
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(j, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines), f"{op} line {i + 1}" + (f" and {j + 1}" if op != "delete" else "")


MUTATORS: list[Callable[[random.Random, bytes], tuple[bytes, str]]] = [
    _truncate,
    _flip,
    _flip,
    _insert,
    _insert,
    _bom,
    _nest,
    _huge,
    _huge,
    _retype,
    _retype,
    _retype,
    _path,
    _path,
    _add_key,
    _add_key,
    _escape,
    _lineop,
]


def fuzz_case(seed: int, base: str) -> Case:
    rng = random.Random(seed)
    case = Case(f"seed={seed}", base.encode())
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        if not case.data:
            break
        case.data, how = rng.choice(MUTATORS)(rng, case.data)
        case.how.append(how)
    return case


# --------------------------------------------------------------------------- named cases


def set_value(text: str, header: str, key: str, literal: str) -> str:
    """``key = literal`` in the first section called ``header``, replacing or adding it."""
    lines = text.split("\n")
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {literal}"
            break
    else:
        lines.insert(start + 1, f"{key} = {literal}")
    return "\n".join(lines)


SINK0, HOOK, API, GLOBAL = (
    "[[credentials.api.sink]]",
    "[credentials.api.on_rotate]",
    "[credentials.api]",
    "[tokend]",
)
Expect = Literal["reject"] | Callable[[Config], str | None]


def _group_not_three(config: Config) -> str | None:
    group = config.credentials["api"].sinks[0].group
    return f'group "٣" became the number {group}' if isinstance(group, int) else None


def _same_as_base(config: Config) -> str | None:
    if sorted(config.credentials) != ["api", "billing"] or config.log_level != "debug":
        return f"read differently from the base: {sorted(config.credentials)}, {config.log_level}"
    return None


NAMED: list[tuple[str, Callable[[str], str | bytes], Expect]] = [
    # The hardening issue's list: each crashed somewhere today; each must be rejected.
    ("issue-nested-arrays-5000", lambda b: "x = " + "[" * 5000 + "\n" + b, "reject"),
    (
        "issue-nested-arrays-5000-closed",
        lambda b: set_value(b, API, "extra_params", "{ audience = " + "[" * 5000 + "]" * 5000 + " }"),
        "reject",
    ),
    ("issue-group-superscript-two", lambda b: set_value(b, SINK0, "group", '"²"'), "reject"),
    ("issue-owner-superscript-two", lambda b: set_value(b, SINK0, "owner", '"²"'), "reject"),
    (
        "issue-metrics-listen-superscript-two",
        lambda b: set_value(b, GLOBAL, "metrics_listen", '"127.0.0.1:²"'),
        "reject",
    ),
    (
        "issue-tilde-unknown-user-state-dir",
        lambda b: set_value(b, GLOBAL, "state_dir", '"~nosuchuser/x"'),
        "reject",
    ),
    (
        "issue-tilde-unknown-user-sink-path",
        lambda b: set_value(b, SINK0, "path", '"~nosuchuser/x"'),
        "reject",
    ),
    (
        "issue-tilde-unknown-user-secret-file",
        lambda b: set_value(b, API, "client_secret_file", '"~nosuchuser/x"'),
        "reject",
    ),
    ("issue-owner-99999999999", lambda b: set_value(b, SINK0, "owner", "99999999999"), "reject"),
    ("issue-timeout-99999999999d", lambda b: set_value(b, API, "timeout", '"99999999999d"'), "reject"),
    (
        "issue-default-expires-in-10000000d",
        lambda b: set_value(b, API, "default_expires_in", '"10000000d"'),
        "reject",
    ),
    # A BOM may be refused or skipped, but not change what the rest of the file means.
    ("issue-bom-at-start", lambda b: b"\xef\xbb\xbf" + b.encode(), _same_as_base),
    # Found by this fuzzer: silent misreadings and multi-line errors.
    (
        "metrics-listen-arabic-indic-three",
        lambda b: set_value(b, GLOBAL, "metrics_listen", '"127.0.0.1:٣"'),
        "reject",
    ),
    (
        "metrics-listen-fullwidth-digits",
        lambda b: set_value(b, GLOBAL, "metrics_listen", '"127.0.0.1:\uff19\uff14\uff16\uff14"'),
        "reject",
    ),
    ("group-arabic-indic-three", lambda b: set_value(b, SINK0, "group", '"٣"'), _group_not_three),
    ("owner-4294967295-is-chown-minus-one", lambda b: set_value(b, SINK0, "owner", "4294967295"), "reject"),
    ("timeout-10e30-seconds", lambda b: set_value(b, API, "timeout", str(10**30)), "reject"),
    ("hook-timeout-99999999999d", lambda b: set_value(b, HOOK, "timeout", '"99999999999d"'), "reject"),
    (
        "min-ttl-margin-99999999999d",
        lambda b: set_value(b, API, "min_ttl_margin", '"99999999999d"'),
        "reject",
    ),
    (
        "credential-name-trailing-newline",
        lambda b: (
            b + '\n[credentials."x\\n"]\ntoken_url = "http://127.0.0.1:1/t"\n'
            'client_id = "a"\nclient_secret_file = "api.secret"\n'
        ),
        "reject",
    ),
    (
        "env-name-trailing-newline",
        lambda b: set_value(b, "[[credentials.billing.sink]]", "env_name", '"BILLING_TOKEN\\n"'),
        "reject",
    ),
    ("unknown-key-with-newline", lambda b: set_value(b, API, '"scope\\n"', '"x"'), "reject"),
    ("unknown-top-key-with-line-separator", lambda b: '"a\\u2028b" = 1\n' + b, "reject"),
]


def named_case(name: str, build: Callable[[str], str | bytes], base: str) -> Case:
    built = build(base)
    data = built.encode() if isinstance(built, str) else built
    before = set(base.split("\n"))
    changed = [line for line in data.decode(errors="replace").split("\n") if line not in before]
    return Case(name, data, [f"changed {line[:60]!r}" for line in changed[:3]])


# --------------------------------------------------------------------------- outcomes

TOKEND_DIR = str(Path(tokend.__file__).resolve().parent)


def origin(exc: BaseException) -> str:
    """Where an exception left tokend's code, and where it was raised, for deduplication."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(TOKEND_DIR)]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    if where is None:
        return "?"
    text = f"{Path(where.filename).name}:{where.lineno} {where.name}() `{(where.line or '').strip()}`"
    last = frames[-1]
    if isinstance(exc, RecursionError):  # where the stack ran out depends on the depth
        text += f" -> {Path(last.filename).name}"
    elif last is not where:
        text += f" -> {Path(last.filename).name}:{last.lineno} {last.name}()"
    return text


@dataclass
class Outcome:
    kind: Literal["config", "error", "bad-error", "crash"]
    config: Config | None = None
    message: str = ""
    signature: str = ""  # the root cause, for deduplication: what, and where in tokend


def load_case(path: Path, data: bytes, environ: Mapping[str, str]) -> Outcome:
    path.write_bytes(data)
    try:
        config = load(path, environ=environ)
    except ConfigError as exc:
        text = str(exc)
        if len(text.splitlines()) != 1:
            return Outcome(
                "bad-error",
                message=text,
                signature=f"ConfigError spans {len(text.splitlines())} lines (raised at {origin(exc)})",
            )
        if not text.startswith(f"{path}: "):
            return Outcome(
                "bad-error",
                message=text,
                signature=f"ConfigError does not start with the path (raised at {origin(exc)})",
            )
        return Outcome("error", message=text)
    except Exception as exc:  # the fuzzer's whole question: nothing else may come out
        return Outcome(
            "crash",
            message=f"{type(exc).__name__}: {str(exc)[:200]}",
            signature=f"{type(exc).__name__} at {origin(exc)}",
        )
    return Outcome("config", config=config)


def shrink(data: bytes, same: Callable[[bytes], bool], budget: int = 300) -> bytes:
    """Drop lines, then cut the tail, while ``same`` still holds: a short reproducer."""
    lines = _lines(data)
    changed = True
    while changed and budget > 0:
        changed = False
        i = 0
        while i < len(lines) and budget > 0:
            budget -= 1
            candidate = lines[:i] + lines[i + 1 :]
            if same(b"\n".join(candidate)):
                lines, changed = candidate, True
            else:
                i += 1
    data = b"\n".join(lines)
    step = len(data) // 2
    while step and budget > 0:
        budget -= 1
        if same(data[:-step]):
            data = data[:-step]
        else:
            step //= 2
    return data


def show(data: bytes, limit: int = 240) -> str:
    return repr(data[:limit]) + (f"... ({len(data)} bytes)" if len(data) > limit else "")


@pytest.fixture
def fuzz_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment every layer sees: HOME in tmp, so "~/x" means the same everywhere."""
    prepare(tmp_path)
    env = clean_env(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])  # Path.expanduser reads os.environ
    return env


# --------------------------------------------------------------------------- (a) in process


def test_in_process_fuzz_gives_a_config_or_a_one_line_config_error(
    tmp_path: Path, fuzz_env: dict[str, str]
) -> None:
    base = base_config()
    path = tmp_path / "tokend.toml"
    assert load_case(path, base.encode(), fuzz_env).kind == "config", "the base config must be valid"
    by_cause: dict[str, list[tuple[Case, Outcome]]] = {}
    kinds: dict[str, int] = {}
    started = time.monotonic()
    for seed in SEEDS_IN_PROCESS:
        case = fuzz_case(seed, base)
        outcome = load_case(path, case.data, fuzz_env)
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
        if outcome.kind in ("crash", "bad-error"):
            by_cause.setdefault(outcome.signature, []).append((case, outcome))
    # Both answers must really occur, or the fuzzer tests nothing.
    assert kinds.get("config", 0) >= 10 and kinds.get("error", 0) >= 50, kinds
    reports = []
    for signature, found in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        case, outcome = min(found, key=lambda f: len(f[0].data))
        minimal = shrink(case.data, lambda d: load_case(path, d, fuzz_env).signature == signature)  # noqa: B023
        reports.append(
            f"- {signature}\n    {len(found)} case(s), seeds {', '.join(c.id for c, _ in found[:8])}"
            f"\n    e.g. {case.describe(160)}\n    -> {outcome.message[:200]!r}"
            f"\n    minimal input: {show(minimal)}"
        )
    assert not reports, (
        f"{sum(len(f) for f in by_cause.values())} of {len(SEEDS_IN_PROCESS)} fuzzed configs "
        f"broke the promise (only a Config or a one-line ConfigError starting with the path), "
        f"{len(reports)} distinct cause(s) [{time.monotonic() - started:.1f}s]:\n" + "\n".join(reports)
    )


@pytest.mark.parametrize(("name", "build", "expect"), NAMED, ids=[n for n, _, _ in NAMED])
def test_named_input_in_process(
    name: str, build: Callable[[str], str | bytes], expect: Expect, tmp_path: Path, fuzz_env: dict[str, str]
) -> None:
    case = named_case(name, build, base_config())
    outcome = load_case(tmp_path / "tokend.toml", case.data, fuzz_env)
    assert outcome.kind in ("config", "error"), (
        f"{case.describe()}\n-> {outcome.signature}\n   {outcome.message!r}"
    )
    if expect == "reject":
        assert outcome.kind == "error", f"{case.describe()}\n-> accepted; must be a ConfigError"
    elif outcome.config is not None:
        problem = expect(outcome.config)
        assert problem is None, f"{case.describe()}\n-> {problem}"


# --------------------------------------------------------------------------- (b) tokend check


def check_problem(
    case: Case, tmp: Path, env: dict[str, str]
) -> tuple[str | None, subprocess.CompletedProcess[str]]:
    """Run ``tokend check`` on one case: what is wrong with its answer (or None), and it."""
    path = tmp / f"check-{re.sub(r'[^A-Za-z0-9-]', '_', case.id)}.toml"
    predicted = load_case(tmp / f"{path.stem}.predict.toml", case.data, env)
    path.write_bytes(case.data)
    result = run_tokend("check", "-c", path, tmp=tmp, env=env, timeout=30)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    problem = None
    if "Traceback" in result.stderr:
        problem = f"exit {result.returncode}, traceback: {last[:200]}"
    elif result.returncode not in (0, 78):
        problem = f"exit {result.returncode}: {last[:200]}"
    elif result.returncode == 78 and not any(line.startswith(f"tokend: {path}: ") for line in lines):
        problem = f"exit 78 without a 'tokend: {path}: ...' line: {result.stderr[:300]!r}"
    elif predicted.kind in ("error", "bad-error"):
        expected = "tokend: " + predicted.message.replace(f"{tmp / path.stem}.predict.toml", str(path))
        if result.returncode != 78 or lines != [expected]:
            problem = (
                f"config error not shown as its one line: exit {result.returncode}, {result.stderr[:300]!r}"
            )
    return problem, result


def test_tokend_check_exits_0_or_78_and_never_with_a_traceback(
    tmp_path: Path, fuzz_env: dict[str, str]
) -> None:
    base = base_config()
    problem, result = check_problem(Case("base", base.encode()), tmp_path, fuzz_env)
    assert problem is None and result.returncode == 0, (problem, result.stderr)
    cases = [fuzz_case(seed, base) for seed in SEEDS_CHECK]
    with ThreadPoolExecutor(4) as pool:
        problems = list(pool.map(lambda c: check_problem(c, tmp_path, fuzz_env)[0], cases))
    by_cause: dict[str, list[Case]] = {}
    for case, problem in zip(cases, problems, strict=True):
        if problem is not None:
            by_cause.setdefault(problem, []).append(case)
    assert not by_cause, f"tokend check, fuzzed configs: {len(by_cause)} distinct problem(s):\n" + "\n".join(
        f"- {problem}\n    {len(found)} case(s), e.g. {min(found, key=lambda c: len(c.data)).describe(200)}"
        for problem, found in by_cause.items()
    )


@pytest.mark.parametrize(("name", "build", "expect"), NAMED, ids=[n for n, _, _ in NAMED])
def test_named_input_in_tokend_check(
    name: str, build: Callable[[str], str | bytes], expect: Expect, tmp_path: Path, fuzz_env: dict[str, str]
) -> None:
    case = named_case(name, build, base_config())
    problem, result = check_problem(case, tmp_path, fuzz_env)
    assert problem is None, f"{case.describe()}\n-> {problem}"
    if expect is _same_as_base and result.returncode == 0:
        return
    # Rejected by the config, or (a name that is no user or group) by check's own checks.
    assert result.returncode == 78, f"{case.describe()}\n-> exit {result.returncode}: {result.stderr!r}"


# --------------------------------------------------------------------------- (c) the daemon


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def under(path: Path | None, root: Path) -> bool:
    return path is None or os.path.normpath(path).startswith(f"{root}{os.sep}")


def safe_to_apply(config: Config, tmp: Path) -> bool:
    """A fuzzed config the daemon would *apply* must not make it write outside tmp (it
    creates its state directory with parents), and must keep the reload lines logged."""
    paths: list[Path | None] = [config.state_dir, config.metrics_textfile]
    for cred in config.credentials.values():
        paths += [sink.path for sink in cred.sinks]
        paths += [cred.env_file, cred.ca_bundle, cred.on_rotate.pid_file if cred.on_rotate else None]
        paths += [Path(ref.value) for ref in cred.secret_refs() if ref.source == "file"]
    return config.log_level in ("debug", "info") and all(under(p, tmp) for p in paths)


OUTCOME = re.compile(r"reload (applied|rejected)")
EXCEPTION_LINE = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Exit)\b.*)$", re.MULTILINE)


class Fed:
    """One daemon fed configs: writes them atomically, sends SIGHUP, reads the outcome."""

    def __init__(
        self, start: Callable[..., DaemonProcess], tmp: Path, env: dict[str, str], base: str
    ) -> None:
        self.start, self.tmp, self.env, self.base = start, tmp, env, base
        self.config = tmp / "tokend.toml"
        self.offset = 0  # where the log of the current step starts
        self.put(base.encode())
        self.state_dir = load(self.config, environ=env).state_dir
        self.daemon = self.launch()

    def launch(self) -> DaemonProcess:
        daemon: DaemonProcess = self.start(self.config, self.tmp, self.env)
        deadline = time.monotonic() + 15
        while "ready:" not in daemon.log:
            assert daemon.proc.poll() is None, f"the daemon died on the base config:\n{daemon.log}"
            assert time.monotonic() < deadline, f"the daemon never got ready:\n{daemon.log}"
            time.sleep(0.02)
        self.offset = len(daemon.log)
        return daemon

    def restart(self) -> None:
        self.daemon.stop()
        self.put(self.base.encode())
        self.daemon = self.launch()

    def put(self, data: bytes) -> None:
        temp = self.config.with_name(".tokend.toml.new")
        temp.write_bytes(data)
        temp.chmod(0o600)
        os.replace(temp, self.config)

    def segment(self) -> str:
        return self.daemon.log[self.offset :]

    def quiet(self, window: float = 0.2, limit: float = 3.0) -> None:
        """Wait until the log stops growing: the refreshes a reload started have run."""
        deadline, size, since = time.monotonic() + limit, -1, time.monotonic()
        while time.monotonic() < deadline and self.daemon.proc.poll() is None:
            now_size = len(self.daemon.log)
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= window:
                return
            time.sleep(0.02)

    def feed(self, data: bytes, timeout: float = 5.0) -> tuple[str | None, str]:
        """Apply ``data`` by SIGHUP; the outcome ("applied", "rejected" or None: died or
        silent) and the log written meanwhile."""
        self.offset = len(self.daemon.log)
        self.put(data)
        self.daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            text = self.segment()
            hup = text.find("SIGHUP")
            found = OUTCOME.search(text, hup) if hup >= 0 else None
            if found:
                outcome = found.group(1)
            elif self.daemon.proc.poll() is not None:
                break
            else:
                time.sleep(0.01)
        if outcome == "applied":
            self.quiet()
        return outcome, self.segment()


def daemon_problems(fed: Fed, case: Case, predicted: Outcome, expect: Expect | None) -> list[str]:
    outcome, log = fed.feed(case.data)
    problems = []
    if fed.daemon.proc.poll() is not None:
        exc = EXCEPTION_LINE.findall(log)
        problems.append(
            f"daemon died (exit {fed.daemon.proc.returncode}): {exc[-1][:160] if exc else log[-300:]!r}"
        )
    elif outcome is None:
        problems.append(f"no 'reload applied/rejected' within 5 s of SIGHUP: {log[-300:]!r}")
    else:
        wanted = {"config": "applied", "error": "rejected"}.get(predicted.kind)
        if predicted.config is not None and predicted.config.state_dir != fed.state_dir:
            wanted = "rejected"  # a running daemon keeps its state directory (lock, cache, status)
        if expect == "reject" and outcome != "rejected":
            problems.append(f"reload {outcome}; must be rejected")
        elif wanted is not None and outcome != wanted:
            problems.append(f"reload {outcome}, but load() in process says {predicted.kind}")
    if outcome == "applied" and fed.daemon.proc.poll() is None:
        back, restore_log = fed.feed(fed.base.encode())  # each case is one edit of the good config
        log += restore_log
        if back != "applied":
            problems.append(f"restoring the good config: reload {back}")
    if "Traceback" in log and fed.daemon.proc.poll() is None:  # (a death is reported above)
        exc = EXCEPTION_LINE.findall(log[log.find("Traceback") :])
        problems.append(f"traceback in the log: {exc[0][:160] if exc else '?'}")
    if fed.daemon.proc.poll() is not None or outcome is None:
        fed.restart()
    return problems


def test_a_running_daemon_survives_every_fuzzed_reload(
    idp: TokenEndpoint,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
    fuzz_env: dict[str, str],
) -> None:
    idp.expires_in = None  # so that default_expires_in is what decides the lifetime
    started = time.monotonic()
    sleeper = subprocess.Popen(["sleep", "120"])  # the hook's pid_file target: WINCH is harmless
    try:
        (tmp_path / "hook.pid").write_text(f"{sleeper.pid}\n")
        base = base_config(idp.url, free_port())
        fed = Fed(daemons, tmp_path, fuzz_env, base)
        cases: list[tuple[Case, Outcome, Expect | None]] = []
        for name, build, strict in NAMED:
            case = named_case(name, build, base)
            cases.append((case, load_case(fed.config.with_name("p.toml"), case.data, fuzz_env), strict))
        random_cases = 0
        for seed in SEEDS_DAEMON:
            if random_cases == DAEMON_CASES:
                break
            case = fuzz_case(seed, base)
            predicted = load_case(fed.config.with_name("p.toml"), case.data, fuzz_env)
            if predicted.config is not None and not safe_to_apply(predicted.config, tmp_path):
                continue
            cases.append((case, predicted, None))
            random_cases += 1
        assert random_cases == DAEMON_CASES

        by_cause: dict[str, list[Case]] = {}
        for case, predicted, expect in cases:
            for problem in daemon_problems(fed, case, predicted, expect):
                by_cause.setdefault(problem, []).append(case)

        # The good config again: applied, alive, and every sink holds a token.
        outcome, log = fed.feed(base.encode())
        assert outcome == "applied" and fed.daemon.proc.poll() is None, log[-2000:]
        fed.quiet()
        for sink in ("api.raw", "billing.token"):
            token = (tmp_path / "out" / sink).read_text().strip()
            assert token in idp.issued_at, f"{sink} holds {token!r}, not a token the IdP issued"
        elapsed = time.monotonic() - started
        assert not by_cause, (
            f"{len(cases)} reloads ({len(NAMED)} named, {DAEMON_CASES} random) in {elapsed:.1f}s; "
            f"{len(by_cause)} distinct problem(s):\n"
            + "\n".join(
                f"- {problem}\n    {len(found)} case(s): {', '.join(c.id for c in found[:12])}"
                f"\n    e.g. {min(found, key=lambda c: len(c.data)).describe(200)}"
                for problem, found in by_cause.items()
            )
        )
    finally:
        sleeper.terminate()
        sleeper.wait()


def test_fuzz_cases_are_reproducible() -> None:
    """Same seed, same bytes: a failure's seed is enough to replay it."""
    base = base_config()
    assert [fuzz_case(s, base).data for s in range(50)] == [fuzz_case(s, base).data for s in range(50)]
    assert len({fuzz_case(s, base).data for s in range(50)}) > 45


FEDERATION = """\
# workload identity federation: the platform's JWT is the client's proof
[tokend]
state_dir = "state"

[credentials.entra]
token_url = "@URL@"
client_id = "00000000-0000-0000-0000-000000000000"
client_assertion_file = "tokens/token"
scope = "https://graph.microsoft.com/.default"
fleet = false

[credentials.k8s]
token_url = "@URL@"
client_id = "system:serviceaccount:payments:api"
client_assertion_credential = "sa-token"
client_auth = "private_key_jwt"
audience = "https://idp.example"

[[credentials.k8s.sink]]
path = "out/k8s.token"
"""


def test_fuzzed_federation_configs_give_a_config_or_a_one_line_config_error(
    tmp_path: Path, fuzz_env: dict[str, str]
) -> None:
    """The client assertion keys under the same fuzzer: never a crash, never a long error."""
    base = FEDERATION.replace("@URL@", URL)
    path = tmp_path / "tokend.toml"
    assert load_case(path, base.encode(), fuzz_env).kind == "config", "the base config must be valid"
    kinds: dict[str, int] = {}
    broken = []
    for seed in range(30_000, 30_000 + 150):
        case = fuzz_case(seed, base)
        outcome = load_case(path, case.data, fuzz_env)
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
        if outcome.kind in ("crash", "bad-error"):
            broken.append(f"{case.describe(160)} -> {outcome.message[:200]!r}")
    assert kinds.get("config", 0) >= 5 and kinds.get("error", 0) >= 30, kinds
    assert not broken, "\n".join(broken[:10])
