"""Live reload: the watcher's parts, then a real daemon under every way files get edited."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tokend.config import load
from tokend.io.watch import Debouncer, FileState, Watcher, read_state, watch_points, watched_files

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.processes import DaemonProcess, Start, wait_for

# --------------------------------------------------------------------------- the parts


@pytest.mark.parametrize(
    ("touches", "now", "due"),
    [
        ([0.0], 0.29, False),
        ([0.0], 0.3, True),  # 300 ms of quiet
        ([0.0, 0.2, 0.4], 0.6, False),
        ([0.0, 0.2, 0.4], 0.7, True),  # quiet counts from the last
        ([x / 10 for x in range(25)], 1.99, False),  # a steady stream...
        ([x / 10 for x in range(25)], 2.0, True),  # ...waits 2 s at most
    ],
)
def test_debounce(touches: list[float], now: float, due: bool) -> None:
    debounce = Debouncer()
    for t in touches:
        debounce.touch(t)
    assert debounce.due(now) is due


def test_debounce_is_idle_until_touched_and_after_reset() -> None:
    debounce = Debouncer()
    assert not debounce.pending and debounce.deadline() is None and not debounce.due(100)
    debounce.touch(1)
    debounce.reset()
    assert not debounce.due(100)


def kubernetes_secret(directory: Path, version: str, value: str) -> None:
    """The layout kubelet writes: password -> ..data/password, ..data -> ..<version>."""
    (directory / f"..{version}").mkdir()
    (directory / f"..{version}" / "password").write_text(value)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(f"..{version}")
    tmp.replace(directory / "..data")  # the atomic swap
    if not (directory / "password").is_symlink():
        (directory / "password").symlink_to("..data/password")


def test_watch_points_include_every_symlink_on_the_way(tmp_path: Path) -> None:
    kubernetes_secret(tmp_path, "v1", "one")
    points = watch_points(tmp_path / "password")
    assert points == {tmp_path / "password", tmp_path / "..data", tmp_path / "..v1" / "password"}
    assert watch_points(tmp_path / "missing") == {tmp_path / "missing"}


def test_template_files_are_watched_beside_the_config_and_secrets(tmp_path: Path) -> None:
    (tmp_path / "netrc.tmpl").write_text("machine x password ${access_token}\n")
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.netrc"\n'
        'format = "template"\ntemplate_file = "netrc.tmpl"\n'
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.json"\nformat = "template"\n'
        'template = "${access_token_json}"\n'
    )
    config = load(
        write_config(tmp_path, credential_toml("https://idp.example.com/token", tmp_path, sinks=sinks))
    )
    assert watched_files(config) == {
        tmp_path / "tokend.toml",
        tmp_path / "api.secret",
        tmp_path / "netrc.tmpl",
    }


def test_state_hashes_only_when_the_stat_changes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("a")
    first = read_state(path)
    assert read_state(path, first) is first  # nothing read again
    path.write_text("b")
    assert read_state(path, first).digest != first.digest
    assert read_state(tmp_path / "missing") == FileState(None, None)


def watcher_on(path: Path) -> tuple[Watcher, list[float]]:
    hits: list[float] = []
    watcher = Watcher(lambda: hits.append(time.monotonic()))
    watcher.update([path])
    return watcher, hits


def edit_in_place(path: Path) -> None:
    path.write_text(path.read_text() + "# edited\n")


def edit_temp_then_rename(path: Path) -> None:
    temp = path.with_name(".tokend.toml.swp")
    temp.write_text("x")
    temp.replace(path)


def edit_sed_i(path: Path) -> None:
    subprocess.run(["sed", "-i", "s/old/new/", str(path)], check=True)


def edit_delete_then_recreate(path: Path) -> None:
    path.unlink()
    path.write_text("again")


EDITS: dict[str, Callable[[Path], None]] = {
    "in place": edit_in_place,
    "temp then rename": edit_temp_then_rename,
    "sed -i": edit_sed_i,
    "delete then recreate": edit_delete_then_recreate,
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_each_edit_style_is_noticed(tmp_path: Path, edit: str) -> None:
    target = tmp_path / "tokend.toml"
    target.write_text("old\n")
    watcher, hits = watcher_on(target)
    try:
        EDITS[edit](target)
        wait_for(lambda: hits, 5, f"an event for {edit}")
    finally:
        watcher.stop()


def test_a_kubernetes_swap_and_a_late_file_are_noticed(tmp_path: Path) -> None:
    kubernetes_secret(tmp_path, "v1", "one")
    watcher, hits = watcher_on(tmp_path / "password")
    late, late_hits = watcher_on(tmp_path / "appears-later")
    try:
        kubernetes_secret(tmp_path, "v2", "two")
        wait_for(lambda: hits, 5, "the ..data swap")
        (tmp_path / "appears-later").write_text("here")
        wait_for(lambda: late_hits, 5, "the late file")
    finally:
        watcher.stop()
        late.stop()


def test_unrelated_files_and_our_own_reads_are_ignored(tmp_path: Path) -> None:
    target = tmp_path / "tokend.toml"
    target.write_text("x")
    watcher, hits = watcher_on(target)
    try:
        (tmp_path / "other").write_text("y")
        target.read_text()
        marker = tmp_path / "marker"
        marker_watch, marker_hits = watcher_on(marker)
        marker.write_text("z")  # events are delivered in order: once this one is in, the
        wait_for(lambda: marker_hits, 5, "the marker")  # others have been judged
        marker_watch.stop()
        assert hits == []
    finally:
        watcher.stop()


def test_a_raising_handler_does_not_kill_the_observer(tmp_path: Path) -> None:
    target = tmp_path / "tokend.toml"
    target.write_text("x")
    calls: list[int] = []

    def explode() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    watcher = Watcher(explode)
    watcher.update([target])
    try:
        target.write_text("y")
        wait_for(lambda: calls, 5, "the first (raising) call")
        time.sleep(0.1)
        target.write_text("z")
        wait_for(lambda: len(calls) >= 2, 5, "events after the exception")
        assert watcher.alive()
    finally:
        watcher.stop()


def test_a_dead_observer_is_restarted(tmp_path: Path) -> None:
    target = tmp_path / "tokend.toml"
    target.write_text("x")
    watcher, hits = watcher_on(target)
    try:
        assert watcher.observer is not None
        watcher.observer.stop()
        watcher.observer.join()
        assert watcher.ensure_alive() is True and watcher.alive()
        target.write_text("y")
        wait_for(lambda: hits, 5, "events through the new observer")
    finally:
        watcher.stop()


def test_a_directory_that_vanishes_before_the_watch_starts_costs_only_its_own_watch(tmp_path: Path) -> None:
    """kubelet removes the old ``..TIMESTAMP`` directory right after its ``..data`` swap:
    a directory listed for the watch may be gone when watchdog adds its inotify watch (it
    does so only when the observer starts). That once made the daemon die of the reload."""
    target = tmp_path / "tokend.toml"
    target.write_text("x")
    watcher, hits = watcher_on(target)
    try:
        gone = tmp_path / "..2026_12_02_20_05_37.1"
        gone.mkdir()
        with watcher.lock:
            watcher.directories = frozenset({str(tmp_path), str(gone)})
        gone.rmdir()  # listed, then removed before the watch starts
        watcher.restart()
        assert watcher.alive() and watcher.directories == frozenset({str(tmp_path)})
        target.write_text("y")
        wait_for(lambda: hits, 5, "events in the directory still there")
    finally:
        watcher.stop()


def test_a_reschedule_asks_for_a_look_since_a_change_between_observers_is_unseen(tmp_path: Path) -> None:
    """When the watched directories move (kubelet's next ``..TIMESTAMP``), one observer
    stops and another starts: a rotation in between has no observer. The watcher asks the
    reloader to compare hashes once after each reschedule, and not when nothing moved."""
    tokens = tmp_path / "tokens"
    first = tokens / "..1"
    first.mkdir(parents=True)
    (first / "token").write_text("a")
    (tokens / "..data").symlink_to("..1")
    (tokens / "token").symlink_to("..data/token")
    watcher, hits = watcher_on(tokens / "token")
    try:
        assert hits == []  # the first start: nothing to catch up on
        watcher.update([tokens / "token"])
        assert hits == []  # the same directories: no reschedule, no look
        second = tokens / "..2"
        second.mkdir()
        (second / "token").write_text("b")
        (tokens / "..data_tmp").symlink_to("..2")
        (tokens / "..data_tmp").rename(tokens / "..data")
        wait_for(lambda: hits, 5, "the old observer's event of the swap")
        hits.clear()  # what follows comes from the reschedule alone
        watcher.update([tokens / "token"])  # the chain now runs through ..2
        assert len(hits) >= 1 and str(second) in watcher.directories
    finally:
        watcher.stop()


# --------------------------------------------------------------------------- the daemon


def requests_for(idp: TokenEndpoint, scope: str) -> int:
    return sum(1 for s in idp.seen if s.params.get("scope") == scope)


def reloads(daemon: DaemonProcess) -> int:
    return daemon.log.count("reload applied")


def two_credentials(idp: TokenEndpoint, tmp: Path) -> list[str]:
    return [
        credential_toml(idp.url, tmp, "a", extra='scope = "a"'),
        credential_toml(idp.url, tmp, "b", extra='scope = "b"'),
    ]


@pytest.fixture
def running(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> DaemonProcess:
    config = write_config(tmp_path, *two_credentials(idp, tmp_path))
    daemon = daemons(config, tmp_path)
    wait_for(
        lambda: (tmp_path / "out" / "a.token").exists() and (tmp_path / "out" / "b.token").exists(),
        10,
        "both tokens",
    )
    return daemon


@pytest.mark.parametrize("edit", ["in place", "temp then rename", "sed -i"])
def test_an_added_credential_is_fetched_and_the_others_untouched(
    idp: TokenEndpoint, tmp_path: Path, running: DaemonProcess, edit: str
) -> None:
    config = tmp_path / "tokend.toml"
    text = config.read_text() + credential_toml(idp.url, tmp_path, "c", extra='scope = "c"')
    if edit == "in place":
        with open(config, "r+") as stream:  # same inode, truncated and rewritten
            stream.write(text)
    elif edit == "temp then rename":
        tmp = tmp_path / ".tokend.toml.tmp"
        tmp.write_text(text)
        tmp.replace(config)
    else:  # sed writes a temp file and renames it over the config
        block = credential_toml(idp.url, tmp_path, "c", extra='scope = "c"').replace("\n", "\\n")
        subprocess.run(["sed", "-i", f"$ s|$|\\n{block}|", str(config)], check=True)
    wait_for(lambda: (tmp_path / "out" / "c.token").exists(), 10, "the added credential's token")
    assert requests_for(idp, "a") == 1 and requests_for(idp, "b") == 1
    assert "1 added" in running.log


def test_a_burst_of_writes_is_one_reload(idp: TokenEndpoint, tmp_path: Path, running: DaemonProcess) -> None:
    config = tmp_path / "tokend.toml"
    base = config.read_text()
    for i in range(10):  # an editor, or git checkout, writing again and again
        config.write_text(
            base
            + f"# save {i}\n"
            + (credential_toml(idp.url, tmp_path, "c", extra='scope = "c"') if i == 9 else "")
        )
        time.sleep(0.02)
    wait_for(lambda: (tmp_path / "out" / "c.token").exists(), 10, "the added credential")
    time.sleep(0.5)  # longer than the debounce quiet time: any second reload would be in
    assert reloads(running) == 1


def test_a_rotated_secret_is_used_at_once_for_its_credential_only(
    idp: TokenEndpoint, tmp_path: Path, running: DaemonProcess
) -> None:
    secret = tmp_path / "a.secret"
    tmp = tmp_path / ".a.secret.new"
    tmp.write_text("rotated-secret\n")
    tmp.replace(secret)
    wait_for(lambda: requests_for(idp, "a") == 2, 10, "a's refetch with the new secret")
    latest = [s for s in idp.seen if s.params.get("scope") == "a"][-1]
    assert latest.basic_auth == ("client-1", "rotated-secret")
    assert requests_for(idp, "b") == 1
    sink = tmp_path / "out" / "a.token"
    # The IdP answers before the daemon writes: wait for the sink's content, not the request.
    wait_for(lambda: sink.read_text() == "tok-3\n", 10, "the new token in a's sink")


def test_a_kubernetes_secret_swap_is_used_at_once(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    kubernetes_secret(secrets, "v1", "first-secret")
    block = credential_toml(idp.url, tmp_path).replace(
        str(tmp_path / "api.secret"), str(secrets / "password")
    )
    daemon = daemons(write_config(tmp_path, block), tmp_path)
    wait_for(lambda: len(idp.seen) == 1, 10, "the first token")
    kubernetes_secret(secrets, "v2", "second-secret")
    wait_for(lambda: len(idp.seen) == 2, 10, "a refetch after the swap")
    assert idp.seen[-1].basic_auth == ("client-1", "second-secret")
    assert daemon.proc.poll() is None


def test_delete_then_recreate_and_a_secret_that_appears_later(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    block = credential_toml(idp.url, tmp_path).replace(
        str(tmp_path / "api.secret"), str(tmp_path / "later.secret")
    )
    daemon = daemons(write_config(tmp_path, block), tmp_path)
    wait_for(lambda: "later.secret: no such file" in daemon.log, 10, "the missing secret reported")
    assert idp.seen == []
    (tmp_path / "later.secret").write_text("late-secret\n")
    wait_for(lambda: len(idp.seen) == 1, 10, "a fetch once the secret appears")
    (tmp_path / "later.secret").unlink()
    (tmp_path / "later.secret").write_text("recreated-secret\n")
    wait_for(lambda: len(idp.seen) == 2, 10, "a refetch after delete and recreate")
    assert [s.basic_auth for s in idp.seen] == [("client-1", "late-secret"), ("client-1", "recreated-secret")]


def test_moving_a_sink_costs_no_request(idp: TokenEndpoint, tmp_path: Path, running: DaemonProcess) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(config.read_text().replace(f"{tmp_path}/out/b.token", f"{tmp_path}/out/b2.token"))
    wait_for(lambda: (tmp_path / "out" / "b2.token").exists(), 10, "the moved sink")
    assert (tmp_path / "out" / "b2.token").read_text() == (tmp_path / "out" / "b.token").read_text()
    assert len(idp.seen) == 2
    assert "1 with new sinks or timing" in running.log


def test_a_bad_edit_is_rejected_while_tokens_rotate_and_the_fix_applies(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 2
    fast = 'min_ttl_margin = "0s"\nrefresh_at = 0.6'
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=fast))
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(idp.issued_at) >= 1, 10, "the first token")
    good = config.read_text()
    config.write_text(good.replace("refresh_at = 0.6", "refresh_at = 6"))
    wait_for(lambda: "reload rejected" in daemon.log, 10, "the rejection")
    assert "credentials.api.refresh_at: must be between 0.5 and 0.95" in daemon.log
    before = len(idp.issued_at)
    wait_for(lambda: len(idp.issued_at) >= before + 2, 10, "rotation on the last good config")
    config.write_text(good + credential_toml(idp.url, tmp_path, "fixed", extra='scope = "f"'))
    wait_for(lambda: (tmp_path / "out" / "fixed.token").exists(), 10, "the fix applied")
    assert daemon.proc.poll() is None


def test_sighup_and_the_watcher_share_one_path(
    idp: TokenEndpoint, tmp_path: Path, running: DaemonProcess
) -> None:
    running.signal(1)  # SIGHUP with nothing changed: a reload that touches nothing
    wait_for(lambda: "SIGHUP: reloading" in running.log and reloads(running) == 1, 10, "the reload")
    assert "2 unchanged" in running.log and len(idp.seen) == 2
