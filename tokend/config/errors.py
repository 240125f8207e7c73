""":class:`ConfigError`, the one exception loading a config raises."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A config problem, printed as one line: ``FILE: credentials.NAME.KEY: what is wrong``."""

    def __init__(self, file: Path | str, message: str, *, where: str | None = None) -> None:
        self.file = str(file)
        self.where = where
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{self.file}: {place}{self.message}"
