"""Reloading: notice that a watched file changed, load the config again, plan the diff
and apply it to the running slots.

A reload is applied as a diff so that an edit to one credential never costs another one a
request, and an edit that only moves sinks costs the identity provider nothing. The
daemon keeps what is its own: the current config, its readiness, the status.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from tokend.config import Config, ConfigError, CredentialConfig, SinkConfig, load
from tokend.config.reload_plan import ReloadPlan, plan_reload
from tokend.daemon.runner import Runner
from tokend.io.sinks import in_the_way
from tokend.io.watch import Debouncer, FileState, Watcher, changed, read_state, read_states, watched_files

log = logging.getLogger("tokend.daemon")


class Reloader:
    def __init__(self, environ: Mapping[str, str] | None, touched: Callable[[], None]) -> None:
        """``touched`` is called from the watcher's thread and must only queue."""
        self.environ = environ
        self.watcher = Watcher(touched)
        self.debounce = Debouncer()
        self.file_states: dict[Path, FileState] = {}

    def watch(self, config: Config) -> None:
        """(Re)start watching what ``config`` depends on.

        Only files new to the watch get a baseline read here. A file already watched keeps
        the state it was last *compared* at: an edit that lands while a reload is being
        applied must still count as a change at the next check, not become the baseline.
        """
        files = watched_files(config)
        self.file_states = {path: self.file_states.get(path) or read_state(path) for path in files}
        self.watcher.update(files)

    def changes(self, config: Config) -> set[Path]:
        """The watched files whose content changed since they were last compared."""
        states = read_states(watched_files(config), self.file_states)
        differ = changed(self.file_states, states)
        self.file_states = states
        return differ

    def load(self, path: Path) -> Config | ConfigError:
        """The new config, or why it is rejected; never an exception."""
        try:
            return load(path, self.environ)
        except ConfigError as exc:
            return exc
        except Exception as exc:  # load raises only ConfigError; anything else is rejected too
            return ConfigError(path, f"cannot be loaded ({type(exc).__name__})")

    def apply(
        self, runner: Runner, old: Config, new: Config, changed_files: frozenset[Path] | set[Path]
    ) -> ReloadPlan:
        """Start, stop and replace slots as the plan says; returns the plan."""
        plan = plan_reload(old.credentials, new.credentials, changed_files)
        for name in plan.removed:
            runner.remove(name, then=lambda cred: remove_sink_files(cred, keep=runner.sinks_in_use()))
            log.info("%s: removed from the config; stopped", name)
        for name in plan.added:
            runner.add(new.credentials[name])
        for name in plan.refetch:
            log.info("%s: settings or secret changed; asking for a new token (the old stays meanwhile)", name)
            runner.add(new.credentials[name], force=True, previous=runner.slots[name])
        for name in plan.resink:
            remove_sink_files(old.credentials[name], keep=new.credentials[name].sinks)
            runner.add(new.credentials[name], previous=runner.slots[name])
        runner.retry_fatal(plan.unchanged)  # a reload is the moment to retry a fatal error
        log.info("reload applied: %s", plan.summary())
        return plan

    def ensure_watching(self) -> bool:
        """Restart a dead watcher; True if it had to."""
        return self.watcher.ensure_alive()

    def stop(self) -> None:
        self.watcher.stop()


def remove_sink_files(cred: CredentialConfig, keep: tuple[SinkConfig, ...]) -> None:
    """Delete the sinks marked ``remove_on_stop`` that are not in ``keep``: regular files
    only, and a failure (read-only directory, a directory in the way) is logged, never
    fatal to the reload that asked for it."""
    kept = {sink.path for sink in keep}
    for sink in cred.sinks:
        if not sink.remove_on_stop or sink.path in kept:
            continue
        reason = in_the_way(sink.path)
        if reason is not None:
            log.warning("%s: not removing %s (remove_on_stop): it %s", cred.name, sink.path, reason)
            continue
        try:
            os.unlink(sink.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot remove %s (remove_on_stop): %s", cred.name, sink.path, exc.strerror)
            continue
        log.info("%s: removed %s (remove_on_stop)", cred.name, sink.path)
