"""The production path for real: the repo's Dockerfiles built, the compose stack up, real HTTP.

`make test-docker` first runs bootstrap.sh (Docker engine, Compose v2, stand-ins for the public base
images), then these tests. One stack serves the session: docker-compose.yml with docker-compose.cpu.yml
(no GPU here) and compose.test.yml (the S3 stand-in for MinIO, the loopback wheel index for builds).
Measured figures go to test-artifacts/docker-figures.json.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from launch.processes import wait_for as _wait_for
from tests.docker import wheel_index

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
CACHE = Path(os.environ.get("ARTGEN_DOCKER_CACHE", "/var/cache/artgen-docker"))
PROJECT = "artgen-dockertest"
FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "tests/docker/compose.test.yml"]
FIGURES = REPO / "test-artifacts" / "docker-figures.json"
# Every secret compose requires (`${VAR:?...}` in docker-compose.yml).
SECRETS = [
    "REDIS_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "ARTGEN_API_KEYS",
    "ARTGEN_S3_ACCESS_KEY_ID",
    "ARTGEN_S3_SECRET_ACCESS_KEY",
    "ARTGEN_FLOWER_USER",
    "ARTGEN_FLOWER_PASSWORD",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks these tests `docker` (and `slow`); they run only when `-m` names `docker`, as
    `make test-docker` does, so no other selection (`make test`, `-m 'not browser'`) starts Docker."""
    ours = [item for item in items if Path(str(item.fspath)).is_relative_to(HERE)]
    for item in ours:
        item.add_marker(pytest.mark.docker)
        item.add_marker(pytest.mark.slow)
    if ours and "docker" not in (config.getoption("markexpr") or ""):
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


# The launcher's polling helper, at a slower default pace: compose and the containers are polled over
# `docker` commands and HTTP, and twenty a second would only load the machine the stack runs on.
wait_for = functools.partial(_wait_for, interval_s=0.5)


def free_port() -> int:
    """A free port below the ephemeral range: published again after `down`, so no client socket of
    another process may have taken it meanwhile (as one can with a port the kernel handed out)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randint(20000, min(low, 32768) - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def run(
    args: list[str], timeout_s: float = 600, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def record(**figures: Any) -> None:
    """Merge measured figures into test-artifacts/docker-figures.json (the README's "Figures")."""
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update(figures)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def compose_env() -> dict[str, str]:
    """This process's environment without any compose variable, so only the env file sets them."""
    env = {
        k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("ARTGEN_", "COMPOSE_"))
    }
    env.pop("IMAGE_PREFIX", None)
    env.pop("IMAGE_TAG", None)
    return env


@dataclass
class Stack:
    env_file: Path
    settings: dict[str, str]
    project: str = PROJECT
    figures: dict[str, Any] = field(default_factory=dict)

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for name in FILES for arg in ("-f", str(REPO / name))]
        command = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file), *files, *args]
        return run(command, timeout_s=timeout_s, check=check, cwd=REPO, env=compose_env())

    @property
    def api_url(self) -> str:
        return f"http://{self.settings['API_PUBLISH']}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['FLOWER_TEST_PORT']}"

    @property
    def api_key(self) -> str:
        return self.settings["ARTGEN_API_KEYS"]

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]
        return data

    def services(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def up(self) -> float:
        """`up -d --wait`: returns seconds until every service is healthy (or, for one-offs, done)."""
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", timeout_s=360)
        return time.monotonic() - started

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout[-8000:]


def write_env(path: Path, settings: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    path.chmod(0o600)


def stack_settings(index_url: str, env_file: Path) -> dict[str, str]:
    settings = {name: secrets.token_hex(20) for name in SECRETS}
    settings["ARTGEN_FLOWER_USER"] = "ops"
    settings.update(
        IMAGE_PREFIX=PROJECT,
        API_PUBLISH=f"127.0.0.1:{free_port()}",
        FLOWER_TEST_PORT=str(free_port()),
        # The CPU wheel index cannot be reached from here; the default (CUDA) torch runs on the CPU too.
        TORCH_VARIANT="cuda",
        ARTGEN_TEST_INDEX_URL=index_url,
        ARTGEN_TEST_ENV_FILE=str(env_file),
        # Artgen settings reach the containers through env_file, as production's .env does.
        ARTGEN_CHECKPOINT_EVERY="5",
        ARTGEN_WEBHOOK_SECRET="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        ARTGEN_WEBHOOK_ALLOW_HOSTS="api",
    )
    return settings


@pytest.fixture(scope="session")
def engine() -> None:
    found = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(
            f"no Docker engine: run tests/docker/bootstrap.sh (make test-docker does)\n{found.stderr}"
        )
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.fail("no `docker compose` (v2): run tests/docker/bootstrap.sh (make test-docker does)")


@pytest.fixture(scope="session")
def index_url(engine: None) -> Iterator[str]:
    with wheel_index.serve(wheel_index.build(CACHE)) as url:
        yield url


@pytest.fixture(scope="session")
def images(index_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The images built by compose, timed one by one; the returned Stack is not up yet."""
    env_file = tmp_path_factory.mktemp("compose") / "artgen.env"
    settings = stack_settings(index_url, env_file)
    write_env(env_file, settings)
    stack = Stack(env_file, settings)
    stack.compose("down", "--volumes", "--remove-orphans", timeout_s=300)  # leftovers of a killed run
    # The dependency layers are reused when only code changed (README "Deploy", "Figures").
    for service in ("api", "worker", "minio"):
        started = time.monotonic()
        stack.compose("build", service, timeout_s=1800)
        stack.figures[f"build_{service}_s"] = round(time.monotonic() - started, 1)
    for image in ("api", "worker"):
        size = run(["docker", "image", "inspect", "-f", "{{.Size}}", f"{PROJECT}-{image}:local"]).stdout
        stack.figures[f"image_{image}_bytes"] = int(size)
    try:
        yield stack
    finally:
        record(**stack.figures)


@pytest.fixture(scope="session")
def stack(images: Stack) -> Iterator[Stack]:
    """The stack up and healthy; taken down with its volumes at the end of the session."""
    try:
        images.figures["up_to_healthy_s"] = round(images.up(), 1)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- logs ---\n{images.logs()}") from None
    try:
        yield images
    finally:
        images.compose("down", "--volumes", "--remove-orphans", timeout_s=300, check=False)
