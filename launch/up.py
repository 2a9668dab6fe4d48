"""`artgen up`: the whole service on one machine (Redis, one worker, the API) from one command."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import click

from launch.stack import LocalStack, StartupError
from shared.model_facts import MODEL_NOTES
from shared.settings import get_settings


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
    """Start Redis, one worker, the webhooks worker and the API; print the URL; Ctrl-C stops them all."""
    # Flags become ARTGEN_* variables: this process and the ones it starts then read the same settings.
    for variable, value in (("ARTGEN_HOST", host), ("ARTGEN_PORT", port), ("ARTGEN_MODEL", model)):
        if value:
            os.environ[variable] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    from worker.models import default_model

    chosen = default_model(settings.model, settings.models_dir)

    # The user's ARTGEN_* configure every part; a Redis of their own is used as it is.
    outside_redis = settings.redis_url if "ARTGEN_REDIS_URL" in os.environ else None
    stack = LocalStack(
        data_dir.resolve(),
        {"model": chosen},
        redis_url=outside_redis,
        inherit_settings=True,
        log_to_files=False,
    )
    stopping = False

    def _request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        if stack.redis is None:
            click.echo(f"using Redis at {stack.redis_url} (ARTGEN_REDIS_URL)")
        else:
            click.echo(f"started redis-server on port {stack.redis.port} (data in {stack.redis.data_dir})")
        click.secho(f"model: {chosen}", bold=True)
        if chosen in MODEL_NOTES:
            click.secho(f"  {MODEL_NOTES[chosen]}", fg="yellow")
        try:
            stack.up(host=settings.host, port=settings.port)
        except StartupError as exc:
            raise click.ClickException(str(exc)) from exc
        click.secho(
            f"\nartgen is up: {settings.url}   (API docs: {settings.url}/docs; Ctrl-C stops)\n", fg="green"
        )
        while not stopping:
            if (gone := stack.exited()) is not None:
                raise click.ClickException(
                    f"the {gone.name} stopped (status {gone.process.returncode}); shutting down"
                )
            time.sleep(0.5)
        click.echo("stopping...")
    finally:
        stack.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
