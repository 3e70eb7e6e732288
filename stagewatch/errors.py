"""Errors shown to users as one line (exit status 2), shared by the trainer and the monitor."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, exit status 2."""


class ConfigError(UsageError):
    """A bad configuration value: names the file and the key path, says what was expected."""

    def __init__(self, key: str, message: str, file: str | None = None) -> None:
        self.key, self.file, self.detail = key, file, message
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {message}")
