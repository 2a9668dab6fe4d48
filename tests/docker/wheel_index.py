"""A loopback package index for the image builds in tests/docker, so no build downloads torch again.

Production builds install from PyPI. Here, pip inside a build could reach PyPI only through this
machine's TLS proxy (its CA bundle would have to enter the image), and would fetch gigabytes of torch
and CUDA wheels on every cold build. Instead the images' requirements are resolved once, by the pip of
the Python base image itself (so environment markers match the image's interpreter), in a throwaway
container that sees this machine's CA bundle and local wheel folders (pip's extra-index-url) read-only.
Wheels already on disk are linked, the rest are downloaded or built from sdists into a cache, and a PEP
503 `simple/` index over exactly that set is served on 127.0.0.1. The builds get it as `PIP_INDEX_URL`
(the Dockerfiles declare that build argument) with `--network host`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parents[2]
# The S3 stand-in's server (tests/docker/standins/moto.Dockerfile installs the same pin).
MOTO = "moto[server]==5.2.5"
PYTHON_IMAGE = "python:3.11.11-slim-bookworm"
PORT = int(os.environ.get("ARTGEN_TEST_INDEX_PORT", "39116"))
CA_BUNDLE = Path(os.environ.get("ARTGEN_TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))


def _local_indexes() -> list[str]:
    """This machine's pip extra-index-url entries that are folders on disk (file://...)."""
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.extra-index-url"],
        capture_output=True,
        text=True,
    )
    return [url for url in found.stdout.split() if url.startswith("file://")]


def _pip_in_image(cache: Path) -> tuple[list[str], list[str]]:
    """`pip` run in the Python base image, with the cache, CA bundle and local wheel folders mounted."""
    indexes = _local_indexes()
    mounts = [f"{cache}:{cache}"]
    for url in indexes:
        folder = Path(unquote(urlparse(url).path)).parent  # .../simple -> the index with its files/
        mounts.append(f"{folder}:{folder}:ro")
    command = ["docker", "run", "--rm", "--network", "host"]
    if CA_BUNDLE.exists():
        command += ["-v", f"{CA_BUNDLE}:/etc/artgen-test-ca.crt:ro", "-e", "PIP_CERT=/etc/artgen-test-ca.crt"]
    for mount in mounts:
        command += ["-v", mount]
    command += ["-e", "PIP_DISABLE_PIP_VERSION_CHECK=1", "-e", "PIP_ROOT_USER_ACTION=ignore", PYTHON_IMAGE]
    command += ["python", "-m", "pip"]
    return command, [arg for url in indexes for arg in ("--extra-index-url", url)]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dockerfile_arg(dockerfile: str, name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)", (REPO / dockerfile).read_text(), flags=re.MULTILINE)
    assert found, f"{dockerfile} has no ARG {name}=..."
    return found.group(1)


def requirements() -> list[str]:
    """Everything the api, worker and S3 stand-in images install, as their Dockerfiles read it."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    torch = [
        f"torch=={_dockerfile_arg('Dockerfile.worker', 'TORCH_VERSION')}",
        f"torchvision=={_dockerfile_arg('Dockerfile.worker', 'TORCHVISION_VERSION')}",
    ]
    build = pyproject["build-system"]["requires"]
    return sorted({*project["dependencies"], *extras["api"], *extras["worker"], *torch, *build, MOTO})


def build(cache: Path) -> Path:
    """The index folder for the current requirements (reused when they have not changed)."""
    reqs = requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    root = cache / "index" / key
    if (root / "simple" / "index.html").exists():
        return root
    wheelhouse = cache / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    req_file = cache / f"requirements-{key}.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    report_file = cache / f"report-{key}.json"
    pip, extra = _pip_in_image(cache)
    # --ignore-installed: resolve as on an image with nothing installed yet.
    subprocess.run(
        [*pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report_file), *extra,
         "-r", str(req_file)],
        check=True,
    )  # fmt: skip
    files: dict[str, Path] = {}
    fetch_wheels, build_sdists = [], []
    for item in json.loads(report_file.read_text())["install"]:
        url = item["download_info"]["url"]
        pin = f"{item['metadata']['name']}=={item['metadata']['version']}"
        if url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            files[path.name] = path
        elif url.endswith(".whl"):
            fetch_wheels.append(pin)
        else:
            build_sdists.append(pin)
    if fetch_wheels:
        command = [*pip, "download", "-q", "--no-deps", *extra, "-d", str(wheelhouse), *fetch_wheels]
        subprocess.run(command, check=True)
    if build_sdists:
        command = [*pip, "wheel", "-q", "--no-deps", *extra, "-w", str(wheelhouse), *build_sdists]
        subprocess.run(command, check=True)
    wanted = {_normalize(pin.split("==")[0]): pin.split("==")[1] for pin in fetch_wheels + build_sdists}
    for wheel in wheelhouse.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if wanted.get(_normalize(name)) == version:
            files[wheel.name] = wheel

    tmp = root.with_suffix(".part")
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    (tmp / "files").mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for filename, path in files.items():
        (tmp / "files" / filename).symlink_to(path)
        projects.setdefault(_normalize(filename.split("-")[0]), []).append(filename)
    for project, names in projects.items():
        links = "".join(f'<a href="../../files/{n}">{n}</a>\n' for n in sorted(names))
        (tmp / "simple" / project).mkdir(parents=True)
        (tmp / "simple" / project / "index.html").write_text(
            f"<!DOCTYPE html><html><body>\n{links}</body></html>\n"
        )
    top = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (tmp / "simple" / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{top}</body></html>\n")
    tmp.rename(root)
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(root: Path, port: int = PORT) -> Iterator[str]:
    """Serve the index on loopback; yields its `simple/` URL.

    The same port each run when it is free: the URL is a build argument, and a new value would make
    Docker rebuild every layer after it (the torch layer included).
    """
    handler = partial(_QuietHandler, directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
