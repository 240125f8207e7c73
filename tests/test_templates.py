"""tokend/core/templates.py: template sinks, from the placeholders to a daemon re-rendering an
edited template file without asking the identity provider again.

The rendering itself is pure and tested as functions; what the config does with a template
(refusing a bad one with a one-line error naming the placeholder and its line, refusing a
template file that is a secret, a sink or a FIFO) is tested through ``load`` and through
``tokend check`` and ``tokend run`` as real processes.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
from pathlib import Path

import pytest

from tokend.cli import fastpath
from tokend.config import ConfigError, load, parse
from tokend.core.exit_codes import ExitCode
from tokend.core.templates import (
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_BYTES,
    PLACEHOLDERS,
    TemplateError,
    check,
    render,
)
from tokend.core.tokens import Token

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.processes import Start, assert_one_line_error, clean_env, run_tokend, wait_for

ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_~+/ab=="
REFRESH = "refresh-must-never-leave-the-state-dir"
TOKEN = Token(ACCESS, 1_700_003_600.0, 1_700_000_000.0, "Bearer", "read write", REFRESH)
CONFIG = Path("/etc/tokend/tokend.toml")
OFFLINE_URL = "https://idp.example.com/token"


# --------------------------------------------------------------------------- rendering (pure)


def test_every_placeholder_renders_what_its_name_says() -> None:
    text = "".join(f"{name}=${{{name}}}\n" for name in PLACEHOLDERS)
    assert render(text, TOKEN, "api") == (
        f"access_token={ACCESS}\n"
        f'access_token_json="{ACCESS}"\n'
        "token_type=Bearer\n"
        "expires_at=2023-11-14T23:13:20Z\n"
        "expires_at_unix=1700003600\n"
        "obtained_at=2023-11-14T22:13:20Z\n"
        "scope=read write\n"
        "credential=api\n"
    )


def test_netrc_shape_with_unbraced_names_and_a_literal_dollar() -> None:
    text = "machine api.example.com login oauth password $access_token\n# costs $$5 for ${credential}\n"
    assert render(text, TOKEN, "api") == (
        f"machine api.example.com login oauth password {ACCESS}\n# costs $5 for api\n"
    )


def test_a_json_template_parses_back_with_the_token_and_its_times() -> None:
    text = (
        '{"auths": {"registry.example.com": {"registrytoken": ${access_token_json}}},\n'
        ' "expires": ${expires_at_unix}, "at": "${expires_at}", "scope": "${scope}"}\n'
    )
    data = json.loads(render(text, TOKEN, "api"))
    assert data == {
        "auths": {"registry.example.com": {"registrytoken": ACCESS}},
        "expires": 1700003600,
        "at": "2023-11-14T23:13:20Z",
        "scope": "read write",
    }
    # Access tokens with a quote or a backslash never get this far (core/tokens.py
    # unsafe_reason), but the literal is JSON's own encoding whatever the token is.
    assert json.loads(render("${access_token_json}", TOKEN, "api")) == ACCESS


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("machine x\n  password ${acess_token}\n", 2, "unknown placeholder ${acess_token}"),
        ("${refresh_token}", 1, "unknown placeholder ${refresh_token}"),
        ("a\nb\n${client_secret}", 3, "unknown placeholder ${client_secret}"),
        ("$ACCESS_TOKEN", 1, "unknown placeholder ${ACCESS_TOKEN}"),
        ("costs $5", 1, "line 1, column 7: '$5' starts no placeholder"),
        ("x\n${access_token.__class__}", 2, "line 2, column 1: '${' starts no placeholder"),
        ("${access_token[0]}", 1, "starts no placeholder"),
        ("${access_token!r}", 1, "starts no placeholder"),
        ("${ access_token }", 1, "starts no placeholder"),
        ("${access_token", 1, "starts no placeholder"),
        ("one\ntwo $", 2, "line 2, column 5: '$' starts no placeholder"),
        # string.Template's names are ASCII; the error names the word as written, not "${acc}".
        ("x\n$acc\u00e9ss", 2, "unknown placeholder ${acc\u00e9ss};"),
        ("${acc\u00e9ss}", 1, "unknown placeholder ${acc\u00e9ss};"),
        ("$access_token\u00c4", 1, "unknown placeholder ${access_token\u00c4};"),
    ],
)
def test_a_bad_placeholder_is_named_with_its_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        check(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_other_template_languages_are_plain_text() -> None:
    """Nothing but ``$`` is special: braces, percent, Jinja and shell syntax stay as written."""
    text = "{access_token} %(access_token)s {{ access_token }} `id` $$(id)\n"
    assert render(text, TOKEN, "api") == "{access_token} %(access_token)s {{ access_token }} `id` $(id)\n"


def test_size_is_bounded_before_anything_is_built() -> None:
    with pytest.raises(TemplateError, match="larger than 64 KiB"):
        check("x" * (MAX_TEMPLATE_BYTES + 1))
    big = Token("a" * 60_000, 2e9, 1e9)
    with pytest.raises(ValueError, match="would be larger than 1024 KiB"):
        render("${access_token}" * 20, big, "api")
    assert len(render("${access_token}" * 17, big, "api")) <= MAX_RENDERED_CHARS


def test_a_scope_with_control_characters_is_never_put_in_a_template() -> None:
    """The scope is the server's text: a newline in it must not add a line to a .netrc."""
    evil = Token(ACCESS, 2e9, 1e9, scope="read\nmachine evil.example login x password y")
    with pytest.raises(ValueError, match="control characters"):
        render("scope ${scope}\n", evil, "api")
    assert render("${access_token}\n", evil, "api") == f"{ACCESS}\n"  # unused: no matter


def test_fuzzed_templates_are_checked_or_refused_and_never_leak_the_refresh_token() -> None:
    """Seeded: a failure names its seed. Whatever the text, ``check`` raises TemplateError or
    nothing, and what it accepts renders without raising and without the refresh token."""
    pieces = [
        *(f"${{{name}}}" for name in PLACEHOLDERS),
        *(f"${name}" for name in PLACEHOLDERS),
        "$", "$$", "${", "}", "{", "$refresh_token", "${x}", "${1}", "\n", "\r\n", " ", "\t",
        "é", "\u2028", "\x00", "${access_token", "$$$", "${}", "$_", "%s", "\\",
    ]  # fmt: skip
    accepted = refused = 0
    for seed in range(400):
        rng = random.Random(seed)
        parts = [
            rng.choice(pieces) if rng.random() < 0.6 else rng.choice(string.printable)
            for _ in range(rng.randint(0, 30))
        ]
        text = "".join(parts)
        try:
            used = check(text)
        except TemplateError as exc:
            assert str(exc).startswith("line "), (seed, text)
            refused += 1
            continue
        except Exception as exc:  # pragma: no cover - the failure this test is for
            raise AssertionError(f"seed {seed}: {text!r} raised {exc!r}") from exc
        out = render(text, TOKEN, "api")
        assert REFRESH not in out, (seed, text)
        assert used <= set(PLACEHOLDERS)
        accepted += 1
    assert accepted > 50 and refused > 50  # the generator reaches both sides


# --------------------------------------------------------------------------- the config


def template_config(tmp: Path, sink: str, url: str = OFFLINE_URL) -> Path:
    block = credential_toml(url, tmp, sinks=f'[[credentials.api.sink]]\nformat = "template"\n{sink}\n')
    return write_config(tmp, block)


def sink_toml(tmp: Path, body: str) -> str:
    return f'path = "{tmp}/out/api.netrc"\n{body}'


def test_an_inline_multiline_template_is_loaded_checked_and_kept(tmp_path: Path) -> None:
    config = load(
        template_config(tmp_path, sink_toml(tmp_path, 'template = """\nhost\n${access_token}\n"""'))
    )
    sink = config.credentials["api"].sinks[0]
    assert sink.template_text == "host\n${access_token}\n" and sink.credential == "api"


def test_a_template_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "netrc.tmpl").write_text("machine x password ${access_token}\n")
    config = load(template_config(tmp_path, sink_toml(tmp_path, 'template_file = "netrc.tmpl"')))
    sink = config.credentials["api"].sinks[0]
    assert sink.template_file == tmp_path / "netrc.tmpl"
    assert sink.template_text == "machine x password ${access_token}\n"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("", 'sink[0]: format = "template" needs a template or a template_file'),
        ('template = "a"\ntemplate_file = "t"', "sink[0].template_file: conflicts with template"),
        ('template = "a"\nenv_name = "X"', 'sink[0].env_name: only applies to format = "env"'),
        ('template = "x ${nope}"', "sink[0].template: line 1: unknown placeholder ${nope}"),
    ],
)
def test_template_keys_that_do_not_fit_are_one_line_errors(tmp_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(template_config(tmp_path, sink_toml(tmp_path, body)))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_template_keys_on_another_format_are_refused(tmp_path: Path) -> None:
    text = credential_toml(
        OFFLINE_URL, tmp_path, sinks=f'[[credentials.api.sink]]\npath = "{tmp_path}/x"\ntemplate = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"sink\[0\].template: only applies to format = \"template\""):
        parse(text, CONFIG, environ={})


def refusal(tmp: Path, template_file: Path | str, **extra: str) -> str:
    body = sink_toml(tmp, f'template_file = "{template_file}"\n') + "".join(
        f"{k} = {v}\n" for k, v in extra.items()
    )
    with pytest.raises(ConfigError) as info:
        load(template_config(tmp, body))
    message = str(info.value)
    assert "\n" not in message and "sink[0].template_file: " in message, message
    return message


def test_a_template_file_that_is_a_file_tokend_protects_or_writes_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "api.secret"
    assert "is a file credentials.api reads" in refusal(tmp_path, secret)
    assert "is the config file" in refusal(tmp_path, tmp_path / "tokend.toml")
    assert "is a file tokend writes" in refusal(tmp_path, tmp_path / "out" / "api.netrc")  # its own sink
    (tmp_path / "link").symlink_to(secret)  # a symlink is judged by where it leads
    assert "is a file credentials.api reads" in refusal(tmp_path, tmp_path / "link")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cache.json").write_text("{}")
    assert "inside the state directory" in refusal(tmp_path, tmp_path / "state" / "cache.json")
    assert "is a kernel file" in refusal(tmp_path, "/proc/self/environ")


def test_fleet_password_file_and_hard_links_to_protected_files_are_refused(tmp_path: Path) -> None:
    """[fleet]'s password_file is a secret like the client secret's file, and a hard link
    to either has a path of its own: the inode says it is the same file."""
    password = tmp_path / "redis.password"
    password.write_text("redis-password-0xFEED\n")
    password.chmod(0o600)
    fleet = f'\n[fleet]\nredis_url = "redis://127.0.0.1:6379"\npassword_file = "{password}"\n'

    def fleet_config(sink: str) -> Path:
        block = credential_toml(OFFLINE_URL, tmp_path, sinks=f"[[credentials.api.sink]]\n{sink}\n")
        return write_config(tmp_path, block + fleet)

    def error(config: Path) -> str:
        with pytest.raises(ConfigError) as info:
            load(config)
        assert "\n" not in str(info.value) and "redis-password" not in str(info.value)
        return str(info.value)

    as_template = f'path = "{tmp_path}/out/api.netrc"\nformat = "template"\ntemplate_file = "{password}"'
    assert "template_file: " in (message := error(fleet_config(as_template)))
    assert "is [fleet]'s password_file; a template there would copy it" in message
    assert "is [fleet]'s password_file; a sink there would overwrite it" in error(
        fleet_config(f'path = "{password}"')
    )
    os.link(tmp_path / "api.secret", tmp_path / "hard-link")
    assert "is a file credentials.api reads" in refusal(tmp_path, tmp_path / "hard-link")
    os.link(password, tmp_path / "out" / "pw-link")
    assert "is [fleet]'s password_file; a sink there" in error(
        fleet_config(f'path = "{tmp_path}/out/pw-link"')
    )


def test_a_template_file_that_is_not_a_small_utf8_file_tokend_alone_controls_is_refused(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "fifo")  # never opened for a blocking read
    assert "not a regular file (a FIFO)" in refusal(tmp_path, tmp_path / "fifo")
    assert "no such file" in refusal(tmp_path, tmp_path / "missing.tmpl")
    (tmp_path / "huge.tmpl").write_bytes(b"x" * (MAX_TEMPLATE_BYTES + 1))
    assert "larger than 64 KiB" in refusal(tmp_path, tmp_path / "huge.tmpl")
    (tmp_path / "latin1.tmpl").write_bytes(b"machine x\npassword \xe9 ${access_token}\n")
    assert "latin1.tmpl: line 2: not UTF-8 text (byte 19)" in refusal(tmp_path, tmp_path / "latin1.tmpl")
    (tmp_path / "empty.tmpl").write_text("\n")
    assert "is empty" in refusal(tmp_path, tmp_path / "empty.tmpl")
    shared = tmp_path / "shared.tmpl"
    shared.write_text("password ${access_token}\n")
    shared.chmod(0o666)  # anyone could point the token at another host
    assert "writable by others" in refusal(tmp_path, shared)
    public = tmp_path / "public"  # a link from a safe place into one anyone can change
    public.mkdir(mode=0o777)
    public.chmod(0o777)
    (public / "t.tmpl").write_text("password ${access_token}\n")
    (tmp_path / "via-link.tmpl").symlink_to(public / "t.tmpl")
    assert "directory path is not safe" in refusal(tmp_path, tmp_path / "via-link.tmpl")
    config = load(
        template_config(tmp_path, sink_toml(tmp_path, f'template_file = "{shared}"\nallow_shared_dir = true'))
    )
    assert config.credentials["api"].sinks[0].template_text == "password ${access_token}\n"


FLIPPER = """
import os, sys, time
link, a, b, end = sys.argv[1], sys.argv[2], sys.argv[3], time.monotonic() + float(sys.argv[4])
tmp = link + ".new"
while time.monotonic() < end:
    for target in (a, b):
        os.symlink(target, tmp)
        os.replace(tmp, link)
"""


def test_a_template_symlink_flipped_to_the_secret_while_loading_never_renders_it(tmp_path: Path) -> None:
    """An attacker who may edit a template in a shared directory flips its symlink between
    a harmless template and the client secret's file, as fast as a process can, while the
    config is loaded again and again: the file judged is the file read, so every load has
    the harmless text or is refused, and the secret is never the template."""
    import subprocess
    import sys

    harmless = tmp_path / "harmless.tmpl"
    harmless.write_text("password ${access_token}\n")
    link = tmp_path / "api.tmpl"
    link.symlink_to(harmless)
    config = template_config(
        tmp_path, sink_toml(tmp_path, f'template_file = "{link}"\nallow_shared_dir = true\n')
    )
    secret = tmp_path / "api.secret"  # written by template_config: s3cret-value
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(link), str(harmless), str(secret), "20"])
    texts: set[str] = set()
    refused = 0
    try:
        for _ in range(1500):
            try:
                texts.add(load(config).credentials["api"].sinks[0].template_text or "")
            except ConfigError as exc:
                assert "s3cret" not in str(exc)
                refused += 1
    finally:
        flipper.kill()
        flipper.wait(timeout=20)
    assert texts <= {"password ${access_token}\n"}, "the secret file was read as the template"
    assert refused > 0, "the flipper never had the secret in place at a load: the test proves nothing"


def test_a_wrong_file_as_template_is_never_quoted_into_the_error(tmp_path: Path) -> None:
    """An operator who points template_file at a password hash or a key by mistake gets an
    error that says where, not what: at most a "$" and one character, or a short name."""
    wrong = tmp_path / "shadow-like"
    wrong.write_text("root:$6$Zq0salt$K9vLongHashValueThatMustNotLeak:19000:0:99999:7:::\n")
    message = refusal(tmp_path, wrong)
    assert "line 1, column 6: '$6' starts no placeholder" in message
    assert "Zq0salt" not in message and "K9vLong" not in message
    wrong.write_text("x ${K9vLongHashValueThatMustNotLeakEither}\n")
    message = refusal(tmp_path, wrong)
    assert "unknown placeholder (a name of 37 characters)" in message and "K9vLong" not in message


def test_fuzzed_template_files_give_a_config_or_one_config_error(tmp_path: Path) -> None:
    """Seeded: random bytes (invalid UTF-8, NUL, stray $) in a template file and as an inline
    template; ``load`` returns a config or raises ConfigError, never anything else."""
    config = template_config(tmp_path, sink_toml(tmp_path, 'template_file = "t.tmpl"'))
    (tmp_path / "inline").mkdir()
    alphabet = [b"${access_token}", b"$", b"${", b"}", b"\n", b"\xff", b"\xc3", b"\x00", b"a", b"$$", b" "]
    outcomes: set[str] = set()
    for seed in range(150):
        rng = random.Random(seed)
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        (tmp_path / "t.tmpl").write_bytes(data)
        inline = data.decode("utf-8", "replace").replace("'''", "")
        for path in (
            config,
            template_config(tmp_path / "inline", sink_toml(tmp_path, f"template = '''{inline}'''")),
        ):
            try:
                load(path)
                outcomes.add("config")
            except ConfigError as exc:
                assert "\n" not in str(exc), (seed, data)
                outcomes.add("error")
            except Exception as exc:  # pragma: no cover - the failure this test is for
                raise AssertionError(f"seed {seed}: {data!r} raised {exc!r}") from exc
    assert outcomes == {"config", "error"}


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_consumer_recipes_load_and_render_as_they_say(tmp_path: Path) -> None:
    section = README.read_text().split("\n## Consumers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    (tmp_path / "docker-config.json.tmpl").write_text(next(body for lang, body in blocks if lang == "json"))
    rendered: dict[str, str] = {}
    for body in (body for lang, body in blocks if lang == "toml"):
        body = body.replace("/etc/tokend/", f"{tmp_path}/").replace("/run/tokend/", f"{tmp_path}/out/")
        names = dict.fromkeys(re.findall(r"^\[\[?credentials\.([\w-]+)", body, re.M))
        head = "".join(
            f'[credentials.{name}]\ntoken_url = "{OFFLINE_URL}"\nclient_id = "c"\nclient_secret_env = "S"\n'
            for name in names
        )
        config = parse(head + body, tmp_path / "tokend.toml", environ={})
        for cred in config.credentials.values():
            for sink in cred.sinks:
                if sink.template_text is not None:
                    rendered[sink.path.name] = render(sink.template_text, TOKEN, cred.name)
    assert set(rendered) == {"api.netrc", "git.netrc", "config.json", "upstream-auth.conf"}
    assert json.loads(rendered["config.json"]) == {
        "auths": {"registry.example.com": {"registrytoken": ACCESS}}
    }
    assert rendered["upstream-auth.conf"] == f'proxy_set_header Authorization "Bearer {ACCESS}";\n'
    assert rendered["git.netrc"] == f"machine git.example.com login oauth2 password {ACCESS}\n"


# --------------------------------------------------------------------------- real processes


def test_check_and_run_exit_78_naming_the_placeholder_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "docker.json.tmpl").write_text(
        '{\n  "auths": {\n    "x": {"registrytoken": ${acces_token_json}}\n'
    )
    config = template_config(tmp_path, sink_toml(tmp_path, 'template_file = "docker.json.tmpl"'))
    for command in ("check", "run"):
        result = run_tokend(command, "-c", config, tmp=tmp_path)
        assert result.returncode == ExitCode.CONFIG, result.stderr  # 78
        assert_one_line_error(
            result,
            "sink[0].template_file",
            "docker.json.tmpl: line 3: unknown placeholder ${acces_token_json}",
        )
    (tmp_path / "docker.json.tmpl").write_bytes(b"\xff\xfe${access_token}\n")
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(result, "line 1: not UTF-8 text (byte 0)")


def test_token_answers_with_template_sinks_in_the_config(idp: TokenEndpoint, tmp_path: Path) -> None:
    """The fast path's TOML subset gives up on multi-line strings; the validated path answers."""
    body = sink_toml(tmp_path, 'template = """\nmachine x\n  password ${access_token}\n"""')
    config = template_config(tmp_path, body, idp.url)
    fetched = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "api.netrc").read_text() == "machine x\n  password tok-1\n"
    answer = run_tokend("token", "-c", config, "api", tmp=tmp_path)  # the validated path, from the cache
    assert (answer.returncode, answer.stdout) == (0, "tok-1\n"), answer.stderr
    assert fastpath.fresh_token(str(config), "api", clean_env(tmp_path)) is None  # still: multi-line
    assert len(idp.seen) == 1
    # One line, no escapes: inside the subset, so once validated the fast path answers itself.
    config.write_text(
        config.read_text().replace('"""\nmachine x\n  password ${access_token}\n"""', "'${access_token}'")
    )
    answer = run_tokend("token", "-c", config, "api", tmp=tmp_path)
    assert (answer.returncode, answer.stdout) == (0, "tok-1\n"), answer.stderr
    assert fastpath.fresh_token(str(config), "api", clean_env(tmp_path)) == "tok-1"
    assert len(idp.seen) == 1


def save(path: Path, text: str) -> None:
    """As an editor saves: a temp file renamed over the old one (never a half-written file)."""
    swap = path.with_name(f".{path.name}.swp")
    swap.write_text(text)
    swap.replace(path)


def test_an_edited_template_file_re_renders_with_the_same_token_and_no_request(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    template = tmp_path / "netrc.tmpl"
    template.write_text("machine a.example login oauth password ${access_token}\n")
    config = template_config(tmp_path, sink_toml(tmp_path, f'template_file = "{template}"'), idp.url)
    sink = tmp_path / "out" / "api.netrc"
    daemon = daemons(config, tmp_path)
    wait_for(sink.exists, 10, "the first rendering")
    assert sink.read_text() == "machine a.example login oauth password tok-1\n"

    save(template, "machine b.example login oauth password ${access_token} # ${credential}\n")
    expected = "machine b.example login oauth password tok-1 # api\n"
    wait_for(lambda: sink.read_text() == expected, 10, "the re-rendered sink")
    assert len(idp.seen) == 1  # the same token: the identity provider was not asked again

    save(template, "machine c.example password ${acess_token}\n")  # a typo: rejected
    wait_for(lambda: "reload rejected" in daemon.log, 10, "the rejected template")
    assert "netrc.tmpl: line 1: unknown placeholder ${acess_token}" in daemon.log
    template.unlink()  # removed: still rejected, the last rendering stays
    wait_for(lambda: daemon.log.count("reload rejected") == 2, 10, "the removal rejected")
    assert "netrc.tmpl: no such file" in daemon.log
    assert sink.read_text() == expected and daemon.proc.poll() is None

    save(template, "machine d.example password ${access_token}\n")
    wait_for(lambda: sink.read_text() == "machine d.example password tok-1\n", 10, "the fixed template")
    assert len(idp.seen) == 1 and daemon.log.count("reload rejected") == 2
