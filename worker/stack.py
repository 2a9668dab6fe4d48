"""`artgen up`: the whole service on one machine (Redis, one worker, the API) from one command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from shared.model_facts import MODEL_NOTES
from shared.redis_server import RedisServer
from shared.settings import get_settings


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: Ctrl-C reaches us alone, and we stop the parts in order.
    return subprocess.Popen([sys.executable, "-m", "shared.cli", *args], env=env, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], name: str, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        click.echo(f"{name} did not stop in {timeout_s:.0f} s; killing it", err=True)
        process.kill()
        process.wait()


def _wait_healthy(url: str, processes: dict[str, subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise click.ClickException(
                    f"the {name} exited at start (status {process.returncode}); see above"
                )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"the service was not ready at {url}/readyz within {timeout_s:.0f} s")


@click.command()
@click.option("--host", help="Address the API listens on [ARTGEN_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), help="API port [ARTGEN_PORT].")
@click.option("--model", help="Model preset [ARTGEN_MODEL; else imagenet-16384 if pulled, else the demo].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("var"),
    show_default=True,
    help="Where the local Redis keeps its append-only file.",
)
def up(host: str | None, port: int | None, model: str | None, data_dir: Path) -> None:
    """Start Redis, one worker and the API; print the URL; Ctrl-C stops all three."""
    # Flags become ARTGEN_* variables: this process and the ones it starts then read the same settings.
    for variable, value in (("ARTGEN_HOST", host), ("ARTGEN_PORT", port), ("ARTGEN_MODEL", model)):
        if value:
            os.environ[variable] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    from worker.models import default_model

    chosen = default_model(settings.model, settings.models_dir)

    redis_server: RedisServer | None = None
    if "ARTGEN_REDIS_URL" in os.environ:
        redis_url = settings.redis_url
        click.echo(f"using Redis at {redis_url} (ARTGEN_REDIS_URL)")
    else:
        redis_server = RedisServer(data_dir.resolve() / "redis").start()
        redis_url = redis_server.url
        click.echo(f"started redis-server on port {redis_server.port} (data in {redis_server.data_dir})")

    env = {**os.environ, "ARTGEN_REDIS_URL": redis_url, "ARTGEN_MODEL": chosen}
    click.secho(f"model: {chosen}", bold=True)
    if chosen in MODEL_NOTES:
        click.secho(f"  {MODEL_NOTES[chosen]}", fg="yellow")

    processes: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def _request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes["worker"] = _spawn(["worker", "--concurrency", "1"], env)
        processes["API"] = _spawn(["api"], env)
        _wait_healthy(settings.url, processes, timeout_s=180)
        click.secho(
            f"\nartgen is up: {settings.url}   (API docs: {settings.url}/docs; Ctrl-C stops)\n", fg="green"
        )
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise click.ClickException(
                        f"the {name} stopped (status {process.returncode}); shutting down"
                    )
            time.sleep(0.5)
        click.echo("stopping...")
    finally:
        for name in ("API", "worker"):
            if name in processes:
                _stop(processes[name], name, timeout_s=30)
        if redis_server is not None:
            redis_server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
