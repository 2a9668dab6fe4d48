"""`.env.example` lists every setting, each with a comment, and loading it as-is changes nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / ".env.example"
ASSIGNMENT = re.compile(r"^(#\s)?(ARTGEN_[A-Z0-9_]+)=(.*)$")


@pytest.fixture(autouse=True)
def _no_artgen_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the file speaks: the machine's ARTGEN_* variables are removed for these tests."""
    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)


def _entries() -> dict[str, tuple[bool, str, str]]:
    """ARTGEN name -> (commented out, value, the comment line above it)."""
    lines = EXAMPLE.read_text().splitlines()
    entries: dict[str, tuple[bool, str, str]] = {}
    for number, line in enumerate(lines):
        match = ASSIGNMENT.match(line)
        if match is None:
            continue
        name = match.group(2)
        assert name not in entries, f"{name} is listed twice"
        above = lines[number - 1] if number else ""
        entries[name] = (match.group(1) is not None, match.group(3), above)
    return entries


def test_every_setting_is_listed_and_nothing_else() -> None:
    listed = set(_entries())
    fields = {f"ARTGEN_{name.upper()}" for name in Settings.model_fields}
    assert fields - listed == set(), "settings missing from .env.example"
    assert listed - fields == set(), ".env.example names settings that do not exist"


def test_every_setting_has_a_comment_of_its_own() -> None:
    for name, (_, _, above) in _entries().items():
        assert above.startswith("# ") and not ASSIGNMENT.match(above), f"{name} has no comment above it"
        assert len(above) > 10, f"{name}'s comment says nothing"


def test_loading_the_example_as_is_gives_the_defaults(tmp_path: Path) -> None:
    from_file = Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_file.model_dump() == defaults.model_dump()

    # The file is really read: one edited value shows through.
    edited = tmp_path / "edited.env"
    edited.write_text(EXAMPLE.read_text().replace("ARTGEN_MAX_SIZE=512", "ARTGEN_MAX_SIZE=1024"))
    assert Settings(_env_file=edited).max_size == 1024  # type: ignore[call-arg]


def test_unset_lines_are_settings_without_a_fixed_default() -> None:
    """A line is commented out only when its default is None or depends on the user's home."""
    for name, (commented, value, _) in _entries().items():
        field = Settings.model_fields[name.removeprefix("ARTGEN_").lower()]
        if not commented:
            continue
        default = field.get_default(call_default_factory=True)
        if default is None:
            assert value == "", f"{name} defaults to None; its example line must be empty"
        else:
            assert isinstance(default, Path) and default.is_relative_to(Path.home()), name
            assert Path(value).expanduser() == default, f"{name}: {value} is not its default {default}"


def test_values_match_defaults_literally() -> None:
    """Each set line shows the default as the field holds it (read through the settings class)."""
    for name, (commented, value, _) in _entries().items():
        if commented:
            continue
        field = name.removeprefix("ARTGEN_").lower()
        alone = Settings(_env_file=None, **{field: value} if value else {})  # type: ignore[arg-type,call-arg]
        assert getattr(alone, field) == getattr(Settings(_env_file=None), field), name  # type: ignore[call-arg]
