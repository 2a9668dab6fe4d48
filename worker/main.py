"""`artgen worker`: one Celery worker process serving one or more models (compose runs this)."""

from __future__ import annotations

import importlib
import os
import socket

import click

from shared.jobs import queue_for
from shared.settings import get_settings


@click.command()
@click.option(
    "--models", "models_csv", help="Comma-separated models to serve [ARTGEN_WORKER_MODELS or ARTGEN_MODEL]."
)
@click.option("--concurrency", type=click.IntRange(1), help="Jobs at once (one pool process each).")
@click.option("--hostname", help="Worker name shown in Flower [artgen-<host>-<pid>@<host>].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Torch device [ARTGEN_DEVICE].")
@click.option(
    "--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True
)
def worker(
    models_csv: str | None, concurrency: int | None, hostname: str | None, device: str | None, pool: str
) -> None:
    """Run one Celery worker process that takes jobs for the given models."""
    # Flags become ARTGEN_* variables so that the pool processes (forked later) see the same settings.
    if models_csv:
        os.environ["ARTGEN_WORKER_MODELS"] = models_csv
    if concurrency:
        os.environ["ARTGEN_WORKER_CONCURRENCY"] = str(concurrency)
    if device:
        os.environ["ARTGEN_DEVICE"] = device
    get_settings.cache_clear()
    settings = get_settings()

    from worker.celery_app import served_models
    from worker.cli import BadInput
    from worker.models import PRESETS, resolve_device, weights_present
    from worker.runtime import EngineOptions

    # Settings this machine cannot honour are bad input (exit 2), refused before the worker takes a job.
    try:
        models = served_models(settings)
        # The device, and the engine options it must honour (fp16 on a CPU, say).
        EngineOptions.from_settings(settings).resolve(resolve_device(settings.device))
    except (RuntimeError, ValueError) as exc:
        raise BadInput(str(exc)) from exc
    for name in models:
        if name not in PRESETS:
            raise BadInput(f"unknown model {name!r}; known: {', '.join(sorted(PRESETS))}")
        if not weights_present(name, settings.models_dir):
            raise click.ClickException(
                f"weights for {name!r} are missing from {settings.models_dir}; "
                f"run `artgen models pull {name}` first"
            )

    try:
        # What every job needs, loaded before the worker takes one: a worker that cannot paint must not
        # start (its healthcheck only pings Celery, which would answer and take jobs it then fails).
        importlib.import_module("worker.engine")
        importlib.import_module("worker.tasks")
    except ImportError as exc:
        raise click.ClickException(f"the worker cannot load its engine: {exc}") from exc

    from worker.celery_app import app

    app.conf.worker_concurrency = settings.worker_concurrency
    name = hostname or f"artgen-{socket.gethostname()}-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queue_for(m) for m in models),
            "--hostname",
            name,
            "--concurrency",
            str(settings.worker_concurrency),
            "--pool",
            pool,
            "--loglevel",
            settings.log_level,
            "--task-events",
            "--without-mingle",
            "--without-gossip",
        ]
    )
