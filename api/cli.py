"""`artgen api`: the HTTP gateway alone, as compose runs it."""

from __future__ import annotations

import click

from shared.settings import get_settings


@click.command()
@click.option("--host", default=None, help="Address to listen on [ARTGEN_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port [ARTGEN_PORT].")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="uvicorn processes on the one port [ARTGEN_API_WORKERS, 1].",
)
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP gateway (uvicorn) on the configured host and port; flags override ARTGEN_*."""
    import uvicorn

    from api.multiprocess import metrics_dir

    settings = get_settings()
    processes = workers or settings.api_workers
    # Several processes: their metrics go to files in a fresh directory, summed by whichever one answers.
    with metrics_dir(processes):
        uvicorn.run(
            "api.main:app_factory",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=processes,
            log_level=settings.log_level.lower(),
            # Our own middleware counts requests; uvicorn's access log would cost more per request than
            # the work.
            access_log=False,
            proxy_headers=True,
        )


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Deliveries at once (threads) [ARTGEN_WEBHOOK_CONCURRENCY].",
)
@click.option("--hostname", help="Worker name shown in Flower [webhooks-<host>-<pid>@<host>].")
def webhooks(concurrency: int | None, hostname: str | None) -> None:
    """Run the webhook delivery worker (no torch): signed POSTs with retries; deadlines; result sweeps."""
    import os
    import socket

    settings = get_settings()
    from api.webhooks import app
    from shared.webhooks import WEBHOOK_QUEUE

    name = hostname or f"webhooks-{socket.gethostname()}-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            "--queues",
            WEBHOOK_QUEUE,
            "--hostname",
            name,
            # Threads: a delivery waits on the network; processes would only cost memory.
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency or settings.webhook_concurrency),
            "--loglevel",
            settings.log_level,
            "--task-events",
            "--without-mingle",
            "--without-gossip",
        ]
    )
