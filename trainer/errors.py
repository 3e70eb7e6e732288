"""Errors shown to users as one line (exit status 2), shared by trainer and monitor."""

from __future__ import annotations

from trainer.clikit import UsageError


class ConfigError(UsageError):
    """A bad configuration value: names the file and the key path, says what was expected."""

    def __init__(self, key: str, message: str, file: str | None = None) -> None:
        self.key, self.file, self.detail = key, file, message
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {message}")
