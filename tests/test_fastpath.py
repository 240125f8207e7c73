"""``tokend token``'s fast path against the validated path it short-cuts.

The fast path may only ever print a token the validated path would print too. These tests
hold its pieces to the validated ones (TOML against tomllib, durations, env files and cache
entries against tokend's own readers, the cache key over many generated configs), check
that it gives up on what it does not understand, and that an edit making the config
invalid still exits 78.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tokend.config
from tokend.cli import fastpath as fp
from tokend.cli import main as cli
from tokend.cli import memo
from tokend.config import Config, ConfigError, CredentialConfig, Key, SecretRef, load, parse_duration, schema
from tokend.config.parse import PRESET_VALUES
from tokend.config.schema import keys_of
from tokend.core import identity, limits, policy
from tokend.core.limits import MAX_TOKEN_CHARS
from tokend.core.tokens import Token
from tokend.io.cache import CacheEntry, TokenCache, cache_key
from tokend.io.secret_sources import read_env_file, read_secret

SEEDS = [1, 2, 3]
MINIMAL = '[credentials.a]\ntoken_url = "https://x/t"\nclient_id = "i"\nclient_secret = "s"\n'
OTHER = '\n[credentials.other]\ntoken_url = "https://idp.example/t"\nclient_id = "x"\nclient_secret = "y"\n'


def typed(value: object) -> object:
    """A value with its types spelled out: 1, 1.0 and True differ, and so do 0.0 and -0.0."""
    if isinstance(value, dict):
        return ("table", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def fast_toml(text: str) -> object:
    try:
        return typed(fp.parse_toml(text))
    except fp.GiveUp:
        return None


def tomllib_toml(text: str) -> object:
    try:
        return typed(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return None


# --------------------------------------------------------------------------- mirrors


def test_the_identity_it_computes_is_the_schemas() -> None:
    # The identity: the fast path passes these six, in this order (the rest, the client
    # certificate's and the DPoP key's thumbprints and a token exchange's inputs, it never
    # passes: it gives up on a certificate, on DPoP and on a grant_type).
    assert list(inspect.signature(identity.cache_key).parameters) == [
        "token_url",
        "client_id",
        "scope",
        "params",
        "default_expires_in",
        "issuer",
        "tls_cert",
        "dpop_jkt",
        "grant",
        "subject_token",
        "actor_token",
        "requested_token_type",
        "assertion",
        "assertion_subject",
    ]
    assert tokend.config.IDENTITY_FIELDS == (
        "token_url",
        "client_id",
        "scope",
        "extra_params",
        "default_expires_in",
        "issuer",
        "tls_cert_file",
        "dpop_key",
        "grant_type",
        "subject_token",
        "actor_token",
        "requested_token_type",
        "assertion",
        "assertion_subject",
    )
    assert keys_of(CredentialConfig, "client_id") == fp.SECRET_KEYS
    presets = {name: preset["token_url"] for name, preset in PRESET_VALUES.items()}
    assert presets == {name: preset["token_url"] for name, preset in limits.PRESETS.items()}
    for environ in ({}, {"TOKEND_CONFIG": "rel/t.toml"}, {"CONFIGURATION_DIRECTORY": "/etc/a:/etc/b"}):
        assert Path(fp.default_config_path(environ)) == tokend.config.default_config_path(environ)


# --------------------------------------------------------------------------- the bounds

# Every field the fast path reads from a credential's table: the identity (derived from the
# schema, so a new field of it lands here), the timing and what leads to the identity.
FAST_PATH_FIELDS: dict[type, tuple[str, ...]] = {
    Config: ("state_dir",),
    CredentialConfig: (
        *tokend.config.IDENTITY_FIELDS,
        "provider",
        "env_file",
        "refresh_at",
        "min_ttl_margin",
    ),
}
# Bounds the fast path leaves to the validated path: it only serves a config whose exact
# bytes the validated path accepted (the memo), and passes these on unread, or gives up.
VOUCHED_BY_THE_MEMO = {
    (CredentialConfig, "token_url"),  # a string of at most MAX_STRING characters
    (CredentialConfig, "issuer"),
    (CredentialConfig, "client_id"),
    (CredentialConfig, "scope"),
    (CredentialConfig, "extra_params"),
    (CredentialConfig, "provider"),  # one of the presets, which the fast path checks itself
    (CredentialConfig, "tls_cert_file"),  # the fast path gives up on a client certificate
    (CredentialConfig, "dpop_key"),  # and on DPoP (`tokend token` cannot serve a bound token)
    (CredentialConfig, "grant_type"),  # and on any grant_type (a token exchange's identity)
    (CredentialConfig, "subject_token"),
    (CredentialConfig, "actor_token"),
    (CredentialConfig, "requested_token_type"),
    (CredentialConfig, "assertion"),
    (CredentialConfig, "assertion_subject"),
}


def spec_of(cls: type, name: str) -> Key:
    (found,) = (spec for spec in schema(cls) if spec.field == name)
    return found


def validated(cls: type, name: str, value: object, tmp: Path) -> object:
    """The field as the validated path reads ``name = value``, or None if it refuses it."""
    where = "[tokend]\n" if cls is Config else ""
    toml = (
        f"{where}{name} = {json.dumps(value)}\n{MINIMAL}"
        if cls is Config
        else f"{MINIMAL}{name} = {json.dumps(value)}\n"
    )
    try:
        config = tokend.config.parse(toml, tmp / "t.toml", environ={})
    except ConfigError:
        return None
    found = getattr(config if cls is Config else config.credentials["a"], name)
    return str(found) if isinstance(found, Path) else found


def fast(cls: type, name: str, value: object, tmp: Path) -> object:
    """The field as the fast path reads ``name = value``, or None if it gives up."""
    try:
        if cls is Config:
            return fp.state_dir_of({"tokend": {name: value}}, str(tmp / "t.toml"), {})
        if name == "env_file":
            return fp.config_relative(value, str(tmp / "t.toml"))
        if name == "default_expires_in":  # the fast path hands it to the cache key only
            tbl = {"token_url": "https://x/t", "client_id": "i", name: value}
            return fp.credential_key(tbl, str(tmp / "t.toml"), {})
        return fp.timing({name: value})[0 if name == "refresh_at" else 1]
    except fp.GiveUp:
        return None


def edges(spec: Key) -> list[object]:
    """Values at and beyond each bound of a key, and its default, as TOML would give them."""
    if spec.kind == "number":
        low, high = float(spec.low or 0), float(spec.high or 0)
        return [low, high, low - 1e-9, high + 1e-9, spec.default, (low + high) / 2]
    most = int(spec.high or 0)
    if spec.kind == "duration":
        least: list[object] = [0, "0s", "1ms"] if spec.low is None else [int(spec.low), f"{int(spec.low)}s"]
        return [
            *least,
            "1ms",
            most,
            most + 1,
            f"{most}s",
            f"{most + 1}s",
            f"{most * 1000 + 1}ms",
            spec.default,
        ]
    assert spec.kind == "path", spec
    return ["/" + "x" * (most - 1), "/" + "x" * most, "x" * most, "", " "]


def test_every_bound_of_the_schema_the_fast_path_reads_is_one_it_applies_or_the_memo_vouches_for() -> None:
    """No field the fast path reads has a bound that nobody tied to it: each is probed at
    its edges below, or listed as the validated path's alone."""
    for cls, names in FAST_PATH_FIELDS.items():
        for name in names:
            spec = spec_of(cls, name)
            if (cls, name) in VOUCHED_BY_THE_MEMO:
                continue
            assert spec.kind in ("number", "duration", "path"), (cls.__name__, name, spec.kind)
            assert spec.high is not None, (cls.__name__, name)
    probed = {(cls, name) for cls, names in FAST_PATH_FIELDS.items() for name in names}
    assert probed >= VOUCHED_BY_THE_MEMO


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (cls, name)
        for cls, names in FAST_PATH_FIELDS.items()
        for name in names
        if (cls, name) not in VOUCHED_BY_THE_MEMO
    ],
    ids=lambda item: item if isinstance(item, str) else item.__name__,
)
def test_the_fast_path_and_the_schema_agree_at_every_bound(cls: type, name: str, tmp_path: Path) -> None:
    """At each bound the schema declares (and just beyond it, and at the default), the fast
    path reads what the validated path reads, or gives up where it refuses."""
    spec = spec_of(cls, name)
    for value in edges(spec):
        expected = validated(cls, name, value, tmp_path)
        if name == "default_expires_in" and expected is not None:
            cred = tokend.config.parse(
                f"{MINIMAL}{name} = {json.dumps(value)}\n", tmp_path / "t.toml", environ={}
            )
            expected = cache_key(cred.credentials["a"], "i")
        got = fast(cls, name, value, tmp_path)
        assert got == expected, (name, value)
    # ...and with the key left out, both take the schema's default.
    if cls is CredentialConfig and name in ("refresh_at", "min_ttl_margin"):
        assert fp.timing({})[0 if name == "refresh_at" else 1] == spec.default


def test_it_reads_files_within_the_validated_paths_limits(tmp_path: Path) -> None:
    """The secret file's and the config's size: at the limit read, beyond it given up on
    (the validated path refuses them; the limits are tokend.core.limits', one each)."""
    secret = tmp_path / "id"
    cred = tokend.config.parse(MINIMAL, tmp_path / "t.toml", environ={}).credentials["a"]
    ref = SecretRef("client_id_file", "file", str(secret))
    for size, readable in ((limits.MAX_SECRET_BYTES, True), (limits.MAX_SECRET_BYTES + 1, False)):
        secret.write_text("x" * size)
        try:
            read_secret(cred, ref, {})
            validated_ok = True
        except ConfigError:
            validated_ok = False
        try:
            fp.secret_file(str(secret))
            fast_ok = True
        except fp.GiveUp:
            fast_ok = False
        assert validated_ok == fast_ok == readable, size
    config = tmp_path / "big.toml"
    for size, readable in ((limits.MAX_CONFIG_BYTES, True), (limits.MAX_CONFIG_BYTES + 1, False)):
        config.write_bytes(MINIMAL.encode().ljust(size, b"\n"))
        try:
            load(config, {})
            validated_ok = True
        except ConfigError:
            validated_ok = False
        try:
            fp.read_regular(str(config), limits.MAX_CONFIG_BYTES)
            fast_ok = True
        except fp.GiveUp:
            fast_ok = False
        assert validated_ok == fast_ok == readable, size


@pytest.mark.parametrize("value", ["0s", "1d", "1d1s", "24h", "86401s", 86400, 86401, "0", -1])
def test_min_ttl_margin_bounds_as_the_validated_path(value: object) -> None:
    toml = f"{MINIMAL}min_ttl_margin = {json.dumps(value)}\n"
    try:
        expected: float | None = tokend.config.parse(toml, Path("/t.toml")).credentials["a"].min_ttl_margin
    except ConfigError:
        expected = None
    try:
        got: float | None = fp.timing({"min_ttl_margin": value})[1]
    except fp.GiveUp:
        got = None
    assert got == expected


@pytest.mark.parametrize("value", ["1s", "366d", "366d1s", "0s", 0, 1, 366 * 86400, 366 * 86400 + 1, "1.5h"])
def test_default_expires_in_bounds_as_the_validated_path(value: object, tmp_path: Path) -> None:
    toml = f"{MINIMAL}default_expires_in = {json.dumps(value)}\n"
    try:
        cred = tokend.config.parse(toml, tmp_path / "t.toml").credentials["a"]
        expected: str | None = cache_key(cred, "i")
    except ConfigError:
        expected = None
    try:
        got: str | None = fp.credential_key(
            tomllib.loads(toml)["credentials"]["a"], str(tmp_path / "t.toml"), {}
        )
    except fp.GiveUp:
        got = None
    assert got == expected


# --------------------------------------------------------------------------- TOML

SAME_AS_TOMLLIB = [
    "",
    "# only a comment\n",
    "a = 1\nb = -0\nc = 0.5\nd = -1.25\ne = true\nf = false\ng = 0\nh = 123456789012345678901234567890\n",
    "a = \"x\" # a comment\nb = 'lit\\eral'\nc = \"\"\nd = ''\n",
    "[t]\nx = [1, 2,\n  3, # c\n]\ny = []\nz = [ ]\nw = ['a', \"b\",]\n",
    '[t]\ny = { a = "1", b = [1, 2], c = 1.5 }\nz = {}\nw = { }\n',
    "[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n\n[c]\n",
    "[a.b]\n[a.c]\nk = 'v'\n",
    "a = 1\r\nb = 2\r\n",
    "\ta\t=\t1\t\n  b = 2  \n",
    'a = "ünï ✓ \u00a0"  # ☃\n',
    "x=1\n[y]\n",
    "[a]\nb = 1\n[a.c]\n",
    "a = -0.0\nb = 0.0\n",
    '[tokend]\nstate_dir = "/var/lib/tokend"\n\n[credentials.api]\ntoken_url = "https://idp/t"\n'
    'client_id = "c"\nclient_secret_file = "/etc/tokend/api.secret"\nscope = ["a b", "c"]\n'
    'extra_params = { prompt = "none", n = 3 }\n\n[[credentials.api.sink]]\npath = "/run/tokend/api"\n'
    'mode = "0640"\n\n[credentials.api.on_rotate]\ncommand = ["/bin/true"]\n',
]

VALID_BUT_NOT_UNDERSTOOD = [
    'a = """x"""\n',
    "a = '''x'''\n",
    'a = "x\\ty"\n',
    'a = "\\u00e9"\n',
    "a.b = 1\n",
    '"a" = 1\n',
    '["a"]\n',
    "a = 1979-05-27\n",
    "a = 07:32:00\n",
    "a = 1e3\n",
    "a = 1_000\n",
    "a = 0x10\n",
    "a = inf\n",
    "a = nan\n",
    "a = +1\n",
    "[ a ]\n",
    "[a . b]\n",
    "[a.b]\n[a]\n",
    "a = [[1], [2]]\n",
    "a = [{x = 1}]\n",
    "a = {b = {c = 1}}\n",
    "a = {b.c = 1}\n",
    "[[a]]\n[a.b]\n",
    "\ufeffa = 1\n",  # a BOM is the caller's to strip, as tokend.config.parse does
]

INVALID = [
    "a = 1\na = 2\n",
    "[a]\n[a]\n",
    "a = 1 b = 2\n",
    'a = "x\n',
    "a = 'x\n",
    "a = {b = 1,}\n",
    "a = {b = 1, b = 2}\n",
    "a = [1 2]\n",
    "a = [1,,2]\n",
    "a = 01\n",
    "a = 1.\n",
    "a = .5\n",
    "a = \n",
    "a\n",
    "= 1\n",
    "[a\n",
    "[[a]\n",
    "[a]]\n",
    "[]\n",
    'a = "\x01"\n',
    "a = 1\rb = 2\n",
    "# \x7f\n",
    "[[a]]\n[a]\n",
    "a = [1]\n[[a]]\n",
    "a = {b = 1}\n[a.c]\n",
    "a = {b = 1}\n[a]\n",
    "[a]\nb = 1\n[a.b]\n",
    "a = 1\n[a]\n",
    "a = 1\n[a.b]\n",
    "a = True\n",
    "a = -\n",
    "a = 1.2.3\n",
    "a = {\nb = 1}\n",
]


@pytest.mark.parametrize("text", SAME_AS_TOMLLIB)
def test_toml_it_reads_as_tomllib_does(text: str) -> None:
    assert fast_toml(text) is not None
    assert fast_toml(text) == tomllib_toml(text)


@pytest.mark.parametrize("text", VALID_BUT_NOT_UNDERSTOOD)
def test_toml_outside_its_subset_gives_up(text: str) -> None:
    assert fast_toml(text) is None


@pytest.mark.parametrize("text", INVALID)
def test_invalid_toml_gives_up(text: str) -> None:
    assert tomllib_toml(text) is None, "the case is meant to be invalid TOML"
    assert fast_toml(text) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_toml_fuzzed_never_disagrees_with_tomllib(seed: int) -> None:
    """Mutated documents: the subset reader gives up or reads exactly what tomllib reads."""
    rng = random.Random(seed)
    palette = "\"'[]{}=,.#\n\t -_01aZé\\\r+:\x00"
    others = VALID_BUT_NOT_UNDERSTOOD + INVALID
    agreed = 0
    for _ in range(4000):
        text = rng.choice(SAME_AS_TOMLLIB if rng.random() < 0.7 else others)
        if rng.random() < 0.3:
            text += rng.choice(SAME_AS_TOMLLIB + others)
        for _ in range(rng.randint(0, 3)):
            i = rng.randint(0, len(text))
            op = rng.random()
            if op < 0.4:
                text = text[:i] + rng.choice(palette) + text[i:]
            elif op < 0.7:
                text = text[:i] + text[i + 1 :]
            else:
                text = text[:i] + rng.choice(palette) + text[i + 1 :]
        ours, theirs = fast_toml(text), tomllib_toml(text)
        assert ours is None or ours == theirs, repr(text)
        agreed += ours is not None
    assert agreed > 500  # the subset is not so small that the check is empty


# --------------------------------------------------------------------------- durations


def test_durations_fuzzed_as_parse_duration() -> None:
    rng = random.Random(7)
    values: list[object] = [
        "1d2h3m4s5ms",
        "1m5ms",
        "5ms",
        "1h1h",
        "1s1m",
        "0",
        "0s",
        "999999999s",
        "1000000000s",
        " 5m ",
        "1H30M",
        "\uff15m",
        "1.5s",
        "",
        " ",
        "ms",
        "5 m",
        "5mss",
        True,
        False,
        0,
        1,
        -1,
        366 * 86400,
        366 * 86400 + 1,
        1.5,
        None,
        ["1s"],
    ]
    alphabet = "0123456789dhmsDHMS \t."
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(5000)]
    accepted = 0
    for value in values:
        try:
            expected: float | None = parse_duration(value)
        except ValueError:
            expected = None
        try:
            got: float | None = fp.duration(value)
        except fp.GiveUp:
            got = None
        assert got == expected and type(got) is type(expected), repr(value)
        accepted += got is not None
    assert accepted > 100


# --------------------------------------------------------------------------- the cache key


class Generated:
    """Random but valid configs, in the TOML tokend's users write, with everything their
    credentials read (secret files, env files, systemd credentials, variables)."""

    def __init__(self, rng: random.Random, tmp: Path) -> None:
        self.rng = rng
        self.tmp = tmp
        self.environ: dict[str, str] = {"HOME": os.environ["HOME"]}
        self.n = 0

    def string(self, value: str) -> str:
        """A basic or a literal string: no escapes, which the fast path does not read."""
        if "'" not in value and self.rng.random() < 0.3:
            return f"'{value}'"
        assert '"' not in value and "\\" not in value
        return f'"{value}"'

    def line(self, key: str, value: str) -> str:
        space = self.rng.choice([" ", "", "  ", "\t"])
        comment = self.rng.choice(["", "", "  # note", "\t#"])
        return f"{key}{space}={space}{value}{comment}\n"

    def array(self, items: list[str]) -> str:
        if self.rng.random() < 0.3:
            return "[\n  " + ",\n  ".join(items) + ",\n]"
        return "[" + ", ".join(items) + "]"

    def secret_file(self, content: str) -> str:
        self.n += 1
        where = self.rng.choice(["relative", "absolute", "home"])
        name = f"id{self.n}"
        newline = self.rng.choice(["", "\n", "\r\n"])
        if where == "relative":
            (self.tmp / "secrets").mkdir(exist_ok=True)
            (self.tmp / "secrets" / name).write_text(content + newline)
            return self.rng.choice([f"secrets/{name}", f"./secrets/{name}", f"secrets//{name}"])
        if where == "home":
            Path(os.environ["HOME"]).mkdir(exist_ok=True)
            (Path(os.environ["HOME"]) / name).write_text(content + newline)
            return f"~/{name}"
        (self.tmp / name).write_text(content + newline)
        return str(self.tmp / name)

    def client_id(self) -> str:
        rng = self.rng
        value = rng.choice(["client-1", "a b", "ünï", "x" * 50, "c$1"])
        source = rng.choice(["inline", "env", "env_file", "env_file_empty", "file", "credential"])
        if source.startswith("env_file"):
            value = rng.choice(["client-1", "x" * 50, "c$1", "a_b"])  # dotenv, unquoted
        if source == "inline":
            return self.line("client_id", self.string(value))
        if source == "file":
            return self.line("client_id_file", self.string(self.secret_file(value)))
        self.n += 1
        variable = f"FAST_ID_{self.n}"
        if source == "credential":
            directory = self.tmp / "creds"
            directory.mkdir(exist_ok=True)
            (directory / variable).write_text(value + "\n")
            self.environ["CREDENTIALS_DIRECTORY"] = str(directory)
            return self.line("client_id_credential", self.string(variable))
        env_line = self.line("client_id_env", self.string(variable))
        if source == "env":
            self.environ[variable] = value
            return env_line
        dotenv = self.tmp / f"env{self.n}"
        lines = ["# a comment", "", "OTHER=1", f"{variable}={value if source == 'env_file' else ''}"]
        rng.shuffle(lines)
        dotenv.write_text("\n".join(lines) + rng.choice(["", "\n"]))
        if source == "env_file_empty":
            self.environ[variable] = value  # an empty value in the file: the environment's
        return env_line + self.line(
            "env_file", self.string(dotenv.name if rng.random() < 0.5 else str(dotenv))
        )

    def credential(self, name: str) -> str:
        rng = self.rng
        body = ""
        provider = rng.random() < 0.2
        if provider:
            body += self.line("provider", self.string("eventbookings"))
        if rng.random() < 0.2:  # discovery: the issuer instead of a token_url (and a preset's)
            issuers = ["https://idp.example", "https://idp.example/realms/a/", "http://127.0.0.1:8080/x"]
            body += self.line("issuer", self.string(rng.choice(issuers)))
        elif not provider or rng.random() < 0.5:
            url = rng.choice(
                [
                    "https://idp.example/token",
                    "https://idp.example:8443/oauth2/token?tenant=a",
                    "http://127.0.0.1:8080/t",
                    "https://[::1]/t",
                ]
            )
            body += self.line("token_url", self.string(url))
        body += self.client_id()
        body += self.line("client_secret", self.string("s3cret-value"))
        scope = rng.choice([None, "str", "list"])
        words = ["read", "write", "api://x/.default", "openid", "ünï"]
        if scope == "str":
            body += self.line(
                "scope", self.string(rng.choice([" ", "  ", "\t", " \t "]).join(rng.sample(words, 3)))
            )
        elif scope == "list":
            items = [" ".join(rng.sample(words, rng.randint(1, 2))) for _ in range(rng.randint(1, 3))]
            body += self.line("scope", self.array([self.string(i) for i in items]))
        audience = rng.choice([None, "str", "list", "int"])
        if audience == "str":
            body += self.line("audience", self.string("https://api.example"))
        elif audience == "list":
            body += self.line("audience", self.array([self.string("b"), self.string("a"), "3"]))
        elif audience == "int":
            body += self.line("audience", "42")
        if rng.random() < 0.4:
            uris = ["https://api.example/x", "urn:example:res", "https://b.example/"]
            value = self.string(uris[0]) if rng.random() < 0.5 else self.array([self.string(u) for u in uris])
            body += self.line("resource", value)
        params = {
            "prompt": self.string("none"),
            "n": "3",
            "f": "1.5",
            "neg": "-2",
            "list": '["z", "a", 0.25]',
        }
        if audience is None and rng.random() < 0.3:
            params["audience"] = self.string("inner")
        chosen = rng.sample(sorted(params), rng.randint(0, 3))
        header_params = chosen and rng.random() < 0.3
        if chosen and not header_params:
            body += self.line("extra_params", "{ " + ", ".join(f"{k} = {params[k]}" for k in chosen) + " }")
        if rng.random() < 0.6:
            value = rng.choice(
                ['"1h"', '"90m"', '"3600s"', '"1h0m0s"', '"2d"', '"1500ms"', '" 1H30M "', "3600", "7200", "1"]
            )
            body += self.line("default_expires_in", value)
        if rng.random() < 0.4:
            body += self.line("refresh_at", rng.choice(["0.5", "0.65", "0.95", "0.8"]))
        if rng.random() < 0.4:
            body += self.line("min_ttl_margin", rng.choice(["0", '"0s"', '"5m"', "30", '"1d"', '"250ms"']))
        text = f"[credentials.{name}]\n{body}"
        if header_params:
            text += f"\n[credentials.{name}.extra_params]\n" + "".join(
                self.line(k, params[k]) for k in chosen
            )
        if rng.random() < 0.5:
            text += f'\n[[credentials.{name}.sink]]\npath = "{self.tmp}/out/{name}.token"\nmode = "0640"\n'
        return text

    def config(self) -> str:
        rng = self.rng
        head = ""
        where = rng.choice(["absolute", "relative", "home", "default", "xdg", "systemd"])
        if where == "absolute":
            head = f'[tokend]\nstate_dir = "{self.tmp}/state"\n'
        elif where == "relative":
            head = "[tokend]\nstate_dir = 'state'\nlog_level = \"warning\"\n"
        elif where == "home":
            head = '[tokend]\nstate_dir = "~/state"\n'
        elif where == "xdg":
            self.environ["XDG_STATE_HOME"] = str(self.tmp / "xdg")
        elif where == "systemd":
            self.environ["STATE_DIRECTORY"] = f"{self.tmp}/sd:/elsewhere"
        names = rng.sample(["api", "b-2", "C_3", "x"], rng.randint(1, 3))
        return head + "\n".join(self.credential(name) for name in names)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ "~" is expanded from the process's $HOME, by pathlib and os.path alike."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("seed", SEEDS)
def test_the_cache_key_is_the_validated_one_over_generated_configs(
    seed: int, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    checked = 0
    for i in range(40):
        tmp = tmp_path / f"c{i}"
        tmp.mkdir()
        (tmp / "out").mkdir()
        generated = Generated(rng, tmp)
        text = generated.config()
        config_path = tmp / "tokend.toml"
        config_path.write_text(text)
        environ = generated.environ
        monkeypatch.chdir(rng.choice([tmp, tmp_path, Path("/")]))
        config = load(config_path, environ)  # valid, or the generator is wrong

        file = fp.absolute(str(config_path))
        data = fp.parse_toml(config_path.read_text())
        assert Path(fp.state_dir_of(data, file, environ)) == config.state_dir, text
        for name, cred in config.credentials.items():
            expected = cache_key(cred, read_secret(cred, cred.client_id, environ))
            tbl = data["credentials"][name]
            assert fp.credential_key(tbl, file, environ) == expected, f"{name} in\n{text}"
            assert fp.timing(tbl) == (cred.refresh_at, cred.min_ttl_margin), text
            checked += 1
    assert checked >= 40


def test_an_issuer_is_an_identity_of_its_own(tmp_path: Path) -> None:
    """A credential found by discovery never shares a cache entry with one configured by a
    token_url, even one equal to the issuer, and the fast path computes its key as the
    validated path does (so it can never serve another identity's token)."""
    file = tmp_path / "t.toml"
    keys = set()
    for where in ('issuer = "https://idp.example"', 'token_url = "https://idp.example"'):
        text = f'[credentials.a]\n{where}\nclient_id = "i"\nclient_secret = "s"\n'
        cred = tokend.config.parse(text, file, environ={}).credentials["a"]
        expected = cache_key(cred, "i")
        assert fp.credential_key(tomllib.loads(text)["credentials"]["a"], str(file), {}) == expected
        keys.add(expected)
    assert len(keys) == 2
    both = {"issuer": "https://idp.example", "token_url": "https://idp.example", "client_id": "i"}
    with pytest.raises(fp.GiveUp):
        fp.credential_key(both, str(file), {})


# --------------------------------------------------------------------------- env files, cache entries


def test_env_files_fuzzed_as_tokend_reads_them(tmp_path: Path) -> None:
    rng = random.Random(11)
    lines = [
        "ID=abc",
        "ID=",
        "# c",
        "",
        "  ",
        "export ID=x",
        "ID='x'",
        'ID="x"',
        "ID=a b",
        "ID=a #c",
        "ID",
        "OTHER=1",
        "ID=x=y",
        "ID=$HOME",
        "ID=${X}",
        " ID=x",
        "ID =x",
        "ID= x",
        "\tID=x",
        "1D=x",
        "ID=é",
        "ID=a\\nb",
        "ID=\x0bx",
        "  # indented comment",
        "ID=#x",
        "ID=x\r",
    ]
    path = tmp_path / "env"
    accepted = 0
    for _ in range(3000):
        text = "\n".join(rng.choice(lines) for _ in range(rng.randint(0, 4))) + rng.choice(["", "\n"])
        path.write_text(text)
        try:
            ours: dict[str, str] | None = fp.env_file(str(path))
        except fp.GiveUp:
            ours = None
        if ours is not None:
            assert ours == read_env_file(path, lambda m: ConfigError(path, m)), repr(text)
            accepted += 1
    assert accepted > 300


def cache_records() -> Iterator[object]:
    token = {
        "access_token": "tok-1",
        "token_type": "Bearer",
        "expires_at": 2000.5,
        "obtained_at": 1000,
        "scope": None,
        "refresh_token": None,
    }
    yield {"version": 1, "token": token}
    variants: dict[str, list[object]] = {
        "access_token": [
            "",
            "a b",
            "a'b",
            'a"b',
            "a$b",
            "a`b",
            "a\\b",
            "x" * (MAX_TOKEN_CHARS + 1),
            5,
            None,
            "é",
            "a\tb",
        ],
        "token_type": ["", "bearer", "Bearer x", "x" * 65, None, 3, "DPoP"],
        "expires_at": [True, "3", None, 1000, 999.0, 1e400, 10**400],
        "obtained_at": [False, None, 2000.5, "0"],
        "scope": ["read", 3, ["a"]],
        "refresh_token": ["r", 3],
    }
    for key, values in variants.items():
        for value in values:
            yield {"version": 1, "token": {**token, key: value}}
    yield {"version": 1, "token": {k: v for k, v in token.items() if k != "token_type"}}
    yield {"version": 1}
    yield {"token": "x"}
    yield [token]
    yield None


def fast_entry(raw: bytes) -> tuple[str, float, float] | None:
    try:
        return fp.cached_entry(raw)
    except Exception:  # anything fresh_token gives up on
        return None


def test_cache_entries_are_judged_as_the_token_cache_judges_them(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    (tmp_path / "tokens").mkdir()
    accepted = 0
    raws = [json.dumps(r).encode() for r in cache_records()]
    raws += [b"", b"{", b'{"token": NaN}', b"\xff", '{"token": {"access_token": "ü"}}'.encode("utf-16")]
    for raw in raws:
        cache.path("k").write_bytes(raw)
        ours = fast_entry(raw)
        if ours is None:
            continue
        entry = cache.load("k")
        assert entry is not None, raw
        assert ours == (entry.token.access_token, entry.token.expires_at, entry.token.obtained_at)
        accepted += 1
    assert accepted >= 5


def test_freshness_is_policys() -> None:
    rng = random.Random(5)
    for _ in range(20000):
        obtained = rng.uniform(0, 2e9)
        lifetime = rng.choice([rng.uniform(0.001, 2), rng.uniform(1, 100000)])
        refresh_at = rng.uniform(0.5, 0.95)
        margin = rng.choice([0.0, 60.0, rng.uniform(0, 86400)])
        token = Token("t", obtained + lifetime, obtained)
        due = policy.refresh_due_at(token, refresh_at=refresh_at, min_ttl_margin=margin)
        for now in (due, due - 1e-6, due + 1e-6, rng.uniform(obtained, obtained + lifetime)):
            expected = policy.is_fresh(token, now, refresh_at=refresh_at, min_ttl_margin=margin)
            assert fp.is_fresh(token.expires_at, token.obtained_at, now, refresh_at, margin) == expected


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["token", "api"], (None, "api")),
        (["token", "api", "-c", "x.toml"], ("x.toml", "api")),
        (["token", "-c", "x.toml", "api"], ("x.toml", "api")),
        (["token", "--config", "./x.toml", "api"], ("./x.toml", "api")),
        (["token", "--config=x.toml", "api"], ("x.toml", "api")),
        (["token", "api", "--config=/a b/x.toml"], ("/a b/x.toml", "api")),
        (["token", "token"], (None, "token")),
    ],
)
def test_the_token_command_lines_it_answers(words: list[str], expected: tuple[str | None, str]) -> None:
    assert fp.token_request(words) == expected
    args = cli.build_parser("token").parse_args(words)  # argparse reads them alike
    assert (args.config, args.name) == (Path(expected[0]) if expected[0] else None, expected[1])


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["token"],
        ["fetch", "api"],
        ["token", "api", "extra"],
        ["token", "-h"],
        ["token", "api", "--help"],
        ["token", "api", "-c"],
        ["token", "-c", "a", "-c", "b", "api"],
        ["token", "-cx.toml", "api"],
        ["token", "-c=x.toml", "api"],
        ["token", "--conf", "x", "api"],
        ["token", "api", "--", "x"],
        ["token", "-c", "-x", "api"],
        ["token", "--config=", "api"],
        ["token", ""],
        ["token", "-1"],
        ["-c", "x", "token", "api"],
        ["token", "api", "-c", ""],
        ["--version"],
    ],
)
def test_other_command_lines_are_argparses(words: list[str]) -> None:
    assert fp.token_request(words) is None


@pytest.mark.parametrize(
    "path", ["x.toml", "./x.toml", "a/../b.toml", "a//b.toml", "/abs/x.toml", "///abs", "/a/./b/", "~/x", "."]
)
@pytest.mark.parametrize("cwd", ["tmp", "/"])
def test_absolute_is_pathlibs(path: str, cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path if cwd == "tmp" else "/")
    assert fp.absolute(path) == str(Path(path).absolute())


def test_absolute_gives_up_on_what_pathlib_keeps_apart() -> None:
    for path in ("//x/y", "", "a\0b"):
        with pytest.raises(fp.GiveUp):
            fp.absolute(path)


# --------------------------------------------------------------------------- end to end, in-process

CONFIG = """\
[tokend]
state_dir = "state"

[credentials.api]
token_url = "https://idp.example/token"
client_id_file = "api.id"
client_secret = "s3cret-value"
scope = "read write"
audience = ["https://api.example", "b"]
default_expires_in = "1h30m"
min_ttl_margin = "5m"

[[credentials.api.sink]]
path = "out/api.token"
"""


class Seeded:
    """A valid config with a token in the cache, as ``fetch`` leaves it."""

    def __init__(self, tmp: Path, environ: dict[str, str]) -> None:
        self.tmp = tmp
        self.environ = environ
        self.path = tmp / "tokend.toml"
        self.path.write_text(CONFIG)
        self.path.chmod(0o600)
        (tmp / "api.id").write_text("client-1\n")
        (tmp / "out").mkdir()

    def cache(self, token: str = "tok-1", *, obtained: float | None = None, lifetime: float = 3600) -> None:
        config = load(self.path, self.environ)
        cred = config.credentials["api"]
        now = time.time() if obtained is None else obtained
        entry = CacheEntry(Token(token, now + lifetime, now))
        TokenCache(config.state_dir).save(cache_key(cred, "client-1"), entry, cred=cred, client_id="client-1")

    def remember(self) -> None:
        """What ``fetch``, ``token`` and ``exec`` do once the config loaded."""
        cli.load_config(self.path, "token")

    def fast(self, environ: dict[str, str] | None = None) -> str | None:
        return fp.fresh_token(str(self.path), "api", self.environ if environ is None else environ)

    def edit(self, text: str) -> None:
        self.path.write_text(text)


@pytest.fixture
def seeded(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    environ = {k: v for k, v in os.environ.items() if k not in memo.MEMO_ENVIRONMENT or k == "HOME"}
    for name in memo.MEMO_ENVIRONMENT:
        if name != "HOME":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    seeded = Seeded(tmp_path, environ)
    seeded.cache()
    return seeded


def run_main(words: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(words)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_remembered_config_is_served_by_the_fast_path(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert seeded.fast() is None  # the validated path has not seen this config yet
    seeded.remember()
    memo_file = Path(memo.memo_path(str(seeded.tmp / "state"), fp.absolute(str(seeded.path))))
    assert memo_file.stat().st_mode & 0o777 == 0o600 and memo_file.parent.stat().st_mode & 0o777 == 0o700
    assert seeded.fast() == "tok-1"
    assert fp.fresh_token("tokend.toml", "api", seeded.environ) == "tok-1"  # relative -c
    assert fp.fresh_token(None, "api", {**seeded.environ, "TOKEND_CONFIG": str(seeded.path)}) == "tok-1"
    assert run_main(["token", "api", "-c", str(seeded.path)], capsys) == (0, "tok-1\n", "")


def test_the_validated_token_command_remembers_the_config(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_main(["token", "api", "-c", str(seeded.path)], capsys) == (0, "tok-1\n", "")  # validated
    assert seeded.fast() == "tok-1"
    # ... and both paths print the same thing.
    monkeypatch.setattr(fp, "fresh_token", lambda *a: None)
    assert run_main(["token", "api", "-c", str(seeded.path)], capsys) == (0, "tok-1\n", "")


def test_any_edit_sends_token_back_to_the_validated_path(seeded: Seeded) -> None:
    seeded.remember()
    seeded.edit(CONFIG + "# a comment\n")
    assert seeded.fast() is None
    seeded.remember()
    assert seeded.fast() == "tok-1"


@pytest.mark.parametrize(
    "broken",
    [
        OTHER + 'timeout = "soon"\n',
        OTHER.replace("https://idp.example", "http://remote.example"),
        OTHER + '[[credentials.other.sink]]\npath = "out/api.token"\n',  # the same sink as api's
        "\n[credentials.api.on_rotate]\nsignal = 'HUP'\n",
        "\n[tokend.oops]\n",
    ],
)
def test_an_edit_that_breaks_the_config_still_exits_78(
    seeded: Seeded, broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded.remember()
    seeded.edit(CONFIG + broken)
    assert seeded.fast() is None
    code, out, err = run_main(["token", "api", "-c", str(seeded.path)], capsys)
    assert (code, out) == (78, "")
    assert len(err.strip().splitlines()) == 1 and str(seeded.path) in err


def test_a_memo_is_not_written_for_a_config_edited_while_it_was_validated(seeded: Seeded) -> None:
    config = load(seeded.path, seeded.environ)
    memo.remember(
        str(seeded.path), CONFIG.replace("read write", "read").encode(), config.state_dir, seeded.environ
    )
    assert seeded.fast() is None
    memo.remember(str(seeded.path), CONFIG.encode(), config.state_dir, seeded.environ)
    assert seeded.fast() == "tok-1"


@pytest.mark.parametrize(
    "change",
    [
        {"HOME": "/elsewhere"},
        {"XDG_STATE_HOME": "/elsewhere"},
        {"STATE_DIRECTORY": "/elsewhere"},
        {"CREDENTIALS_DIRECTORY": "/elsewhere"},
    ],
)
def test_the_environment_the_config_was_validated_in_counts(seeded: Seeded, change: dict[str, str]) -> None:
    seeded.remember()
    assert seeded.fast({**seeded.environ, **change}) is None


def cache_entry(s: Seeded) -> Path:
    (entry,) = (s.tmp / "state" / "tokens").glob("*.json")
    return entry


def client_id_fifo(s: Seeded) -> None:
    (s.tmp / "api.id").unlink()
    os.mkfifo(s.tmp / "api.id")


def config_to_directory(s: Seeded) -> None:
    s.path.unlink()
    s.path.symlink_to(s.tmp)


GIVE_UP: dict[str, Callable[[Seeded], object]] = {
    "an expired token": lambda s: s.cache(obtained=0),
    # 100 s: a margin of half the lifetime, due at 50 s, not expired until 100 s.
    "a token past its refresh point": lambda s: s.cache(obtained=time.time() - 90, lifetime=100),
    "an unsafe token": lambda s: s.cache(token="tok'1"),
    "a corrupt cache entry": lambda s: cache_entry(s).write_text("{"),
    "no cache entry": lambda s: cache_entry(s).unlink(),
    "a client id file with a BOM": lambda s: (s.tmp / "api.id").write_text("\ufeffclient-1\n"),
    "a client id file of two lines": lambda s: (s.tmp / "api.id").write_text("client-1\nx\n"),
    "an empty client id file": lambda s: (s.tmp / "api.id").write_text("\n"),
    "a client id file that is a FIFO": client_id_fifo,
    "a state dir that is gone": lambda s: (s.tmp / "state").rename(s.tmp / "state.old"),
    "a config that is a symlink to a directory": config_to_directory,
}


@pytest.mark.parametrize("case", sorted(GIVE_UP))
def test_the_fast_path_gives_up(seeded: Seeded, case: str) -> None:
    seeded.remember()
    assert seeded.fast() == "tok-1"
    GIVE_UP[case](seeded)
    assert seeded.fast() is None


@pytest.mark.parametrize(
    ("change", "lines"),
    [
        # Valid configs it does not read itself: the validated path serves them, from the cache.
        (lambda c: c.replace('client_secret = "s3cret-value"', 'client_secret = """s3cret-value"""'), None),
        (lambda c: c.replace('scope = "read write"', 'scope = "read\\u0020write"'), None),
        (
            lambda c: c.replace(
                'client_id_file = "api.id"', 'client_id_env = "FAST_ID"\nenv_file = "api.env"'
            ),
            "FAST_ID='client-1'\n",
        ),
        (
            lambda c: c.replace(
                'client_id_file = "api.id"', 'client_id_env = "FAST_ID"\nenv_file = "api.env"'
            ),
            "export FAST_ID=client-1\n",
        ),
    ],
)
def test_what_it_does_not_read_goes_the_validated_way(
    seeded: Seeded, change: Callable[[str], str], lines: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded.edit(change(CONFIG))
    if lines is not None:
        (seeded.tmp / "api.env").write_text(lines)
    seeded.remember()
    assert seeded.fast() is None
    assert run_main(["token", "api", "-c", str(seeded.path)], capsys) == (0, "tok-1\n", "")


def test_an_unknown_name_is_the_validated_paths_usage_error(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded.remember()
    assert fp.fresh_token(str(seeded.path), "nope", seeded.environ) is None
    code, out, err = run_main(["token", "nope", "-c", str(seeded.path)], capsys)
    assert (code, out) == (2, "") and "no credential named nope" in err


def test_fast_path_reads_env_files_and_systemd_credentials(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded.edit(
        CONFIG.replace('client_id_file = "api.id"', 'client_id_env = "FAST_ID"\nenv_file = "api.env"')
    )
    (seeded.tmp / "api.env").write_text("# the client\nFAST_ID=client-1\n")
    seeded.remember()
    assert seeded.fast() == "tok-1"
    (seeded.tmp / "api.env").write_text("FAST_ID=\n")  # empty in the file: the environment's
    assert seeded.fast() is None
    assert seeded.fast({**seeded.environ, "FAST_ID": "client-1"}) == "tok-1"

    creds = seeded.tmp / "creds"
    creds.mkdir()
    (creds / "api-id").write_text("client-1")
    environ = {**seeded.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    seeded.edit(CONFIG.replace('client_id_file = "api.id"', 'client_id_credential = "api-id"'))
    memo.remember(str(seeded.path), seeded.path.read_bytes(), load(seeded.path, environ).state_dir, environ)
    assert seeded.fast(environ) == "tok-1"


def test_a_config_it_cannot_read_is_left_to_the_validated_path(tmp_path: Path) -> None:
    for content in (b"\xff\xfe", b"a = 1\nb = \n", b"x" * (limits.MAX_CONFIG_BYTES + 1)):
        (tmp_path / "t.toml").write_bytes(content)
        assert fp.fresh_token(str(tmp_path / "t.toml"), "api", {}) is None
    assert fp.fresh_token(str(tmp_path / "missing.toml"), "api", {}) is None
    assert memo.read_config(str(tmp_path / "missing.toml")) is None


def test_a_client_certificate_goes_the_validated_way(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    """The certificate's thumbprint is part of the key, and the fast path does not read
    certificates: it gives up, and the validated path serves the token cached
    for this certificate."""
    from .support.endpoint import SECRETS
    from .thirdparty.tls_front import Pki

    (seeded.tmp / "pki").mkdir()
    cert, key = Pki(seeded.tmp / "pki").issue("svc", "svc")
    SECRETS.add(key.read_text())
    seeded.edit(
        CONFIG.replace(
            'scope = "read write"', f'scope = "read write"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"'
        )
    )
    seeded.cache("tok-cert")
    seeded.remember()
    assert seeded.fast() is None
    with pytest.raises(fp.GiveUp):
        fp.credential_key(
            {"token_url": "https://idp.example/token", "client_id": "i", "tls_cert_file": str(cert)},
            str(seeded.path),
            {},
        )
    assert run_main(["token", "api", "-c", str(seeded.path)], capsys) == (0, "tok-cert\n", "")


def test_a_credential_proved_by_the_platforms_assertion_has_the_validated_paths_key(tmp_path: Path) -> None:
    """client_assertion_file is no part of the identity (as a private key is not): the fast
    path computes the same cache key without reading the platform's JWT."""
    from tokend.io.cache import cache_key as validated_key

    text = (
        '[credentials.a]\ntoken_url = "https://idp.example.com/t"\nclient_id = "app"\n'
        f'client_assertion_file = "{tmp_path}/absent-token"\nscope = "api://x/.default"\n'
    )
    cred = tokend.config.parse(text, tmp_path / "t.toml", environ={}).credentials["a"]
    tbl = tomllib.loads(text)["credentials"]["a"]
    assert fp.credential_key(tbl, str(tmp_path / "t.toml"), {}) == validated_key(cred, "app")
