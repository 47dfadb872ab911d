"""What every command shares: the settings, built once per invocation, and logging configured from them."""

from __future__ import annotations

from pathlib import Path

import click

from foundation.logs import configure_logging
from foundation.settings import Settings, load_settings


class CommandContext:
    def __init__(self, config: Path | None, log_json: bool | None, log_level: str | None) -> None:
        self.config = config
        self.log_overrides = {k: v for k, v in {"json_format": log_json, "level": log_level}.items() if v is not None}
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                settings = load_settings(self.config)
                if self.log_overrides:
                    settings = settings.model_copy(update={"log": settings.log.model_copy(update=self.log_overrides)})
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            configure_logging(settings.log)
            self._settings = settings
        return self._settings


pass_ctx = click.make_pass_decorator(CommandContext)
