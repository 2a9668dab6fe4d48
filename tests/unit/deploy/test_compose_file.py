"""docker-compose.yml, checked by parsing it (no Docker engine here): services, health, GPUs, auth."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
COMPOSE = REPO / "docker-compose.yml"
LONG_RUNNING = ["redis", "minio", "api", "worker", "worker-gpu0", "worker-gpu1", "flower", "webhooks"]
WORKERS = ["worker", "worker-gpu0", "worker-gpu1"]
ARTGEN_SERVICES = ["api", "flower", "webhooks", *WORKERS]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def _joined(service: dict[str, Any], key: str = "command") -> str:
    value = service[key]
    return " ".join(value) if isinstance(value, list) else str(value)


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert set(services) == {*LONG_RUNNING, "buckets", "models"}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_healthchecks(services: dict[str, Any], name: str) -> None:
    health = services[name]["healthcheck"]
    assert health["test"][0] in {"CMD", "CMD-SHELL"}
    assert _seconds(health["interval"]) > 0 and _seconds(health["timeout"]) < _seconds(health["interval"])
    assert health["retries"] >= 2


@pytest.mark.parametrize(
    ("name", "needs"),
    [
        ("api", {"redis": "service_healthy", "buckets": "service_completed_successfully"}),
        ("worker", {"redis": "service_healthy", "buckets": "service_completed_successfully"}),
        ("worker-gpu0", {"redis": "service_healthy", "buckets": "service_completed_successfully"}),
        ("worker-gpu1", {"redis": "service_healthy", "buckets": "service_completed_successfully"}),
        ("flower", {"redis": "service_healthy"}),
        ("webhooks", {"redis": "service_healthy"}),
        ("buckets", {"minio": "service_healthy"}),
    ],
)
def test_dependencies_wait_for_health(services: dict[str, Any], name: str, needs: dict[str, str]) -> None:
    assert {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()} == needs


def test_redis_is_durable_and_never_evicts(services: dict[str, Any], compose: dict[str, Any]) -> None:
    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z0-9]+)?", redis["image"]), "official image, pinned"
    command = _joined(redis)
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    volume, target = redis["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"] and target == "/data", "AOF lives on a named volume"
    assert "redis-cli ping" in _joined(redis["healthcheck"], "test")
    assert "grep -q PONG" in _joined(redis["healthcheck"], "test"), "error replies exit 0 in redis-cli"
    assert "ports" not in redis, "Redis is not published by default"


def test_api(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["build"]["dockerfile"] == "Dockerfile.api"
    assert _command(api)[:4] == ["artgen", "api", "--host", "0.0.0.0"]
    assert "/healthz" in _joined(api["healthcheck"], "test")
    assert api["env_file"] == ".env"
    assert api["environment"]["ARTGEN_API_KEYS"].startswith("${ARTGEN_API_KEYS:?"), "API keys are on"
    # Several processes by default, their metrics summed in a fresh directory on the /tmp tmpfs.
    assert api["environment"]["ARTGEN_API_WORKERS"] == "${API_WORKERS:-2}"
    assert "/tmp" in api["tmpfs"] and api["read_only"] is True


@pytest.mark.parametrize("name", WORKERS)
def test_workers(services: dict[str, Any], compose: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert worker["build"]["dockerfile"] == "Dockerfile.worker"
    command = _command(worker)
    assert command[:2] == ["artgen", "worker"]
    assert command[command.index("--concurrency") + 1] == "1", "one job per GPU"
    assert worker["environment"]["ARTGEN_WORKER_CONCURRENCY"] == "1"
    assert worker["environment"]["ARTGEN_DEVICE"] == "cuda", "no silent CPU fallback"

    # The healthcheck pings the very name the worker registers under (%h = container hostname).
    hostname = command[command.index("--hostname") + 1]
    assert hostname == "worker@%h"
    health = _joined(worker["healthcheck"], "test")
    assert "inspect ping" in health and '--destination "worker@$$HOSTNAME"' in health

    models_dir = worker["environment"]["ARTGEN_MODELS_DIR"]
    volume, target = worker["volumes"][0].split(":")[:2]
    assert volume == "models" and volume in compose["volumes"] and target == models_dir

    # Long enough for Celery's warm shutdown to checkpoint and hand the running job back.
    assert _seconds(worker["stop_grace_period"]) >= 60
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_gpu_reservations(services: dict[str, Any]) -> None:
    def device(name: str) -> dict[str, Any]:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        spec: dict[str, Any] = devices[0]
        assert spec["driver"] == "nvidia" and spec["capabilities"] == ["gpu"]
        return spec

    assert device("worker")["count"] == 1
    ids = [device(name)["device_ids"] for name in ("worker-gpu0", "worker-gpu1")]
    assert ids == [["0"], ["1"]], "one service per GPU id"
    for name in ("worker-gpu0", "worker-gpu1"):
        assert services[name]["profiles"] == ["per-gpu"], "not started unless asked for"
    assert "profiles" not in services["worker"]


def test_flower_needs_credentials_from_the_environment(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert _command(flower)[:2] == ["artgen", "flower"]
    assert "--unauthenticated" not in _command(flower)
    env = flower["environment"]
    for name in ("ARTGEN_FLOWER_USER", "ARTGEN_FLOWER_PASSWORD"):
        # Required (`:?`), never a default (`:-`) and never a literal.
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), env[name]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"]), "Flower is local only"


def test_webhooks_run_torch_free_and_check_their_own_consumer(services: dict[str, Any]) -> None:
    webhooks = services["webhooks"]
    assert webhooks["build"]["dockerfile"] == "Dockerfile.api", "the API image: no torch"
    command = _command(webhooks)
    assert command[:2] == ["artgen", "webhooks"]
    assert command[command.index("--hostname") + 1] == "webhooks@%h"
    health = _joined(webhooks["healthcheck"], "test")
    assert "-A api.webhooks inspect ping" in health and '--destination "webhooks@$$HOSTNAME"' in health
    assert webhooks["read_only"] is True and "deploy" not in webhooks, "no GPU"


def test_result_store_is_minio_on_a_volume(services: dict[str, Any], compose: dict[str, Any]) -> None:
    assert services["minio"]["volumes"][0].split(":")[0] == "results" and "results" in compose["volumes"]
    for name in ARTGEN_SERVICES:
        env = services[name]["environment"]
        assert env["ARTGEN_RESULT_STORE"] == "s3"
        assert env["ARTGEN_S3_ENDPOINT_URL"] == "${S3_ENDPOINT_URL:-http://minio:9000}"
        assert env["ARTGEN_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert env["ARTGEN_S3_SECRET_ACCESS_KEY"].startswith("${ARTGEN_S3_SECRET_ACCESS_KEY:?")
        # MinIO's root login is blanked out of artgen's containers (env_file would pass it on).
        assert env["MINIO_ROOT_PASSWORD"] == ""
    assert "mc mb --ignore-existing" in services["buckets"]["command"][0]


def test_models_service_is_a_one_off(services: dict[str, Any]) -> None:
    models = services["models"]
    assert models["profiles"] == ["tools"]
    assert models["entrypoint"] == ["artgen", "models"]
    assert models["volumes"] == ["models:/models"]
    assert models["environment"]["ARTGEN_MODELS_DIR"] == "/models"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


@pytest.mark.parametrize("name", ARTGEN_SERVICES)
def test_artgen_containers_are_hardened(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "user" not in service, "the image's non-root user is kept"


@pytest.mark.parametrize("name", [*ARTGEN_SERVICES, "models"])
def test_commands_parse_as_real_artgen_commands(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every flag compose passes exists on the `artgen` subcommand it runs (no command is executed)."""
    from launch.cli import cli

    service = services[name]
    argv = [*service.get("entrypoint", []), *_command(service)]
    assert argv[0] == "artgen"
    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, argv[1])
        assert command is not None, f"{name}: no artgen subcommand {argv[1]!r}"
        args = argv[2:]
        if isinstance(command, click.Group):  # `artgen models list`: one level down
            inner = command.get_command(ctx, args[0])
            assert inner is not None, f"{name}: no `artgen {argv[1]} {args[0]}`"
            command, args = inner, args[1:]
        command.make_context(argv[1], args, parent=ctx)  # raises on an unknown flag or bad value


def test_compose_variables_are_documented_in_env_example() -> None:
    code = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", code))
    assert {"REDIS_PASSWORD", "ARTGEN_API_KEYS", "ARTGEN_FLOWER_PASSWORD"} <= used
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used - documented == set()
