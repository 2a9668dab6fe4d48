"""pyproject's package list: the packages and the toyworld preset's files ship; its training does not."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[3]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_toyworld_training_folder_is_not_a_shipped_package() -> None:
    found = set(find_packages(str(REPO), **SETUPTOOLS["packages"]["find"]))
    assert {"api", "launch", "shared", "worker", "worker.toyworld"} <= found
    assert not {name for name in found if name.split(".")[0] in ("toyworld", "bench", "tests")}


def test_the_preset_keeps_only_its_spec_and_weights() -> None:
    shipped = sorted(p.name for p in (REPO / "worker" / "toyworld").iterdir() if p.name != "__pycache__")
    assert shipped == [
        "__init__.py", "manifest.json", "spec.py", "toyworld_clip.safetensors", "toyworld_vqgan.safetensors"
    ]  # fmt: skip
    assert SETUPTOOLS["package-data"]["worker"] == ["toyworld/*"]  # the weights and manifest go with it


def test_nothing_in_the_packages_imports_the_training_code() -> None:
    for package in ("api", "launch", "shared", "worker"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            assert "from toyworld" not in text and "import toyworld" not in text, path
