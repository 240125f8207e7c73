"""Whether fleet mode can run here, and its token source: light (no redis-py, no
cryptography), so ``tokend check`` and a daemon without ``[fleet]`` never import them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tokend.config import ConfigError, FleetConfig
from tokend.core.fleet import FleetEvent
from tokend.daemon.clock import Clock
from tokend.daemon.token_source import TokenSource


def fleet_imports(config_path: Path) -> None:
    """redis-py and cryptography, or the one-line config error that says how to get them."""
    try:
        import cryptography  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            config_path, f"needs {exc.name}: pip install 'tokend[fleet]'", where="fleet"
        ) from None


def open_fleet(
    fleet: FleetConfig,
    config_path: Path,
    *,
    environ: Mapping[str, str] | None,
    report: Callable[[FleetEvent, str | None], None],
    clock: Clock,
) -> TokenSource:
    """:class:`tokend.daemon.fleet.Fleet`, once its libraries are known to be there (a
    password it cannot read: a ConfigError)."""
    fleet_imports(config_path)
    from tokend.daemon.fleet import Fleet

    return Fleet(fleet, config_path, environ=environ, report=report, clock=clock)
