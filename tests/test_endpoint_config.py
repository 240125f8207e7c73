"""The config of the endpoint and the proxies: named refusals, each one line naming the file
and the key, and a deterministic fuzz of the new keys (as tests/test_config_fuzz.py does for
the rest): every case from ``random.Random(seed)``, a failure names its seed and input."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tokend.config import Config, ConfigError, load, parse
from tokend.config.schema import ENDPOINT_KEYS, PROXY_KEYS

from .support.configs import credential_toml, write_config
from .support.processes import REPO, assert_one_line_error, clean_env, run_tokend

FILE = Path("/etc/tokend/tokend.toml")
CASES = 400
CHECK_CASES = 8


def render(endpoint: dict[str, str], proxy: dict[str, str], cred_extra: dict[str, str]) -> str:
    lines = ["[endpoint]", *(f"{k} = {v}" for k, v in endpoint.items())]
    lines += [
        "[credentials.api]",
        'token_url = "https://idp.example.com/token"',
        'client_id = "id"',
        'client_secret_file = "/etc/tokend/api.secret"',
        *(f"{k} = {v}" for k, v in cred_extra.items()),
        "[[credentials.api.proxy]]",
        *(f"{k} = {v}" for k, v in proxy.items()),
    ]
    return "\n".join(lines) + "\n"


BASE_ENDPOINT = {"listen": '"unix:/run/tokend/tokend.sock"', "socket_mode": '"0660"', "access_log": "true"}
BASE_PROXY = {"listen": '"127.0.0.1:8081"', "upstream": '"https://api.example.com/v1"'}
BASE_CRED = {"endpoint_users": '["nobody", 0]', "endpoint_groups": '"adm"'}


def refusal(endpoint: dict[str, str], proxy: dict[str, str], cred: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(render(endpoint, proxy, cred), FILE, environ={})
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{FILE}: ") and len(text) < 400, text
    return text


def test_the_base_is_valid() -> None:
    config = parse(render(BASE_ENDPOINT, BASE_PROXY, BASE_CRED), FILE, environ={})
    assert config.endpoint is not None and str(config.endpoint.listen) == "unix:/run/tokend/tokend.sock"
    assert config.credentials["api"].proxies[0].upstream == "https://api.example.com/v1"
    assert config.credentials["api"].endpoint_users == ("nobody", 0)
    assert config.credentials["api"].endpoint_groups == ("adm",)


NAMED = {
    # (table, key, literal): what the message must say
    ("endpoint", "listen", '"0.0.0.0:8200"'): "endpoint.listen: 0.0.0.0 is not a loopback address",
    ("endpoint", "listen", '"unix:relative.sock"'): 'endpoint.listen: must be "unix:" and an absolute path',
    ("endpoint", "listen", '"unix:/' + "d" * 120 + '"'): "endpoint.listen: is longer than 107 bytes",
    (
        "endpoint",
        "listen",
        '"127.0.0.1:0"',
    ): 'endpoint.listen: must be "unix:/PATH", HOST:PORT or "systemd:NAME"',
    ("endpoint", "listen", '"systemd:"'): "endpoint.listen: systemd: must be followed by a socket unit's",
    ("endpoint", "listen", '"systemd:a:b"'): "endpoint.listen: systemd: must be followed by",
    ("endpoint", "listen", '"systemd:a b"'): "FileDescriptorName=",
    ("endpoint", "listen", '"127.0.0.1:99999"'): "endpoint.listen: must be",
    ("endpoint", "listen", '"::1:80"'): "endpoint.listen: must name a host",
    ("endpoint", "listen", "8200"): "endpoint.listen: must be a string",
    ("endpoint", "socket_mode", "660"): 'endpoint.socket_mode: must be an octal string such as "0660"',
    (
        "endpoint",
        "socket_mode",
        '"0460"',
    ): "endpoint.socket_mode: '0460' does not let the owner read and write",
    ("endpoint", "socket_mode", '"0770"'): "has execute bits",
    ("endpoint", "socket_owner", '"no such user!"'): "endpoint.socket_owner:",
    ("endpoint", "allow_remote", '"yes"'): "endpoint.allow_remote: must be true or false",
    ("endpoint", "nonsense", "1"): "endpoint.nonsense: unknown key",
    (
        "proxy",
        "upstream",
        '"http://api.example.com"',
    ): "proxy[0].upstream: http://api.example.com/… would send the access token",
    ("proxy", "upstream", '"https://api.example.com/?q=1"'): "proxy[0].upstream: must have no query",
    (
        "proxy",
        "upstream",
        '"https://user:pw@api.example.com"',
    ): "proxy[0].upstream: must not carry credentials",
    ("proxy", "upstream", '"ftp://api.example.com"'): "proxy[0].upstream: is not an http(s) URL",
    (
        "proxy",
        "listen",
        '"unix:/run/tokend/tokend.sock"',
    ): "proxy[0].listen: unix:/run/tokend/tokend.sock is already endpoint.listen",
    ("proxy", "socket_group", '"adm"'): "proxy[0].socket_group: only applies to a unix socket",
    ("cred", "endpoint_users", "[]"): "credentials.api.endpoint_users: must not be an empty list",
    ("cred", "endpoint_tcp", '"yes"'): "credentials.api.endpoint_tcp: must be true or false",
    ("cred", "endpoint_users", "[-1]"): "credentials.api.endpoint_users: must be an id from 0",
    ("cred", "endpoint_groups", "[true]"): "credentials.api.endpoint_groups: must be a name or a numeric id",
    (
        "cred",
        "endpoint_users",
        '"' + "u" * 9000 + '"',
    ): "credentials.api.endpoint_users: more than 8192 characters",
}


@pytest.mark.parametrize(
    ("place", "message"), list(NAMED.items()), ids=[f"{t}.{k}={v[:20]}" for t, k, v in NAMED]
)
def test_each_refusal_is_one_line_naming_the_key(place: tuple[str, str, str], message: str) -> None:
    table, name, literal = place
    endpoint, proxy, cred = dict(BASE_ENDPOINT), dict(BASE_PROXY), dict(BASE_CRED)
    {"endpoint": endpoint, "proxy": proxy, "cred": cred}[table][name] = literal
    assert message in refusal(endpoint, proxy, cred)


def test_a_metrics_listener_and_a_proxy_on_one_port_are_refused() -> None:
    text = render(BASE_ENDPOINT, BASE_PROXY, BASE_CRED).replace(
        "[endpoint]", '[tokend]\nmetrics_listen = "127.0.0.1:8081"\n[endpoint]'
    )
    with pytest.raises(
        ConfigError, match=r"proxy\[0\]\.listen: 127\.0\.0\.1:8081 is already tokend\.metrics_listen"
    ):
        parse(text, FILE, environ={})


def test_endpoint_users_over_tcp_is_a_warning_that_says_what_tcp_allows() -> None:
    endpoint = {**BASE_ENDPOINT, "listen": '"127.0.0.1:8200"'}
    del endpoint["socket_mode"]
    config = parse(render(endpoint, BASE_PROXY, BASE_CRED), FILE, environ={})
    assert config.credentials["api"].endpoint_tcp is False  # the default: not served over TCP
    (users,) = (w for w in config.warnings if "endpoint_users" in w)
    assert "applies only on a unix socket" in users and "endpoint_tcp" not in users
    assert any("no credential says endpoint_tcp = true: it serves only health" in w for w in config.warnings)
    opted = parse(render(endpoint, BASE_PROXY, {**BASE_CRED, "endpoint_tcp": "true"}), FILE, environ={})
    assert opted.credentials["api"].endpoint_tcp is True
    (users,) = (w for w in opted.warnings if "endpoint_users" in w)
    assert "every local program that passes the guards read this credential" in users
    assert not any("serves only health" in w for w in opted.warnings)


def test_endpoint_tcp_on_a_unix_endpoint_is_a_warning() -> None:
    config = parse(render(BASE_ENDPOINT, BASE_PROXY, {**BASE_CRED, "endpoint_tcp": "true"}), FILE, environ={})
    assert any(
        "credentials.api.endpoint_tcp: [endpoint] listens on a unix socket" in w for w in config.warnings
    )


def test_a_systemd_socket_is_named_and_its_mode_is_systemds() -> None:
    endpoint = {"listen": '"systemd:tokend-endpoint"', "allow_remote": "true"}
    proxy = {**BASE_PROXY, "listen": '"systemd:tokend-api"'}
    config = parse(render(endpoint, proxy, BASE_CRED), FILE, environ={})
    assert config.endpoint is not None
    listen = config.endpoint.listen
    assert (listen.fd_name, listen.path, listen.host, listen.allow_remote) == (
        "tokend-endpoint",
        None,
        "",
        True,
    )
    assert str(listen) == "systemd:tokend-endpoint"
    assert str(config.credentials["api"].proxies[0].listen) == "systemd:tokend-api"
    assert not any("endpoint_users" in w for w in config.warnings)  # unix or TCP: systemd says, later
    for key, literal in (("socket_mode", '"0660"'), ("socket_owner", '"root"'), ("socket_group", '"adm"')):
        message = refusal({**endpoint, key: literal}, proxy, BASE_CRED)
        assert f"endpoint.{key}: is systemd's to set on a socket it passes (SocketMode=" in message
    same = {**proxy, "listen": '"systemd:tokend-endpoint"'}
    assert "proxy[0].listen: systemd:tokend-endpoint is already endpoint.listen" in refusal(
        endpoint, same, BASE_CRED
    )


# --------------------------------------------------------------------------- the fuzz

VALUES = [
    '""',
    '" "',
    '"\\u0000"',
    "0",
    "-1",
    "1.5",
    "true",
    "[]",
    "[1, 2]",
    "{}",
    '["a", 1]',
    "{ a = 1 }",
    '"unix:/"',
    '"unix:/run/x.sock"',
    '"unix:/run/../x.sock"',
    '"127.0.0.1:8200"',
    '"[::1]:8200"',
    '"localhost:1"',
    '"10.0.0.1:80"',
    '"0660"',
    '"0777"',
    '"0600"',
    '"root"',
    '"nobody"',
    "65534",
    "4294967295",
    '"٣"',
    '"\\uff52\\uff4f\\uff4f\\uff54"',
    '"https://api.example.com"',
    '"http://127.0.0.1:1"',
    '"https://"',
    '"https://a.example/#f"',
    '"http://[::1]:80/x"',
    '"' + "x" * 9000 + '"',
    "1e400",
    "nan",
    '"~nosuch/x"',
    '"unix:/tmp/\\n.sock"',
    '"\\ud7ff"',
    "2024-01-01",
    '"127.0.0.1:65535"',
    '"[::]:8200"',
    '"systemd:tokend-endpoint"',
    '"systemd:"',
    '"systemd:a:b"',
    '"systemd:' + "n" * 300 + '"',
]


def fuzzed(seed: int) -> str:
    rng = random.Random(seed)
    endpoint, proxy, cred = dict(BASE_ENDPOINT), dict(BASE_PROXY), dict(BASE_CRED)
    for _ in range(rng.randint(1, 3)):
        table = rng.choice(("endpoint", "proxy", "cred"))
        keys = {
            "endpoint": ENDPOINT_KEYS,
            "proxy": PROXY_KEYS,
            "cred": ("endpoint_users", "endpoint_groups", "endpoint_tcp"),
        }[table]
        target = {"endpoint": endpoint, "proxy": proxy, "cred": cred}[table]
        key = rng.choice(keys)
        if rng.random() < 0.1:
            target.pop(key, None)
        else:
            target[key] = rng.choice(VALUES)
    return render(endpoint, proxy, cred)


@pytest.mark.parametrize("seed", range(CASES))
def test_no_fuzzed_endpoint_or_proxy_config_crashes_the_loader(seed: int, tmp_path: Path) -> None:
    text = fuzzed(seed)
    path = tmp_path / "tokend.toml"
    path.write_text(text)
    try:
        result = load(path, environ={})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}: "), (seed, text, message)
        assert "x" * 200 not in message, (seed, "a long value echoed whole")
        return
    assert isinstance(result, Config), (seed, text)


@pytest.mark.parametrize("seed", range(CHECK_CASES))
def test_tokend_check_says_one_line_or_accepts(seed: int, tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text(fuzzed(seed * 7 + 1))
    path.chmod(0o600)
    result = run_tokend("check", "-c", path, tmp=tmp_path)
    assert result.returncode in (0, 78), result.stderr
    assert "Traceback" not in result.stderr
    if result.returncode == 78:
        assert_one_line_error(result, str(path))


# aiohttp made unimportable the way Python itself offers (None in sys.modules), so the
# same tokend that has it installed behaves as one without it.
WITHOUT_AIOHTTP = (
    "import sys; sys.modules['aiohttp'] = None; "
    "from tokend.cli.main import main; raise SystemExit(main(sys.argv[1:]))"
)


def without_aiohttp(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=clean_env(tmp),
    )


@pytest.mark.parametrize("server", ["endpoint", "proxy"])
def test_check_and_run_say_in_one_line_that_the_local_servers_need_aiohttp(
    server: str, tmp_path: Path
) -> None:
    if server == "endpoint":
        head, extra = f'[endpoint]\nlisten = "unix:{tmp_path}/t.sock"\n', ""
        where = "endpoint:"
    else:
        head, extra = (
            "",
            '[[credentials.api.proxy]]\nlisten = "127.0.0.1:1"\nupstream = "https://api.example.com"\n',
        )
        where = "credentials.api.proxy[0]:"
    config = write_config(
        tmp_path, head, credential_toml("https://idp.example.com/token", tmp_path, extra=extra)
    )
    assert run_tokend("check", "-c", config, tmp=tmp_path).returncode == 0  # with aiohttp: fine
    for command in ("check", "run"):
        result = without_aiohttp(tmp_path, command, "-c", str(config))
        assert result.returncode == 78, (command, result.stderr)
        assert_one_line_error(result, str(config), where, "need aiohttp: pip install 'tokend[proxy]'")
    plain = write_config(tmp_path, credential_toml("https://idp.example.com/token", tmp_path))
    assert without_aiohttp(tmp_path, "check", "-c", str(plain)).returncode == 0  # not needed: not asked


def test_check_judges_a_sockets_directory_as_run_does_when_it_binds(tmp_path: Path) -> None:
    """``run`` refuses to bind in a directory another user can write (sticky or not: they
    could take the name first) and only logs it, the tokens going on; ``check`` says so
    first, on one line naming the listener, and says nothing of a directory that is fine."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    block = credential_toml("https://idp.example/token", tmp_path)
    bad = write_config(tmp_path, f'[endpoint]\nlisten = "unix:{shared}/tokend.sock"\n', block)
    result = run_tokend("check", "-c", bad, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(result, "endpoint.listen", f"directory {shared} is writable by others")
    missing = write_config(tmp_path, f'[endpoint]\nlisten = "unix:{tmp_path}/nosuch/t.sock"\n', block)
    assert_one_line_error(run_tokend("check", "-c", missing, tmp=tmp_path), "does not exist")
    good = write_config(tmp_path, f'[endpoint]\nlisten = "unix:{own}/tokend.sock"\n', block)
    fine = run_tokend("check", "-c", good, tmp=tmp_path)
    assert fine.returncode == 0, fine.stderr
