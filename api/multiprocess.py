"""Prometheus metrics across the API's processes (`artgen api --workers N`): prometheus-client's
multiprocess mode, in a fresh directory per start.

Each process writes its counters and histograms to memory-mapped files in `PROMETHEUS_MULTIPROC_DIR`;
the process that answers a scrape sums them all. prometheus-client picks its storage when it is first
imported, so the variable is set here, in the parent, before uvicorn starts the worker processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory the processes share their metrics in, when the API runs as several processes."""
    return os.environ.get(MULTIPROC_ENV) or None


@contextmanager
def metrics_dir(processes: int) -> Iterator[str | None]:
    """For several processes: a new, empty directory in `PROMETHEUS_MULTIPROC_DIR` while they run (files
    left by an earlier start would add its counts to this one's), removed afterwards. For one process:
    none, whatever the environment says (its metrics live in its own memory)."""
    if processes <= 1:
        os.environ.pop(MULTIPROC_ENV, None)
        yield None
        return
    path = tempfile.mkdtemp(prefix="artgen-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
