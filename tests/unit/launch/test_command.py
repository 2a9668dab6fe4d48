"""The `artgen` dispatcher: every subcommand listed, and the gateway's commands run without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from launch.cli import cli

# Resolve the commands the API image runs, then report which heavy or other-side modules got imported.
_PROBE = """
import json, sys, click
from launch.cli import cli
with click.Context(cli) as ctx:
    for name in sys.argv[1:]:
        assert cli.get_command(ctx, name) is not None, name
print(json.dumps(sorted(m for m in ("torch", "worker", "api") if m in sys.modules)))
"""


def _imported_by(*commands: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *commands], capture_output=True, text=True, check=True, timeout=120
    )
    imported: list[str] = json.loads(done.stdout)
    return imported


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("generate", "models", "up", "api", "worker", "flower"):
        assert f"  {name} " in result.output


@pytest.mark.parametrize(
    ("commands", "expected"),
    [((), []), (("api",), ["api"]), (("flower",), []), (("api", "flower"), ["api"])],
)
def test_gateway_commands_never_import_torch(commands: tuple[str, ...], expected: list[str]) -> None:
    assert _imported_by(*commands) == expected
