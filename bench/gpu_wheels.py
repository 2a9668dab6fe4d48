"""The wheels bench/gpu.py needs on the GPU machine and does not find there, made here for its Python.

    python bench/gpu_wheels.py --dest .whl      # what `make bench-gpu-wheels` runs

The GPU machine has Python 3.12 on x86-64 Linux with its own torch, torchvision, numpy, pillow, regex,
tqdm and pytest (see BENCHMARKS.md, "GPU"), and reaches no package index. What the engine imports beyond
those travels with the working tree as wheels: each at the version this project's venv holds (the one the
tests ran), a binary wheel for CPython 3.12 manylinux where the package has compiled parts, else a pure
Python wheel (built here from the sdist when PyPI has no wheel). One version of each, no dependencies
pulled in: the list below is complete. The tree that travels, wheels included, must stay under 64 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.gpu_wheels")

# distribution -> why the GPU machine needs it
CARRIED = {
    "openai-clip": "CLIP's model and tokenizer (an sdist: built here)",
    "ftfy": "openai-clip's text cleaning",
    "wcwidth": "ftfy's",
    "taming-transformers": "the VQGAN's Encoder and Decoder modules (an sdist: built here)",
    "pydantic": "shared.settings and shared.params, which the engine reads its limits from",
    "pydantic-core": "pydantic's compiled core (CPython 3.12, manylinux x86-64)",
    "pydantic-settings": "shared.settings",
    "python-dotenv": "pydantic-settings'",
    "annotated-types": "pydantic's",
    "typing-inspection": "pydantic's",
    "typing-extensions": "pydantic's, newer than torch needs",
    "setuptools": "pkg_resources, which openai-clip imports (gone from setuptools 81 on)",
}
PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)
TREE_LIMIT = 64 * 2**20  # what the GPU machine's lease carries: working tree and wheels together


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(name: str, version: str, dest: Path, python: str = PYTHON) -> Path:
    """One wheel of name==version for the GPU machine into dest: downloaded, else built from the sdist."""
    with tempfile.TemporaryDirectory() as tmp:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        done = _pip(
            "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", *platforms, "-d", tmp, f"{name}=={version}",
        )  # fmt: skip
        if done.returncode != 0:
            log.info("%s %s: no wheel for CPython %s; building it (pure Python)", name, version, python)
            done = _pip("wheel", "--quiet", "--no-deps", "-w", tmp, f"{name}=={version}")
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"{name}=={version}: no wheel ({done.stderr.strip()[-500:]})")
        wheel = wheels[0]
        # pip chose it for that Python (its ABI, or the stable ABI of an older 3.x); a build must be pure
        _, abi, platform = wheel.name.removesuffix(".whl").split("-")[-3:]
        if (abi, platform) != ("none", "any") and not ("manylinux" in platform and "x86_64" in platform):
            raise RuntimeError(f"{wheel.name} is not for CPython {python} on x86-64 Linux")
        return Path(shutil.copy2(wheel, dest / wheel.name))


def tree_bytes() -> int:
    """Bytes of what travels besides the wheels: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", type=Path, default=REPO / ".whl")
    parser.add_argument("--python-version", default=PYTHON, help="another for a rehearsal on this machine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dest.exists():
        shutil.rmtree(args.dest)  # one version of each: two stop the install there
    args.dest.mkdir(parents=True)
    for name, why in CARRIED.items():
        version = importlib.metadata.version(name)
        wheel = fetch(name, version, args.dest, args.python_version)
        log.info("%-22s %-10s %7.1f KiB  %s", name, version, wheel.stat().st_size / 1024, why)
    wheels = sum(w.stat().st_size for w in args.dest.glob("*.whl"))
    tree = tree_bytes()
    print(f"{len(CARRIED)} wheels, {wheels / 2**20:.1f} MiB; with the tree ({tree / 2**20:.1f} MiB) "
          f"{(wheels + tree) / 2**20:.1f} MiB of the {TREE_LIMIT // 2**20} MiB that travel")  # fmt: skip
    if wheels + tree > TREE_LIMIT:
        print(f"too large to travel: {(wheels + tree) / 2**20:.1f} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
