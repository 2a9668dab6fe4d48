"""The `artgen` command. Subcommands are imported only when run, so `artgen api` never imports torch."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

# name -> "module:attribute" of a click command
_COMMANDS = {
    "generate": "worker.cli:generate",
    "models": "worker.cli:models",
    "up": "launch.up:up",
    "api": "api.cli:api",
    "worker": "worker.main:worker",
    "webhooks": "api.cli:webhooks",
    "flower": "launch.flower:flower",
}
_HELP = {
    "generate": "Paint one picture in this process, with a progress bar.",
    "models": "List the model presets, or pull their weights.",
    "up": "Run the whole stack on this machine: Redis, one worker, the webhooks worker, the API.",
    "api": "Run the HTTP gateway alone.",
    "worker": "Run one Celery worker process alone.",
    "webhooks": "Run the webhook delivery worker (no torch) alone.",
    "flower": "Run the Flower dashboard on the same broker.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every subcommand (and torch with them).
        with formatter.section("Commands"):
            formatter.write_dl([(name, _HELP[name]) for name in _COMMANDS])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", envvar="ARTGEN_LOG_LEVEL", default="INFO", show_default=True)
def cli(log_level: str) -> None:
    """artgen: VQGAN+CLIP painting as a service. Settings come from ARTGEN_* variables; flags override."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="artgen")


if __name__ == "__main__":
    main()
