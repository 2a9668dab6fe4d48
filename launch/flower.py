"""`artgen flower`: the Flower dashboard on the service's broker, behind HTTP basic auth.

Flower can cancel and kill tasks and shows every job's arguments, so it never starts open by accident:
without ARTGEN_FLOWER_USER and ARTGEN_FLOWER_PASSWORD it refuses, unless --unauthenticated says so.
"""

from __future__ import annotations

import logging

import click

from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Short passwords fall to guessing; Flower has no lockout.
MIN_PASSWORD_CHARS = 12


def basic_auth(settings: Settings) -> str | None:
    """`user:password` for Flower's --basic-auth; None when neither is set, an error when half or weak."""
    user = settings.flower_user
    password = settings.flower_password.get_secret_value() if settings.flower_password else None
    if user is None and password is None:
        return None
    if not user or not password:
        raise click.ClickException("set both ARTGEN_FLOWER_USER and ARTGEN_FLOWER_PASSWORD")
    if ":" in user or "," in user or "," in password:
        # Flower splits its credential list on ',' and each credential on the first ':'.
        raise click.ClickException("ARTGEN_FLOWER_USER must not contain ':' or ','; the password no ','")
    if len(password) < MIN_PASSWORD_CHARS:
        raise click.ClickException(f"ARTGEN_FLOWER_PASSWORD must be at least {MIN_PASSWORD_CHARS} characters")
    return f"{user}:{password}"


def flower_args(host: str, port: int, credentials: str | None) -> list[str]:
    """Flower's own options (tornado style)."""
    args = [f"--address={host}", f"--port={port}"]
    if credentials is not None:
        args.append(f"--basic-auth={credentials}")
    return args


@click.command()
@click.option("--host", default=None, help="Address to listen on [ARTGEN_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port [ARTGEN_FLOWER_PORT].")
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="Start without a password (only on a trusted, private network).",
)
def flower(host: str | None, port: int | None, unauthenticated: bool) -> None:
    """Run Flower on the same broker, with basic auth from ARTGEN_FLOWER_USER / ARTGEN_FLOWER_PASSWORD."""
    settings = get_settings()
    credentials = basic_auth(settings)
    if credentials is None and not unauthenticated:
        raise click.ClickException(
            "Flower needs credentials: set ARTGEN_FLOWER_USER and ARTGEN_FLOWER_PASSWORD "
            "(or pass --unauthenticated on a trusted network)"
        )
    if credentials is not None and unauthenticated:
        raise click.ClickException("--unauthenticated given but credentials are set; drop one of them")
    if credentials is None:
        log.warning("Flower starts WITHOUT authentication (--unauthenticated): anyone who can reach it can")
        log.warning("see every job and cancel or kill tasks")

    from celery import Celery
    from celery.bin.celery import celery as celery_command

    from shared.celeryconf import celery_config

    app = Celery("artgen", set_as_current=True)
    app.conf.update(celery_config(settings))
    args = flower_args(host or settings.host, port or settings.flower_port, credentials)
    # `celery flower`, run in this process on our app (given as -A's value): the password never shows in `ps`.
    celery_command.main(args=["flower", *args], prog_name="artgen flower", default_map={"app": app})
